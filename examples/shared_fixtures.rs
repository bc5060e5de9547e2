//! The full-size reference set of the other families (`../shared/fixtures`, not in the
//! repository), checked from the command line as `tests/families.rs` checks the tiny fixtures:
//! forward from the built-in YAMLs with the fixtures' weights (1e-5 relative), YOLO12's ONNX
//! export through the ONNX frontend, the release yolov8n.pt and its ONNX export verified by
//! tract and onnxruntime, and one training step of yolov8n and yolo12n on the CPU and the GPU
//! backend (loss 1e-5, gradients 1e-3 by the fixtures README's metric, BN statistics 1e-5).
//!
//! Usage: `cargo run --release --example shared_fixtures [FIXTURES_DIR]` (default
//! `../shared/fixtures`); each check prints its figures, a failed one ends with its message.

#[path = "../tests/common/step_parity.rs"]
mod step_parity;

use slimc::backend::{cpu::Cpu, gpu::Gpu, run_once};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Tensor;
use std::path::{Path, PathBuf};
use step_parity::StepCase;

/// Max relative error of `a` against `b` (as the tests measure it).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    slimc::commands::verify::compare(a, b).unwrap().1
}

/// `model` run on `dir/input.npy` against `dir/output-eval.npy`; returns the relative error.
fn forward(model: &str, nc: Option<usize>, weights: Option<PathBuf>, dir: &Path) -> f32 {
    let model = load_model(model, &LoadOptions { nc, weights, ..Default::default() }).unwrap();
    let x = read_npy(&dir.join("input.npy")).unwrap();
    let want = read_npy(&dir.join("output-eval.npy")).unwrap();
    let e = rel_err(&run_once(&Cpu, &model, &[x]).unwrap()[0], &want);
    assert!(e < 1e-5, "{}: relative error {e:e} exceeds 1e-5", dir.display());
    e
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "../shared/fixtures".into()));
    let at = |rel: &str| root.join(rel);
    for (yaml, nc, folder) in
        [("yolov8n.yaml", 2, "yolov8n-nc2"), ("yolo12n.yaml", 1, "yolo12n-nc1"), ("yolov5nu.yaml", 1, "yolov5nu-nc1")]
    {
        let e = forward(yaml, Some(nc), Some(at(&format!("{folder}/model.safetensors"))), &at(folder));
        println!("forward {folder} ({yaml} + model.safetensors): max rel error {e:.2e}");
    }
    let onnx = at("yolo12n-nc1/model-bn.onnx");
    let e = forward(&onnx.display().to_string(), None, None, &at("yolo12n-nc1"));
    println!("forward yolo12n-nc1/model-bn.onnx (ONNX frontend): max rel error {e:.2e}");
    let release = at("checkpoints/yolov8n-release");
    let pt = release.join("yolov8n.pt").display().to_string();
    let e = forward(&pt, None, None, &release);
    println!("forward checkpoints/yolov8n-release/yolov8n.pt: max rel error {e:.2e}");
    let m = load_model(&pt, &LoadOptions::default()).unwrap();
    let x = read_npy(&release.join("input.npy")).unwrap();
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    let path = std::env::temp_dir().join(format!("slimc-shared-fixtures-{}.onnx", std::process::id()));
    let opts = slimc::export::ExportOptions { imgsz: Some([320, 320]), ..Default::default() };
    std::fs::write(&path, slimc::export::export_onnx(&m, &opts).unwrap().bytes).unwrap();
    let rows = slimc::commands::verify::verify_onnx(&path, &x, &want, 1e-4);
    let _ = std::fs::remove_file(&path);
    for r in rows.unwrap() {
        assert!(r.ok, "{r:?}");
        println!("yolov8n.pt exported to ONNX, {}: max abs {:.2e}, max rel {:.2e}", r.engine, r.max_abs, r.max_rel);
    }
    let gpu = Gpu::new().expect("a GPU adapter: scripts/setup.sh installs lavapipe where there is no GPU");
    for (yaml, nc, folder) in [("yolov8n.yaml", 2, "yolov8n-nc2"), ("yolo12n.yaml", 1, "yolo12n-nc1")] {
        let case = StepCase {
            yaml: yaml.into(),
            nc: Some(nc),
            weights: at(&format!("{folder}/model.safetensors")),
            dir: at(&format!("{folder}-step")),
        };
        for (name, backend) in [("cpu", &Cpu as &dyn slimc::backend::Backend), ("gpu", &gpu)] {
            println!("step {folder}-step on the {name} backend:");
            case.check_gradients(backend);
        }
    }
    println!("all checks passed");
}
