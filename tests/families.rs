//! YOLOv8, YOLOv5u and YOLO12 against Ultralytics 8.3.253: forward from YAML + weights and from
//! an exported ONNX file, one training step on the CPU and the GPU backend (lavapipe where there
//! is no GPU). The repository's fixtures are tiny scales of each family (tests/fixtures/
//! yolov8p-nc2, yolo12p-nc1, yolov5p-nc1 and the step folders; benches/families.sh makes them);
//! `cargo run --release --example shared_fixtures` runs the same checks on the full-size
//! reference set in `../shared/fixtures`.

mod common;
use common::step_parity::StepCase;
use common::{fixture, rel_err};
use slimc::backend::{cpu::Cpu, gpu::Gpu, run_once};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-5;

/// `model` (a YAML file or built-in name, or an ONNX file) run on `dir/input.npy` reproduces
/// `dir/output-eval.npy` within 1e-5 relative.
fn forward(model: &str, nc: Option<usize>, weights: Option<PathBuf>, dir: &Path) {
    let model = load_model(model, &LoadOptions { nc, weights, ..Default::default() }).unwrap();
    let x = read_npy(&dir.join("input.npy")).unwrap();
    let want = read_npy(&dir.join("output-eval.npy")).unwrap();
    let y = run_once(&Cpu, &model, &[x]).unwrap();
    let e = rel_err(&y[0], &want);
    assert!(e < TOL, "{}: relative error {e:e} exceeds {TOL:e}", dir.display());
}

fn tiny(name: &str, folder: &str) {
    let dir = fixture(folder);
    forward(&dir.join(format!("{name}.yaml")).display().to_string(), None, Some(dir.join("model.safetensors")), &dir);
}

fn gpu() -> Gpu {
    Gpu::new().expect("a GPU adapter: scripts/setup.sh installs lavapipe where there is no GPU")
}

fn tiny_step(name: &str, folder: &str) -> StepCase {
    StepCase {
        yaml: fixture(&format!("{folder}/{name}.yaml")).display().to_string(),
        nc: None,
        weights: fixture(&format!("{folder}/model.safetensors")),
        dir: fixture(&format!("{folder}-step")),
    }
}

#[test]
fn yolov8_c2f_and_the_legacy_head_match_ultralytics() {
    tiny("yolov8p", "yolov8p-nc2");
}

#[test]
fn yolov5u_c3_matches_ultralytics() {
    tiny("yolov5p", "yolov5p-nc1");
}

#[test]
fn yolo12_area_attention_matches_ultralytics() {
    tiny("yolo12p", "yolo12p-nc1");
}

#[test]
fn yolo12_imported_from_onnx_matches_ultralytics() {
    let dir = fixture("yolo12p-nc1");
    forward(&dir.join("model-bn.onnx").display().to_string(), None, None, &dir);
}

/// Checkpoints Ultralytics wrote (`strip_optimizer`: fp16, its own pickled modules — C3,
/// A2C2f, ABlock, AAttn) load and run to the output Ultralytics computes from them.
#[test]
fn ultralytics_checkpoints_of_yolov5u_and_yolo12_reproduce_ultralytics() {
    for (name, folder) in [("yolov5p", "yolov5p-nc1"), ("yolo12p", "yolo12p-nc1")] {
        let release = fixture(&format!("checkpoints/{name}-release"));
        let model =
            load_model(&release.join(format!("{name}.pt")).display().to_string(), &LoadOptions::default()).unwrap();
        let x = read_npy(&fixture(&format!("{folder}/input.npy"))).unwrap();
        let want = read_npy(&release.join("output-eval.npy")).unwrap();
        let e = rel_err(&run_once(&Cpu, &model, &[x]).unwrap()[0], &want);
        assert!(e < TOL, "{name}.pt: relative error {e:e} exceeds {TOL:e}");
    }
}

#[test]
fn yolov8_step_matches_ultralytics() {
    tiny_step("yolov8p", "yolov8p-nc2").check_gradients(&Cpu);
}

#[test]
fn yolov8_step_matches_ultralytics_on_the_gpu() {
    tiny_step("yolov8p", "yolov8p-nc2").check_gradients(&gpu());
}

#[test]
fn yolo12_step_matches_ultralytics() {
    tiny_step("yolo12p", "yolo12p-nc1").check_gradients(&Cpu);
}

#[test]
fn yolo12_step_matches_ultralytics_on_the_gpu() {
    tiny_step("yolo12p", "yolo12p-nc1").check_gradients(&gpu());
}
