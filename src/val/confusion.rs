//! Ultralytics 8.3.253's detection confusion matrix: rows are predicted classes, columns true
//! classes, the last row and column "background" (a false negative is counted in the background
//! row, a false positive in the background column).

use super::metrics::box_iou;
use super::nms::Detection;
use crate::data::augment::Obj;
use crate::data::dataset::class_name;
use serde::Serialize;

/// Confidence below which detections are left out (Ultralytics uses 0.25 when validation's
/// default 0.001 is passed).
pub const CONF: f32 = 0.25;
/// IoU above which a detection and a label may match.
pub const IOU: f32 = 0.45;

/// Counts of (predicted, true) class pairs over a validation run.
#[derive(Clone, Debug, Serialize)]
pub struct ConfusionMatrix {
    /// Number of classes; the matrix is `(nc + 1)²`.
    pub nc: usize,
    /// `matrix[predicted][true]`, the background last.
    pub matrix: Vec<Vec<f64>>,
}

impl ConfusionMatrix {
    /// An empty matrix for `nc` classes.
    pub fn new(nc: usize) -> ConfusionMatrix {
        ConfusionMatrix { nc, matrix: vec![vec![0.0; nc + 1]; nc + 1] }
    }

    /// Adds one image: its detections (any confidence; those at or under [`CONF`] are dropped)
    /// and its labels, both in the same pixel space. Matching is class-agnostic, as
    /// Ultralytics' `process_batch`: pairs with IoU > [`IOU`], each detection keeping its best
    /// label, then each label its best detection; a matched pair counts at (detected class, true
    /// class), an unmatched label as background → true class, an unmatched detection as
    /// detected class → background.
    pub fn add_image(&mut self, dets: &[Detection], labels: &[Obj]) {
        let bg = self.nc;
        let dets: Vec<&Detection> = dets.iter().filter(|d| d.score > CONF).collect();
        // Pairs (label, detection, IoU) above the threshold.
        let mut pairs: Vec<(usize, usize, f32)> = vec![];
        for (l, o) in labels.iter().enumerate() {
            for (d, det) in dets.iter().enumerate() {
                let v = box_iou(&o.xyxy, &det.xyxy);
                if v > IOU {
                    pairs.push((l, d, v));
                }
            }
        }
        if pairs.len() > 1 {
            // Highest IoU first; the first pair per detection, then the first per label.
            pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut seen = vec![false; dets.len()];
            pairs.retain(|p| !std::mem::replace(&mut seen[p.1], true));
            let mut seen = vec![false; labels.len()];
            pairs.retain(|p| !std::mem::replace(&mut seen[p.0], true));
        }
        for (l, o) in labels.iter().enumerate() {
            match pairs.iter().find(|p| p.0 == l) {
                Some(&(_, d, _)) => self.matrix[dets[d].class][o.cls] += 1.0,
                None => self.matrix[bg][o.cls] += 1.0,
            }
        }
        for (d, det) in dets.iter().enumerate() {
            if !pairs.iter().any(|p| p.1 == d) {
                self.matrix[det.class][bg] += 1.0;
            }
        }
    }

    /// The matrix with each column divided by its sum (+1e-9), as the normalised plot shows it.
    pub fn normalized(&self) -> Vec<Vec<f64>> {
        let n = self.nc + 1;
        let sums: Vec<f64> = (0..n).map(|j| (0..n).map(|i| self.matrix[i][j]).sum::<f64>() + 1e-9).collect();
        self.matrix.iter().map(|row| row.iter().zip(&sums).map(|(v, s)| v / s).collect()).collect()
    }

    /// The rows' and columns' names: the classes', then "background".
    pub fn labels(&self, names: &[String]) -> Vec<String> {
        (0..=self.nc).map(|i| if i == self.nc { "background".into() } else { class_name(names, i) }).collect()
    }

    /// The matrix as CSV: a header of true classes, one row per predicted class (names, then
    /// "background").
    pub fn to_csv(&self, names: &[String]) -> String {
        let labels = self.labels(names);
        let mut s = "predicted\\true".to_string();
        for l in &labels {
            s += &format!(",{l}");
        }
        s.push('\n');
        for (label, row) in labels.iter().zip(&self.matrix) {
            s += label;
            for v in row {
                s += &format!(",{v}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4], score: f32, class: usize) -> Detection {
        Detection { xyxy, score, class }
    }

    fn obj(xyxy: [f32; 4], cls: usize) -> Obj {
        Obj { cls, xyxy }
    }

    /// A hand-built image: a found box, a box of the wrong class, a missed box, a false
    /// positive, and a detection under the confidence threshold.
    #[test]
    fn counts_matches_misses_false_positives_and_wrong_classes() {
        let labels =
            [obj([0.0, 0.0, 10.0, 10.0], 0), obj([20.0, 20.0, 30.0, 30.0], 1), obj([50.0, 50.0, 60.0, 60.0], 1)];
        let dets = [
            det([0.0, 0.0, 10.0, 9.0], 0.9, 0),    // matches label 0, right class
            det([20.0, 20.0, 30.0, 31.0], 0.8, 0), // matches label 1, wrong class
            det([80.0, 80.0, 90.0, 90.0], 0.7, 1), // nothing there: false positive
            det([50.0, 50.0, 60.0, 60.0], 0.2, 1), // under 0.25: ignored, so label 2 is missed
        ];
        let mut cm = ConfusionMatrix::new(2);
        cm.add_image(&dets, &labels);
        assert_eq!(cm.matrix, vec![vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 1.0], vec![0.0, 1.0, 0.0]]);
        // An image without labels: every confident detection is a false positive; one without
        // detections: every label a false negative.
        cm.add_image(&[det([0.0, 0.0, 5.0, 5.0], 0.5, 1)], &[]);
        cm.add_image(&[], &[obj([0.0, 0.0, 5.0, 5.0], 0)]);
        assert_eq!(cm.matrix, vec![vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 2.0], vec![1.0, 1.0, 0.0]]);
        let n = cm.normalized();
        assert!((n[0][0] - 0.5).abs() < 1e-9 && (n[2][0] - 0.5).abs() < 1e-9);
    }

    /// Two detections on one label: the higher IoU wins the label, the other is a false
    /// positive even though it overlaps enough; one detection on two labels takes the closer.
    #[test]
    fn each_label_and_each_detection_matches_at_most_once() {
        let labels = [obj([0.0, 0.0, 10.0, 10.0], 0)];
        let dets = [det([0.0, 0.0, 10.0, 8.0], 0.9, 0), det([0.0, 0.0, 10.0, 9.5], 0.6, 0)];
        let mut cm = ConfusionMatrix::new(1);
        cm.add_image(&dets, &labels);
        assert_eq!(cm.matrix, vec![vec![1.0, 1.0], vec![0.0, 0.0]]);
        let labels = [obj([0.0, 0.0, 10.0, 10.0], 0), obj([0.0, 0.0, 10.0, 7.0], 0)];
        let mut cm = ConfusionMatrix::new(1);
        cm.add_image(&[det([0.0, 0.0, 10.0, 7.5], 0.9, 0)], &labels);
        assert_eq!(cm.matrix, vec![vec![1.0, 0.0], vec![1.0, 0.0]]);
    }
}
