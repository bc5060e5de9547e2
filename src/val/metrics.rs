//! Detection metrics of Ultralytics 8.3.253: the legacy IoU-sorted matcher, the 101-point
//! trapezoidal AP with its linear tail, and P / R at the smoothed maximum of the mean F1.

/// IoU thresholds 0.50:0.05:0.95 as float32 values (`torch.linspace(0.5, 0.95, 10)`).
pub fn iou_thresholds() -> [f32; 10] {
    std::array::from_fn(|i| (0.5 + 0.05 * i as f64) as f32)
}

/// IoU of two xyxy boxes as Ultralytics' `box_iou` computes it (eps 1e-7).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-7)
}

/// Marks detections true positive at each IoU threshold with the 8.3.253 matcher: for each
/// threshold, every detection picks its best-IoU label of its class, and each label accepts only
/// the lowest-index (highest-confidence) detection that picked it. `iou[l][d]` is label × detection.
pub fn match_predictions(pred_cls: &[usize], true_cls: &[usize], iou: &[Vec<f32>]) -> Vec<[bool; 10]> {
    let mut correct = vec![[false; 10]; pred_cls.len()];
    for (t, thr) in iou_thresholds().into_iter().enumerate() {
        let mut pairs: Vec<(usize, usize, f32)> = vec![];
        for (l, row) in iou.iter().enumerate() {
            for (d, &v) in row.iter().enumerate() {
                let v = if true_cls[l] == pred_cls[d] { v } else { 0.0 };
                if v >= thr {
                    pairs.push((l, d, v));
                }
            }
        }
        // Highest IoU first; the first pair per detection wins, then per label the lowest detection.
        pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut best_of_det: Vec<Option<(usize, usize)>> = vec![None; pred_cls.len()];
        for &(l, d, _) in &pairs {
            best_of_det[d].get_or_insert((l, d));
        }
        let mut label_taken = vec![false; true_cls.len()];
        for (l, d) in best_of_det.into_iter().flatten() {
            if !std::mem::replace(&mut label_taken[l], true) {
                correct[d][t] = true;
            }
        }
    }
    correct
}

/// `np.interp(x, xp, fp)` with NumPy's handling of repeated `xp` values (at a repeated x the
/// last one's value; just below it, interpolation toward the first) and constant ends.
pub fn interp(x: f64, xp: &[f64], fp: &[f64], left: f64, right: f64) -> f64 {
    let n = xp.len();
    if x < xp[0] {
        return left;
    }
    if x > xp[n - 1] {
        return right;
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j >= n - 1 {
        return fp[n - 1];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// Average precision from a recall/precision curve: precision envelope, sampled at 101 recall
/// points, integrated with the trapezoid rule (Ultralytics' `compute_ap`, method "interp").
pub fn compute_ap(recall: &[f64], precision: &[f64]) -> f64 {
    Envelope::new(recall, precision).ap()
}

/// The precision envelope of a recall/precision curve with Ultralytics' sentinels: recall
/// `[0, r…, 1]`, precision `[1, p…, 0]` made non-increasing from the right.
pub struct Envelope {
    /// Recall with the sentinels.
    pub mrec: Vec<f64>,
    /// The precision envelope.
    pub mpre: Vec<f64>,
}

impl Envelope {
    /// The envelope of `recall`/`precision`.
    pub fn new(recall: &[f64], precision: &[f64]) -> Envelope {
        let mut mrec = vec![0.0];
        mrec.extend_from_slice(recall);
        mrec.push(1.0);
        let mut mpre = vec![1.0];
        mpre.extend_from_slice(precision);
        mpre.push(0.0);
        for i in (0..mpre.len() - 1).rev() {
            mpre[i] = mpre[i].max(mpre[i + 1]);
        }
        Envelope { mrec, mpre }
    }

    /// The envelope's precision at recall `x` (`np.interp(x, mrec, mpre)`).
    pub fn at(&self, x: f64) -> f64 {
        interp(x, &self.mrec, &self.mpre, self.mpre[0], self.mpre[self.mpre.len() - 1])
    }

    /// The 101-point trapezoidal AP.
    pub fn ap(&self) -> f64 {
        let y: Vec<f64> = (0..=100).map(|i| self.at(i as f64 / 100.0)).collect();
        y.windows(2).map(|w| (w[0] + w[1]) / 2.0 * 0.01).sum()
    }
}

/// Per-class and mean results.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DetMetrics {
    /// Classes with labels, ascending.
    pub classes: Vec<usize>,
    /// Labels per class.
    pub labels: Vec<usize>,
    /// AP per class at each of the 10 IoU thresholds.
    pub ap: Vec<[f64; 10]>,
    /// Precision per class at the operating point.
    pub p: Vec<f64>,
    /// Recall per class at the operating point.
    pub r: Vec<f64>,
    /// Mean precision.
    pub mp: f64,
    /// Mean recall.
    pub mr: f64,
    /// mAP at IoU 0.5.
    pub map50: f64,
    /// mAP over IoU 0.5:0.95.
    pub map: f64,
    /// The curves behind the validation plots.
    #[serde(skip)]
    pub curves: Curves,
}

/// The curves behind Ultralytics' validation plots, sampled at 1000 points.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Curves {
    /// `np.linspace(0, 1, 1000)`: recall for the PR curve, confidence for the others.
    pub px: Vec<f64>,
    /// The classes of the PR curve's rows: those with labels and detections, ascending.
    pub pr_classes: Vec<usize>,
    /// Precision envelope at recall `px` at IoU 0.5, one row per class of `pr_classes`
    /// (Ultralytics' `prec_values`, the `py` of `plot_pr_curve`).
    pub py: Vec<Vec<f64>>,
    /// Precision at confidence `px`, one row per class of [`DetMetrics::classes`].
    pub precision: Vec<Vec<f64>>,
    /// Recall at confidence `px`, likewise.
    pub recall: Vec<Vec<f64>>,
    /// F1 at confidence `px`, likewise.
    pub f1: Vec<Vec<f64>>,
}

/// `np.linspace(0, 1, n)`: `i · (1/(n−1))`, the last point exactly 1.
fn linspace01(n: usize) -> Vec<f64> {
    let step = 1.0 / (n - 1) as f64;
    let mut x: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    x[n - 1] = 1.0;
    x
}

/// Ultralytics' `smooth`: a box filter of `round(len·2f)//2 + 1` taps with edge replication.
pub fn smooth(y: &[f64], f: f64) -> Vec<f64> {
    let nf = ((y.len() as f64 * f * 2.0).round() as usize) / 2 + 1;
    let pad = nf / 2;
    let mut yp = vec![y[0]; pad];
    yp.extend_from_slice(y);
    yp.extend(std::iter::repeat_n(y[y.len() - 1], pad));
    yp.windows(nf).map(|w| w.iter().sum::<f64>() / nf as f64).collect()
}

/// The index of the first largest value (`np.argmax`); 0 for an empty slice.
pub fn argmax(y: &[f64]) -> usize {
    (0..y.len()).fold(0, |b, j| if y[j] > y[b] { j } else { b })
}

/// The mean of each column of `rows` (every row `n` long); zeros without rows.
pub fn column_mean(rows: &[Vec<f64>], n: usize) -> Vec<f64> {
    (0..n).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len().max(1) as f64).collect()
}

