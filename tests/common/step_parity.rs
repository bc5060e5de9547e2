//! One training step against an Ultralytics step fixture (a `*-step` folder beside the forward
//! folder whose weights it uses): loss components, every parameter gradient, BN statistics.

use super::rel_err;
use slimc::backend::Backend;
use slimc::frontend::weights::read_safetensors;
use slimc::load::{load_model, LoadOptions};
use slimc::train::step::{read_targets, Program};
use slimc_ir::{Model, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A step fixture: the model YAML (a path or a built-in name), its weights and the step folder.
pub struct StepCase {
    /// Model YAML: a file or a built-in name such as `yolov8n.yaml`.
    pub yaml: String,
    /// Class count the YAML is built with (`None`: the YAML's own).
    pub nc: Option<usize>,
    /// The forward fixture's `model.safetensors`.
    pub weights: PathBuf,
    /// The step folder (`images.npy`, `report.json`, `grads.safetensors`, `bn_after.safetensors`).
    pub dir: PathBuf,
}

impl StepCase {
    /// The model with the fixture's weights.
    pub fn model(&self) -> Model {
        let opts = LoadOptions { weights: Some(self.weights.clone()), nc: self.nc, ..Default::default() };
        load_model(&self.yaml, &opts).unwrap()
    }

    /// Images and target rows.
    pub fn batch(&self) -> (Tensor, Tensor) {
        let images = slimc::io::read_npy(&self.dir.join("images.npy")).unwrap();
        let targets = read_targets(&self.dir.join("report.json")).unwrap();
        (images, targets)
    }

    /// `report.json`.
    pub fn report(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("report.json")).unwrap()).unwrap()
    }

    /// A safetensors file of the step folder by name.
    pub fn reference(&self, file: &str) -> BTreeMap<String, Tensor> {
        read_safetensors(&self.dir.join(file)).unwrap().into_iter().collect()
    }

    /// The loss components within 1e-5 relative of the report's.
    pub fn assert_items_match(&self, items: &[f32]) {
        let want: Vec<f64> =
            self.report()["loss_items_box_cls_dfl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(items.len(), want.len());
        for (k, (&got, &want)) in items.iter().zip(&want).enumerate() {
            assert!(((got as f64 - want) / want).abs() < 1e-5, "loss component {k}: {got} vs {want}");
        }
    }

    /// Loss components and total (1e-5), every gradient (1e-3 by the README's metric) and every
    /// BN running statistic after the step (1e-5) on `backend`.
    pub fn check_gradients(&self, backend: &dyn Backend) {
        let mut p = Program::new(&self.model(), backend).unwrap();
        let (images, targets) = self.batch();
        let r = p.gradients(&images, &targets).unwrap();
        self.assert_items_match(&r.items);
        let total = self.report()["loss_total"].as_f64().unwrap();
        assert!(((r.total as f64 - total) / total).abs() < 1e-5, "total {} vs {total}", r.total);
        assert_grads_match(&r.grads, &self.reference("grads.safetensors"));
        let bn = self.reference("bn_after.safetensors");
        assert_eq!(r.running.len(), bn.len());
        for (name, want) in &bn {
            let err = rel_err(&r.running[name], want);
            assert!(err < 1e-5, "{name}: running statistic off by {err:.3e}");
        }
        println!("  loss components, total and {} BN running-statistic tensors within 1e-5", bn.len());
    }
}

/// The fixtures README's per-tensor error: ‖g − g_ref‖ / (‖g_ref‖ + 1e-6·G), below 1e-3 for
/// every tensor, and the same names.
pub fn assert_grads_match(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
    let norm = |t: &Tensor| t.f32s().unwrap().iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let all = want.values().map(|t| norm(t).powi(2)).sum::<f64>().sqrt();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "gradient names");
    let mut worst = (0.0, String::new());
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{name}");
        let diff =
            g.f32s().unwrap().iter().zip(w.f32s().unwrap()).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>();
        let err = diff.sqrt() / (norm(w) + 1e-6 * all);
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    println!("  worst gradient error {:.3e} ({})", worst.0, worst.1);
    assert!(worst.0 < 1e-3, "gradient of {} off by {:.3e}", worst.1, worst.0);
}
