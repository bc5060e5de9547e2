//! Training and validation on the GPU backend against the CPU backend, through the command line,
//! on the bundled trees dataset (on lavapipe where there is no GPU): three epochs from one seed
//! follow the CPU's loss epoch by epoch, and validation of the same weights, and of a model
//! trained to a nonzero mAP, gives the CPU's metrics.

mod common;

use common::{fixture, scratch};
use std::path::{Path, PathBuf};
use std::process::Command;

fn slimc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slimc"))
}

fn trees() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/trees/trees.yaml")
}

/// Runs `c`, asserting success, and returns its stdout.
fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?} failed:\n{text}\n{}", c, String::from_utf8_lossy(&out.stderr));
    text
}

/// The columns `names` of every row of a results.csv.
fn columns(csv: &Path, names: &[&str]) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at: Vec<usize> = names.iter().map(|n| header.iter().position(|h| h == n).expect(n)).collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            at.iter().map(|&k| cells[k].parse().unwrap()).collect()
        })
        .collect()
}

/// mAP50 and mAP50-95 of `model` on the trees val split at `imgsz` on `device`.
fn val(model: &Path, imgsz: usize, device: &str) -> [f64; 2] {
    let out = ok(slimc().arg("val").arg(model).arg("--data").arg(trees()).args([
        "--imgsz",
        &imgsz.to_string(),
        "--batch",
        "8",
        "--device",
        device,
        "--json",
        "--no-plots",
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    [json["map50"].as_f64().unwrap(), json["map"].as_f64().unwrap()]
}

fn assert_same_metrics(model: &Path, imgsz: usize) -> [f64; 2] {
    let (cpu, gpu) = (val(model, imgsz, "cpu"), val(model, imgsz, "gpu"));
    for (k, what) in ["mAP50", "mAP50-95"].iter().enumerate() {
        let d = (cpu[k] - gpu[k]).abs();
        assert!(d <= 1e-3, "{}: {what} {} on the GPU, {} on the CPU", model.display(), gpu[k], cpu[k]);
    }
    eprintln!("{}: mAP50 {:?} mAP50-95 {:?} (cpu, gpu)", model.display(), [cpu[0], gpu[0]], [cpu[1], gpu[1]]);
    cpu
}

#[test]
fn three_epochs_on_the_gpu_follow_the_cpu_and_validate_alike() {
    let dir = scratch("gpu-train");
    for device in ["cpu", "gpu"] {
        ok(slimc()
            .args(["train", "yolo11n.yaml", "--epochs", "3", "--imgsz", "128", "--batch", "8", "--seed", "0"])
            .arg("--data")
            .arg(trees())
            .args(["--device", device, "--name", device])
            .arg("--project")
            .arg(&*dir));
    }
    let losses = ["train/box_loss", "train/cls_loss", "train/dfl_loss"];
    let cpu = columns(&dir.join("cpu/results.csv"), &losses);
    let gpu = columns(&dir.join("gpu/results.csv"), &losses);
    assert_eq!(cpu.len(), 3);
    assert_eq!(gpu.len(), 3);
    for (epoch, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        for (k, what) in losses.iter().enumerate() {
            let rel = (g[k] - c[k]).abs() / c[k].abs();
            eprintln!("epoch {}: {what} cpu {:.4} gpu {:.4} ({:.3}%)", epoch + 1, c[k], g[k], 100.0 * rel);
            assert!(rel <= 0.02, "epoch {}: {what} {} on the GPU, {} on the CPU", epoch + 1, g[k], c[k]);
        }
    }
    assert_same_metrics(&dir.join("gpu/weights/last.slim"), 128);
}

/// The same comparison on a model that finds trees (the 3-epoch weights score 0 on both).
#[test]
fn validation_on_the_gpu_gives_the_cpus_metrics() {
    let [map50, _] = assert_same_metrics(&fixture("trees-trained/yolo11p-trees.slim"), 160);
    assert!(map50 > 0.02, "the fixture model should find trees (mAP50 {map50})");
}
