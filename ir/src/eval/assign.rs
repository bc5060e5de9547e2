//! Ultralytics' task-aligned assigner (`TaskAlignedAssigner`, 8.3.253) and the CIoU it uses.

/// Boxes as x1, y1, x2, y2.
pub type Box4 = [f32; 4];

const EPS: f32 = 1e-7;
const FOUR_OVER_PI2: f32 = 4.0 / (std::f32::consts::PI * std::f32::consts::PI);

/// The terms of one CIoU evaluation, kept for its gradient.
#[derive(Clone, Copy, Debug)]
pub struct Ciou {
    /// The complete IoU: `iou − (ρ²/c² + v·α)`.
    pub value: f32,
    /// The plain IoU.
    pub iou: f32,
    inter: f32,
    union: f32,
    w1: f32,
    h1: f32,
    iw_raw: f32,
    ih_raw: f32,
    cw: f32,
    ch: f32,
    c2: f32,
    rho2: f32,
    /// The aspect-ratio term `v`.
    pub v: f32,
    alpha: f32,
    delta: f32,
}

/// `bbox_iou(a, b, xywh=False, CIoU=True)` with eps 1e-7, in Ultralytics' float32 order.
pub fn ciou(a: Box4, b: Box4) -> Ciou {
    let (w1, h1) = (a[2] - a[0], a[3] - a[1] + EPS);
    let (w2, h2) = (b[2] - b[0], b[3] - b[1] + EPS);
    let iw_raw = a[2].min(b[2]) - a[0].max(b[0]);
    let ih_raw = a[3].min(b[3]) - a[1].max(b[1]);
    let inter = iw_raw.max(0.0) * ih_raw.max(0.0);
    let union = w1 * h1 + w2 * h2 - inter + EPS;
    let iou = inter / union;
    let cw = a[2].max(b[2]) - a[0].min(b[0]);
    let ch = a[3].max(b[3]) - a[1].min(b[1]);
    let c2 = cw * cw + ch * ch + EPS;
    let sx = b[0] + b[2] - a[0] - a[2];
    let sy = b[1] + b[3] - a[1] - a[3];
    let rho2 = (sx * sx + sy * sy) / 4.0;
    let delta = (w2 / h2).atan() - (w1 / h1).atan();
    let v = FOUR_OVER_PI2 * delta * delta;
    let alpha = v / (v - iou + (1.0 + EPS));
    let value = iou - (rho2 / c2 + v * alpha);
    Ciou { value, iou, inter, union, w1, h1, iw_raw, ih_raw, cw, ch, c2, rho2, v, alpha, delta }
}

/// PyTorch's gradient share of `min(p, q)` (or `max`) to `p`: 1 where `p` wins, ½ on a tie.
fn share(wins: bool, tie: bool) -> f32 {
    if tie {
        0.5
    } else if wins {
        1.0
    } else {
        0.0
    }
}

impl Ciou {
    /// The gradient of the CIoU value with respect to the first box `a` (α held constant, as
    /// Ultralytics computes it under `no_grad`); `b` is the second box.
    pub fn grad_a(&self, a: Box4, b: Box4) -> Box4 {
        let mut g = [0.0f32; 4];
        let sums = [b[0] + b[2] - a[0] - a[2], b[1] + b[3] - a[1] - a[3]];
        // Derivative of atan(w1/h1) with respect to w1 and h1.
        let r = self.w1 * self.w1 + self.h1 * self.h1;
        let dv_dlen = [-2.0 * FOUR_OVER_PI2 * self.delta * self.h1 / r, 2.0 * FOUR_OVER_PI2 * self.delta * self.w1 / r];
        let lens = [self.w1, self.h1];
        let raws = [self.iw_raw, self.ih_raw];
        let spans = [self.cw, self.ch];
        for axis in 0..2 {
            let (lo, hi) = (axis, axis + 2);
            let other_side = raws[1 - axis].max(0.0);
            let open = if raws[axis] >= 0.0 { 1.0 } else { 0.0 };
            // d(inter), d(len), d(span), d(sum) for the lo and the hi coordinate of this axis.
            let dinter = [
                -share(a[lo] > b[lo], a[lo] == b[lo]) * open * other_side,
                share(a[hi] < b[hi], a[hi] == b[hi]) * open * other_side,
            ];
            let dlen = [-1.0, 1.0];
            let dspan = [-share(a[lo] < b[lo], a[lo] == b[lo]), share(a[hi] > b[hi], a[hi] == b[hi])];
            for k in 0..2 {
                let di = dinter[k];
                let du = lens[1 - axis] * dlen[k] - di;
                let diou = di / self.union - self.inter / (self.union * self.union) * du;
                let dc2 = 2.0 * spans[axis] * dspan[k];
                let drho2 = -sums[axis] / 2.0;
                let dv = dv_dlen[axis] * dlen[k];
                g[[lo, hi][k]] = diou - (drho2 / self.c2 - self.rho2 * dc2 / (self.c2 * self.c2)) - self.alpha * dv;
            }
        }
        g
    }
}

/// One ground-truth box of an image: class and pixel xyxy.
#[derive(Clone, Copy, Debug)]
pub struct Gt {
    /// Class index.
    pub cls: usize,
    /// Box in input pixels.
    pub bbox: Box4,
}

