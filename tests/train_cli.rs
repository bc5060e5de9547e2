//! `slimc train` / `slimc val` through the binary on a small synthetic dataset: bad data is
//! reported as Ultralytics does (counted warnings naming file and line, or errors), and a run
//! killed with SIGKILL mid-epoch resumes from its last completed epoch and ends exactly where an
//! uninterrupted run ends.

mod common;

use common::{dataset, scratch};
use std::path::Path;
use std::process::{Command, Output};

fn slimc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slimc"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn train(yaml: &Path, project: &Path, epochs: usize) -> Command {
    let mut c = slimc();
    c.args(["train", "yolo11n.yaml", "--imgsz", "64", "--batch", "2", "--epochs", &epochs.to_string()])
        .arg("--data")
        .arg(yaml)
        .arg("--project")
        .arg(project)
        .args(["--name", "run", "--close-mosaic", "1"]);
    c
}

fn rows(csv: &Path) -> Vec<String> {
    std::fs::read_to_string(csv)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

/// results.csv rows without the wall-time column.
fn results_without_time(csv: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(csv).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 1).map(|(_, c)| c).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn bad_labels_and_images_are_counted_and_named() {
    let d = scratch("bad-data");
    let yaml = dataset(&d, 4);
    std::fs::write(d.join("labels/train/im0.txt"), "0 0.5 0.5 0.2\n").unwrap();
    std::fs::write(d.join("labels/train/im1.txt"), "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n").unwrap();
    let jpg = std::fs::read(d.join("images/train/im2.jpg")).unwrap();
    std::fs::write(d.join("images/train/im2.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    let out = train(&yaml, &d.join("runs"), 1).output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("im0.txt: line 1: 4 fields"), "{t}");
    assert!(t.contains("im1.txt: line 2: class 3 is not an id below the dataset's 1 classes"), "{t}");
    assert!(t.contains("im2.jpg: ignoring corrupt image: truncated JPEG"), "{t}");
    assert!(t.contains("train: 1 images, 0 backgrounds, 3 corrupt"), "{t}");
}

#[test]
fn missing_labels_directory_or_no_usable_image_is_an_error() {
    let d = scratch("no-labels");
    let yaml = dataset(&d, 2);
    std::fs::remove_dir_all(d.join("labels/train")).unwrap();
    let out = train(&yaml, &d.join("runs"), 1).output().unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("train: labels directory") && t.contains("labels/train does not exist"), "{t}");
    assert!(!t.contains("panicked"), "{t}");

    let d = scratch("all-corrupt");
    let yaml = dataset(&d, 2);
    for i in 0..2 {
        std::fs::write(d.join(format!("images/train/im{i}.jpg")), b"not an image").unwrap();
    }
    let out = train(&yaml, &d.join("runs"), 1).output().unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("train: no usable image (2 corrupt)"), "{t}");
}

#[test]
fn killed_run_resumes_from_its_last_completed_epoch() {
    let d = scratch("resume");
    let yaml = dataset(&d, 6);
    let project = d.join("runs");
    let run = project.join("run");
    let csv = run.join("results.csv");
    let mut child = train(&yaml, &project, 3).stderr(std::process::Stdio::null()).spawn().unwrap();
    // Kill as soon as the first epoch is complete (its row is written with last.slim).
    let start = std::time::Instant::now();
    while rows(&csv).is_empty() && start.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = rows(&csv).len();
    assert!((1..3).contains(&done), "killed after {done} epochs");
    let last = run.join("weights/last.slim");
    let out = slimc().arg("train").arg(&last).arg("--resume").output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("from epoch {} of 3", done + 1)), "{t}");
    assert_eq!(rows(&csv), vec!["1.000000", "2.000000", "3.000000"], "each epoch exactly once");
    // The weights, optimizer moments, EMA and schedule all came back: every loss, metric and
    // learning rate equals an uninterrupted run's.
    let whole = d.join("whole");
    let out = train(&yaml, &whole, 3).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(results_without_time(&csv), results_without_time(&whole.join("run/results.csv")));
    // A finished run has nothing to resume.
    let out = slimc().arg("train").arg(&last).arg("--resume").output().unwrap();
    assert!(!out.status.success() && text(&out).contains("no training state to resume"), "{}", text(&out));
    // The best model validates through `slimc val` and writes its detections.
    let json = d.join("preds.json");
    let out = slimc()
        .arg("val")
        .arg(run.join("weights/best.slim"))
        .arg("--data")
        .arg(&yaml)
        .arg("--save-json")
        .arg(&json)
        .arg("--project")
        .arg(&*d)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Box(P") && t.contains("mAP50-95)") && t.contains("all"), "{t}");
    assert!(serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&json).unwrap()).unwrap().is_array());
    assert!(run.join("results.png").exists());
    // Training's final validation of best.slim wrote Ultralytics' plots beside results.png.
    for f in
        ["BoxPR_curve.png", "BoxF1_curve.csv", "confusion_matrix.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg"]
    {
        assert!(run.join(f).exists(), "{f}");
    }
}

