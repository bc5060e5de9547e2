//! YOLOv8, YOLOv5u and YOLO12 against Ultralytics 8.3.253: forward from YAML + weights and from
//! an exported ONNX file, one training step on the CPU and the GPU backend (lavapipe where there
//! is no GPU). The repository's fixtures are tiny scales of each family (tests/fixtures/
//! yolov8p-nc2, yolo12p-nc1, yolov5p-nc1 and the step folders; benches/families.sh makes them);
//! the `--ignored` tests run the same checks on the full-size reference set in
//! `../shared/fixtures` where a checkout has it.

mod common;
use common::step_parity::StepCase;
use common::{fixture, rel_err};
use slimc::backend::{cpu::Cpu, gpu::Gpu, run_once};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-5;

/// The full-size reference set beside the checkout.
fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures").join(rel)
}

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
        let model = load_model(&release.join(format!("{name}.pt")).display().to_string(), &LoadOptions::default())
            .unwrap();
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

/// The shared reference set's forward cases: built-in YAMLs with the fixtures' weights, and
/// YOLO12's ONNX export through the ONNX frontend.
#[test]
#[ignore = "reads ../shared/fixtures (the full-size reference set, not in the repository)"]
fn shared_forward_cases_match_ultralytics() {
    for (yaml, nc, folder) in
        [("yolov8n.yaml", 2, "yolov8n-nc2"), ("yolo12n.yaml", 1, "yolo12n-nc1"), ("yolov5nu.yaml", 1, "yolov5nu-nc1")]
    {
        forward(yaml, Some(nc), Some(shared(&format!("{folder}/model.safetensors"))), &shared(folder));
    }
    forward(&shared("yolo12n-nc1/model-bn.onnx").display().to_string(), None, None, &shared("yolo12n-nc1"));
    let release = shared("checkpoints/yolov8n-release");
    forward(&release.join("yolov8n.pt").display().to_string(), None, None, &release);
    // The release checkpoint exports to ONNX that tract and onnxruntime run to slimc's output.
    let m = load_model(&release.join("yolov8n.pt").display().to_string(), &LoadOptions::default()).unwrap();
    let x = read_npy(&release.join("input.npy")).unwrap();
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    let dir = common::scratch("families-release");
    let path = dir.join("yolov8n.onnx");
    let opts = slimc::export::ExportOptions { imgsz: Some([320, 320]), ..Default::default() };
    std::fs::write(&path, slimc::export::export_onnx(&m, &opts).unwrap().bytes).unwrap();
    let rows = slimc::verify::verify_onnx(&path, &x, &want, 1e-4).unwrap();
    assert!(rows.iter().all(|r| r.ok), "{rows:?}");
    eprintln!("release yolov8n.pt exported: {rows:?}");
}

fn shared_step(yaml: &str, nc: usize, folder: &str) -> StepCase {
    StepCase {
        yaml: yaml.into(),
        nc: Some(nc),
        weights: shared(&format!("{folder}/model.safetensors")),
        dir: shared(&format!("{folder}-step")),
    }
}

#[test]
#[ignore = "reads ../shared/fixtures (the full-size reference set, not in the repository)"]
fn shared_step_cases_match_ultralytics_on_both_backends() {
    for (yaml, nc, folder) in [("yolov8n.yaml", 2, "yolov8n-nc2"), ("yolo12n.yaml", 1, "yolo12n-nc1")] {
        let case = shared_step(yaml, nc, folder);
        case.check_gradients(&Cpu);
        case.check_gradients(&gpu());
    }
}