/// The assignment of one image's anchors.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Anchors that are foreground.
    pub fg: Vec<bool>,
    /// For each anchor, the index of its ground truth (0 for background).
    pub gt: Vec<usize>,
    /// For each anchor, its soft target score for the assigned class (0 for background).
    pub score: Vec<f32>,
}

/// Runs the task-aligned assigner (topk 10, alpha 0.5, beta 6) on one image. `scores` are
/// `[A][nc]` sigmoid probabilities, `boxes` the predicted pixel xyxy boxes and `points` the anchor
/// centres in pixels.
pub fn assign(scores: &[f32], nc: usize, boxes: &[Box4], points: &[[f32; 2]], gts: &[Gt]) -> Assignment {
    const TOPK: usize = 10;
    let na = boxes.len();
    let mut out = Assignment { fg: vec![false; na], gt: vec![0; na], score: vec![0.0; na] };
    let m = gts.len();
    if m == 0 {
        return out;
    }
    let valid: Vec<bool> = gts.iter().map(|g| g.bbox.iter().sum::<f32>() > 0.0).collect();
    let mut overlaps = vec![0.0f32; m * na];
    let mut align = vec![0.0f32; m * na];
    let mut pos = vec![false; m * na];
    for (j, g) in gts.iter().enumerate() {
        if !valid[j] {
            continue;
        }
        let mut inside = vec![false; na];
        for (a, p) in points.iter().enumerate() {
            let d = (p[0] - g.bbox[0]).min(p[1] - g.bbox[1]).min(g.bbox[2] - p[0]).min(g.bbox[3] - p[1]);
            if d > 1e-9 {
                inside[a] = true;
                let u = ciou(g.bbox, boxes[a]).value.max(0.0);
                overlaps[j * na + a] = u;
                align[j * na + a] = scores[a * nc + g.cls].powf(0.5) * u.powi(6);
            }
        }
        let mut order: Vec<usize> = (0..na).collect();
        let row = &align[j * na..(j + 1) * na];
        order.sort_by(|&p, &q| row[q].total_cmp(&row[p]).then(p.cmp(&q)));
        for &a in order.iter().take(TOPK) {
            pos[j * na + a] = inside[a];
        }
    }
    for a in 0..na {
        let claims = (0..m).filter(|&j| pos[j * na + a]).count();
        if claims > 1 {
            let best = (0..m).fold(0, |b, j| if overlaps[j * na + a] > overlaps[b * na + a] { j } else { b });
            for j in 0..m {
                pos[j * na + a] = j == best;
            }
        }
        if let Some(j) = (0..m).find(|&j| pos[j * na + a]) {
            out.fg[a] = true;
            out.gt[a] = j;
        }
    }
    // Normalise: the best-aligned anchor of each GT gets that GT's best overlap.
    let mut pa = vec![0.0f32; m];
    let mut po = vec![0.0f32; m];
    for j in 0..m {
        for a in 0..na {
            if pos[j * na + a] {
                pa[j] = pa[j].max(align[j * na + a]);
                po[j] = po[j].max(overlaps[j * na + a]);
            }
        }
    }
    for a in 0..na {
        if out.fg[a] {
            let mut norm = 0.0f32;
            for j in 0..m {
                if pos[j * na + a] {
                    norm = norm.max(align[j * na + a] * po[j] / (pa[j] + 1e-9));
                }
            }
            out.score[a] = norm;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciou_gradient_matches_finite_differences() {
        let b = [2.0, 3.0, 9.0, 7.5];
        for a in [[1.0f32, 2.5, 6.0, 8.0], [3.0, 4.0, 12.0, 6.0], [10.0, 9.0, 14.0, 12.0]] {
            let g = ciou(a, b).grad_a(a, b);
            let alpha = ciou(a, b).alpha;
            for k in 0..4 {
                // α is a constant in the gradient: differentiate with it frozen.
                let f = |d: f64| {
                    let mut p = a.map(|v| v as f64);
                    p[k] += d;
                    let c = ciou(p.map(|v| v as f32), b);
                    c.iou as f64 - (c.rho2 as f64 / c.c2 as f64 + c.v as f64 * alpha as f64)
                };
                let fd = (f(1e-2) - f(-1e-2)) / 2e-2;
                assert!((fd - g[k] as f64).abs() < 2e-3, "coord {k} of {a:?}: fd {fd} vs {}", g[k]);
            }
        }
    }

    #[test]
    fn assigner_picks_anchors_inside_and_normalises_to_best_overlap() {
        // Four anchors on a line; one GT covering the first two; predictions equal the GT there.
        let gt = Gt { cls: 0, bbox: [0.0, 0.0, 16.0, 8.0] };
        let points = [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]];
        let boxes = [gt.bbox, [2.0, 1.0, 14.0, 7.0], gt.bbox, gt.bbox];
        let scores = [0.9, 0.5, 0.9, 0.9];
        let r = assign(&scores, 1, &boxes, &points, &[gt]);
        assert_eq!(r.fg, vec![true, true, false, false]);
        // The best-aligned anchor (exact box, CIoU 1) gets the best overlap, 1.
        assert!((r.score[0] - 1.0).abs() < 1e-5, "{:?}", r.score);
        assert!(r.score[1] > 0.0 && r.score[1] < r.score[0]);
    }
}
