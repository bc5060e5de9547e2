//! Non-maximum suppression as Ultralytics' `non_max_suppression` does it for validation.

/// A box in xyxy pixels with its score and class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2.
    pub xyxy: [f32; 4],
    /// Class score.
    pub score: f32,
    /// Class id.
    pub class: usize,
}

/// NMS settings; the defaults are Ultralytics' validation ones.
#[derive(Clone, Debug)]
pub struct NmsOptions {
    /// Minimum score.
    pub conf: f32,
    /// IoU above which a lower-scored box of the same class is suppressed.
    pub iou: f32,
    /// Detections kept per image.
    pub max_det: usize,
    /// Candidates kept before NMS.
    pub max_nms: usize,
    /// Every (anchor, class) pair above `conf` is a candidate (else only the best class).
    pub multi_label: bool,
    /// Keep only candidates of these classes (predict's `--classes`); `None` keeps all.
    pub classes: Option<Vec<usize>>,
    /// Suppress across classes (class-agnostic NMS).
    pub agnostic: bool,
}

impl Default for NmsOptions {
    fn default() -> Self {
        NmsOptions {
            conf: 0.001,
            iou: 0.7,
            max_det: 300,
            max_nms: 30000,
            multi_label: true,
            classes: None,
            agnostic: false,
        }
    }
}

/// Offset that keeps classes apart in class-aware NMS (Ultralytics' `max_wh`).
const MAX_WH: f32 = 7680.0;

/// IoU of two xyxy boxes without epsilon (torchvision's `nms`).
fn iou_plain(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Runs NMS on one image's model output `pred`, laid out `(4 + nc, anchors)` row-major (cx, cy,
/// w, h, then class scores). Returns detections in descending score order.
pub fn non_max_suppression(pred: &[f32], nc: usize, anchors: usize, opts: &NmsOptions) -> Vec<Detection> {
    let at = |row: usize, a: usize| pred[row * anchors + a];
    let mut cands = vec![];
    for a in 0..anchors {
        let best = (0..nc).map(|c| at(4 + c, a)).fold(f32::NEG_INFINITY, f32::max);
        if best <= opts.conf {
            continue;
        }
        let (cx, cy, w, h) = (at(0, a), at(1, a), at(2, a), at(3, a));
        let xyxy = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if opts.multi_label {
            for c in 0..nc {
                if at(4 + c, a) > opts.conf {
                    cands.push(Detection { xyxy, score: at(4 + c, a), class: c });
                }
            }
        } else {
            let c = (0..nc).find(|&c| at(4 + c, a) == best).unwrap_or(0);
            cands.push(Detection { xyxy, score: best, class: c });
        }
    }
    if let Some(keep) = &opts.classes {
        cands.retain(|d| keep.contains(&d.class));
    }
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    cands.truncate(opts.max_nms);
    let offset = if opts.agnostic { 0.0 } else { MAX_WH };
    let shifted: Vec<[f32; 4]> = cands.iter().map(|d| d.xyxy.map(|v| v + d.class as f32 * offset)).collect();
    let mut keep: Vec<usize> = vec![];
    let mut removed = vec![false; cands.len()];
    for i in 0..cands.len() {
        if removed[i] {
            continue;
        }
        keep.push(i);
        if keep.len() == opts.max_det {
            break;
        }
        for j in i + 1..cands.len() {
            if !removed[j] && iou_plain(&shifted[i], &shifted[j]) > opts.iou {
                removed[j] = true;
            }
        }
    }
    keep.into_iter().map(|i| cands[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_overlaps_within_a_class_only() {
        // Three anchors, two classes: anchors 0 and 1 overlap (IoU 0.81 > 0.7), anchor 2 is apart.
        #[rustfmt::skip]
        let pred = [
            10.0, 10.5, 50.0, // cx
            10.0, 10.0, 50.0, // cy
            10.0, 10.0, 4.0,  // w
            10.0, 9.0, 4.0,   // h
            0.9, 0.8, 0.0005, // class 0
            0.0, 0.7, 0.6,    // class 1
        ];
        let d = non_max_suppression(&pred, 2, 3, &NmsOptions::default());
        let got: Vec<(usize, f32)> = d.iter().map(|d| (d.class, d.score)).collect();
        // Class 0: anchor 1 (0.8) is suppressed by anchor 0 (0.9); anchor 2 is under conf.
        // Class 1: anchor 1 (0.7) and anchor 2 (0.6) survive (anchor 0's 0.0 is under conf).
        assert_eq!(got, vec![(0, 0.9), (1, 0.7), (1, 0.6)]);
        assert_eq!(d[0].xyxy, [5.0, 5.0, 15.0, 15.0]);
        // Only class 1 kept: its two boxes.
        let only = NmsOptions { classes: Some(vec![1]), ..NmsOptions::default() };
        let got: Vec<(usize, f32)> =
            non_max_suppression(&pred, 2, 3, &only).iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(1, 0.7), (1, 0.6)]);
        // Class-agnostic: anchor 1's class-1 box (0.7) now overlaps anchor 0's class-0 box.
        let agnostic = NmsOptions { agnostic: true, ..NmsOptions::default() };
        let got: Vec<(usize, f32)> =
            non_max_suppression(&pred, 2, 3, &agnostic).iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.6)]);
        // Predict's single label: each anchor's best class only.
        let single = NmsOptions { multi_label: false, ..NmsOptions::default() };
        let got: Vec<(usize, f32)> =
            non_max_suppression(&pred, 2, 3, &single).iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.6)]);
    }
}
