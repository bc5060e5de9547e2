//! Forward parity with Ultralytics on the repository's fixture (yolo11p, nc 2): the YAML-built
//! graph with the fixture's weights, and both ONNX files imported, reproduce output-eval.npy.

mod common;
use common::{fixture, rel_err};
use slimc::backend::{cpu::Cpu, run_once};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};

const TOL: f32 = 1e-5;

fn check(model: &slimc_ir::Model, what: &str) {
    let x = read_npy(&fixture("yolo11p-nc2/input.npy")).unwrap();
    let want = read_npy(&fixture("yolo11p-nc2/output-eval.npy")).unwrap();
    let y = run_once(&Cpu, model, &[x]).unwrap();
    let e = rel_err(&y[0], &want);
    assert!(e < TOL, "{what}: relative error {e:e} exceeds {TOL:e}");
}

/// yolo11p.yaml built with the fixture's state dict.
fn yaml_with_fixture_weights() -> slimc_ir::Model {
    let opts = LoadOptions {
        weights: Some(fixture("yolo11p-nc2/model.safetensors")),
        imgsz: Some([128, 128]),
        ..Default::default()
    };
    load_model(fixture("yolo11p-nc2/yolo11p.yaml").to_str().unwrap(), &opts).unwrap()
}

#[test]
fn yaml_with_safetensors_matches_ultralytics() {
    let model = yaml_with_fixture_weights();
    check(&model, "yaml");
}

#[test]
fn imported_bn_onnx_matches_ultralytics() {
    let model = load_model(fixture("yolo11p-nc2/model-bn.onnx").to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(model.graph.nodes.iter().filter(|n| n.op.name() == "batch_norm").count(), 81);
    assert!(
        model.graph.nodes.iter().all(|n| n.op.name() != "sigmoid" || n.scope.starts_with("model.23")),
        "SiLU patterns are recognised"
    );
    check(&model, "model-bn.onnx");
}

#[test]
fn imported_fused_onnx_matches_ultralytics() {
    let model = load_model(fixture("yolo11p-nc2/model-fused.onnx").to_str().unwrap(), &LoadOptions::default()).unwrap();
    check(&model, "model-fused.onnx");
}

#[test]
fn yaml_graph_runs_at_other_sizes_and_batches() {
    // The YAML graph is size-agnostic: a 2-image batch at 96x128 equals the images run alone.
    let model = yaml_with_fixture_weights();
    let x = common::image(2, 96, 128, 5);
    let both = run_once(&Cpu, &model, &[x.clone()]).unwrap().remove(0);
    assert_eq!(both.shape, vec![2, 6, 12 * 16 + 6 * 8 + 3 * 4]);
    let half = x.numel() / 2;
    let one = slimc_ir::Tensor::from_f32(vec![1, 3, 96, 128], x.f32s().unwrap()[half..].to_vec()).unwrap();
    let second = run_once(&Cpu, &model, &[one]).unwrap().remove(0);
    let part =
        slimc_ir::Tensor::from_f32(second.shape.clone(), both.f32s().unwrap()[both.numel() / 2..].to_vec()).unwrap();
    assert!(rel_err(&part, &second) < 1e-6);
}
