//! One training step of yolo11p (nc 2) against Ultralytics 8.3.253 (tests/fixtures/yolo11p-nc2-step):
//! loss components, every parameter gradient (plain and with sr 0.01), BN running statistics.

mod common;

use common::{fixture, rel_err};
use slimc::frontend::weights::read_safetensors;
use slimc::load::{load_model, LoadOptions};
use slimc::train::step::{read_targets, Program, StepResult};
use slimc_ir::{parse_graph, print_graph, Tensor};
use std::collections::BTreeMap;

fn program() -> Program {
    let opts = LoadOptions { weights: Some(fixture("yolo11p-nc2/model.safetensors")), ..Default::default() };
    let model = load_model(fixture("yolo11p-nc2/yolo11p.yaml").to_str().unwrap(), &opts).unwrap();
    Program::new(&model, &slimc::backend::cpu::Cpu).unwrap()
}

fn step(p: &mut Program) -> StepResult {
    let images = slimc::io::read_npy(&fixture("yolo11p-nc2-step/images.npy")).unwrap();
    let targets = read_targets(&fixture("yolo11p-nc2-step/report.json")).unwrap();
    p.step(&images, &targets).unwrap()
}

fn reference(file: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture(&format!("yolo11p-nc2-step/{file}"))).unwrap().into_iter().collect()
}

/// The fixtures README's per-tensor error: ‖g − g_ref‖ / (‖g_ref‖ + 1e-6·G).
fn assert_grads_match(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
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
    assert!(worst.0 < 1e-3, "gradient of {} off by {:.3e}", worst.1, worst.0);
}

#[test]
fn loss_gradients_and_bn_statistics_match_ultralytics() {
    let mut p = program();
    let r = step(&mut p);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("yolo11p-nc2-step/report.json")).unwrap()).unwrap();
    let want: Vec<f64> =
        report["loss_items_box_cls_dfl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (k, (&got, &want)) in r.items.iter().zip(&want).enumerate() {
        assert!(((got as f64 - want) / want).abs() < 1e-5, "loss component {k}: {got} vs {want}");
    }
    let total = report["loss_total"].as_f64().unwrap();
    assert!(((r.total as f64 - total) / total).abs() < 1e-5, "total {} vs {total}", r.total);
    assert_grads_match(&r.grads, &reference("grads.safetensors"));
    let bn = reference("bn_after.safetensors");
    assert_eq!(r.running.len(), bn.len());
    for (name, want) in &bn {
        let err = rel_err(&r.running[name], want);
        assert!(err < 1e-5, "{name}: running statistic off by {err:.3e}");
    }
}

#[test]
fn sparse_gradients_add_sr_sign_gamma_to_every_bn_gamma() {
    let mut p = program();
    let mut r = step(&mut p);
    assert_eq!(p.gammas.len(), 81, "YOLO11 with one PSA block has 81 BatchNorms");
    p.add_sparsity(&mut r.grads, &p.gammas, 0.01).unwrap();
    assert_grads_match(&r.grads, &reference("grads_sparse.safetensors"));
}

#[test]
fn training_program_prints_and_parses_back() {
    let p = program();
    let text = print_graph(&p.model.graph);
    assert!(text.contains("detect_loss_grad(") && text.contains("batch_norm_grad("));
    assert_eq!(parse_graph(&text).unwrap(), p.model.graph);
}