/// Ultralytics' `ap_per_class`: `tp` per detection and threshold, detection confidences and
/// classes, and the class of every label in the set.
pub fn ap_per_class(tp: &[[bool; 10]], conf: &[f32], pred_cls: &[usize], target_cls: &[usize]) -> DetMetrics {
    let eps = 1e-16;
    let mut order: Vec<usize> = (0..conf.len()).collect();
    order.sort_by(|&a, &b| conf[b].total_cmp(&conf[a]));
    let mut classes: Vec<usize> = target_cls.to_vec();
    classes.sort();
    classes.dedup();
    let labels: Vec<usize> = classes.iter().map(|c| target_cls.iter().filter(|t| *t == c).count()).collect();
    let xs = linspace01(1000);
    let mut ap = vec![[0.0; 10]; classes.len()];
    let mut p_curve = vec![vec![0.0; 1000]; classes.len()];
    let mut r_curve = vec![vec![0.0; 1000]; classes.len()];
    let (mut pr_classes, mut py) = (vec![], vec![]);
    for (ci, &c) in classes.iter().enumerate() {
        let idx: Vec<usize> = order.iter().copied().filter(|&i| pred_cls[i] == c).collect();
        if idx.is_empty() {
            continue;
        }
        let neg_conf: Vec<f64> = idx.iter().map(|&i| -(conf[i] as f64)).collect();
        for t in 0..10 {
            let (mut tpc, mut fpc) = (0.0, 0.0);
            let (mut recall, mut precision) = (vec![], vec![]);
            for &i in &idx {
                if tp[i][t] {
                    tpc += 1.0
                } else {
                    fpc += 1.0
                }
                recall.push(tpc / (labels[ci] as f64 + eps));
                precision.push(tpc / (tpc + fpc));
            }
            let env = Envelope::new(&recall, &precision);
            if t == 0 {
                let last = |v: &[f64]| v[v.len() - 1];
                r_curve[ci] = xs.iter().map(|&x| interp(-x, &neg_conf, &recall, 0.0, last(&recall))).collect();
                p_curve[ci] = xs.iter().map(|&x| interp(-x, &neg_conf, &precision, 1.0, last(&precision))).collect();
                pr_classes.push(c);
                py.push(xs.iter().map(|&x| env.at(x)).collect());
            }
            ap[ci][t] = env.ap();
        }
    }
    let f1: Vec<Vec<f64>> = p_curve
        .iter()
        .zip(&r_curve)
        .map(|(p, r)| p.iter().zip(r).map(|(p, r)| 2.0 * p * r / (p + r + eps)).collect())
        .collect();
    let f1_mean = column_mean(&f1, 1000);
    let i = argmax(&smooth(&f1_mean, 0.1));
    let p: Vec<f64> = p_curve.iter().map(|c| c[i]).collect();
    let r: Vec<f64> = r_curve.iter().map(|c| c[i]).collect();
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    DetMetrics {
        mp: mean(&p),
        mr: mean(&r),
        map50: mean(&ap.iter().map(|a| a[0]).collect::<Vec<_>>()),
        map: mean(&ap.iter().map(|a| a.iter().sum::<f64>() / 10.0).collect::<Vec<_>>()),
        classes,
        labels,
        ap,
        p,
        r,
        curves: Curves { px: xs, pr_classes, py, precision: p_curve, recall: r_curve, f1 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_handles_repeated_points_like_numpy() {
        // np.interp(0.5, [0, 0.5, 0.5, 1], [1, 0.8, 0.6, 0]) == 0.6 (the last duplicate);
        // np.interp(0.4, ...) == 0.84 (toward the first duplicate).
        let (xp, fp) = ([0.0, 0.5, 0.5, 1.0], [1.0, 0.8, 0.6, 0.0]);
        assert_eq!(interp(0.5, &xp, &fp, 1.0, 0.0), 0.6);
        assert!((interp(0.4, &xp, &fp, 1.0, 0.0) - 0.84).abs() < 1e-12);
        assert_eq!(interp(-1.0, &xp, &fp, 7.0, 9.0), 7.0);
        assert_eq!(interp(2.0, &xp, &fp, 7.0, 9.0), 9.0);
    }

    #[test]
    fn ap_of_a_perfect_detector_is_0_995_and_the_tail_is_linear() {
        // Recall reaches 1: at x = 1 np.interp takes the appended (1, 0) point, so the last
        // trapezoid is (1 + 0)/2 · 0.01 and Ultralytics reports 0.995, not 1.
        assert!((compute_ap(&[0.5, 1.0], &[1.0, 1.0]) - 0.995).abs() < 1e-12);
        // One TP of two labels: precision 1 up to recall 0.5, then the tail falls linearly to 0 at
        // recall 1. Envelope samples: 1 for r <= 0.5, 1 - 2(r - 0.5) after. Trapezoid over 101
        // points: 0.5 + 0.25 = 0.75.
        assert!((compute_ap(&[0.5], &[1.0]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn matcher_gives_each_label_one_detection_and_never_rematches() {
        // Label 0 overlaps det 0 (0.9) and det 1 (0.95); label 1 overlaps det 1 (0.6) only.
        // At 0.5 both detections pick label 0 (their best); label 0 accepts the lower index,
        // det 0, and det 1 stays a false positive although it overlaps label 1 (no re-matching).
        let iou = vec![vec![0.9, 0.95], vec![0.0, 0.6]];
        let c = match_predictions(&[0, 0], &[0, 0], &iou);
        assert!(c[0][0] && !c[1][0]);
        // Class mismatch zeroes the IoU.
        let c = match_predictions(&[1, 0], &[0, 0], &iou);
        assert!(!c[0][0] && c[1][0]);
        // At 0.95 only det 1 reaches label 0.
        let c = match_predictions(&[0, 0], &[0, 0], &iou);
        assert!(!c[0][9] && c[1][9]);
    }
}

#[cfg(test)]
mod reference {
    use super::*;

    /// Numbers computed with NumPy following Ultralytics 8.3.253's `ap_per_class` (np.interp,
    /// np.unique, np.trapezoid, its `smooth`) on the same detections: class 2 has detections but
    /// no labels (dropped), class 3 labels but no detections (AP 0).
    #[test]
    fn ap_per_class_equals_the_ultralytics_formula() {
        let conf = [0.95, 0.91, 0.88, 0.8, 0.77, 0.7, 0.66, 0.52, 0.4, 0.33, 0.2, 0.1];
        let pred_cls = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 2];
        let target_cls = [0, 0, 0, 0, 0, 1, 1, 1, 3];
        let iou: [f32; 12] = [0.96, 0.8, 0.0, 0.72, 0.55, 0.91, 0.62, 0.0, 0.5, 0.3, 0.85, 0.9];
        let thr = iou_thresholds();
        let tp: Vec<[bool; 10]> = iou.iter().map(|&v| std::array::from_fn(|t| v >= thr[t])).collect();
        let m = ap_per_class(&tp, &conf, &pred_cls, &target_cls);
        assert_eq!(m.classes, vec![0, 1, 3]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(m.ap[0][0], 0.8616666666666668) && close(m.ap[1][0], 0.995) && m.ap[2][0] == 0.0, "{:?}", m.ap);
        assert!(close(m.mp, 0.477777777777778), "mp {}", m.mp);
        assert!(close(m.mr, 0.666666666666667), "mr {}", m.mr);
        assert!(close(m.map50, 0.618888888888889), "map50 {}", m.map50);
        assert!(close(m.map, 0.346419777777778), "map {}", m.map);
    }
}