#[test]
fn pipeline_writes_every_stage_and_a_verified_narrower_export() {
    let d = scratch("pipeline");
    let yaml = dataset(&d, 4);
    let out = slimc()
        // An option given twice takes its last value, as `./run main --epochs N` relies on.
        .args(["pipeline", "--epochs", "4", "--imgsz", "64", "--batch", "2", "--epochs", "1", "--ratio", "0.5"])
        .args(["--name", "p"])
        .arg("--data")
        .arg(&yaml)
        .arg("--project")
        .arg(d.join("runs"))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let dir = d.join("runs/p");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let stages = s["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(names, ["train", "sparse", "pruned", "fine-tuned"]);
    let params = |i: usize| stages[i]["parameters"].as_u64().unwrap();
    assert!(params(2) < params(1) && params(3) == params(2), "{stages:?}");
    assert!(s["verify_max_rel"].as_f64().unwrap() < 1e-4);
    assert!(stages.iter().all(|r| r["ort_ms"].as_f64().unwrap() > 0.0), "{stages:?}");
    assert_eq!(std::fs::read_to_string(dir.join("1-train/results.csv")).unwrap().lines().count(), 2);
    for f in ["summary.md", "gamma.png", "gamma_layers.png", "prune.txt", "final.onnx", "2-sparse/results.csv"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    for f in ["trained.onnx", "sparse.onnx", "pruned.onnx", "final.onnx"] {
        assert_eq!(common::onnx_subnormals(&dir.join(f)), 0, "{f}");
    }
    // Before and after: the trained and final models' detections side by side (two 2x2 mosaics
    // of the two val images, each in its rect batch's 96-pixel letterbox, under a title band)
    // and their PR curves in one plot.
    let (w, h) = image::image_dimensions(dir.join("compare_val.jpg")).unwrap();
    assert!(w == 2 * 192 + 10 && h > 192, "{w}x{h}");
    assert_eq!(image::image_dimensions(dir.join("compare_PR.png")).unwrap(), (2250, 1500));
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("(compare_val.jpg)") && md.contains("(compare_PR.png)"), "{md}");
    // The pruned and final models as Ultralytics checkpoints, read back with their widths.
    assert!(md.contains("pruned.pt and final.pt") && !md.contains("not written"), "{md}");
    for (f, slim) in [("pruned.pt", "pruned.slim"), ("final.pt", "final.slim")] {
        let opts = slimc::load::LoadOptions::default();
        let back = slimc::load::load_model(dir.join(f).to_str().unwrap(), &opts).unwrap();
        let want = slimc::load::load_model(dir.join(slim).to_str().unwrap(), &opts).unwrap();
        let shapes =
            |m: &slimc_ir::Model| m.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect::<Vec<_>>();
        assert_eq!(shapes(&back), shapes(&want), "{f}");
    }
    // The sparse stage logs the share of small gammas.
    let csv = std::fs::read_to_string(dir.join("2-sparse/results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().ends_with("sparsity/gamma<1e-2"));
}
