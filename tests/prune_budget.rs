//! Pruning to a budget (bisection over the ratio), the ratio sweep, and the floor on every value.

mod common;

use common::{fixture, image, scratch};
use slimc::backend::{cpu::Cpu, run_once};
use slimc::commands::prune::{prune, prune_to_budget, Budget, Metric};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Model;
use slimc_passes::PruneOptions;
use std::process::Command;

/// The yolo11p fixture with its trained-like BN state (gammas uniform in [0.5, 1.5)).
fn fixture_model() -> Model {
    let opts = LoadOptions { weights: Some(fixture("yolo11p-nc2/model.safetensors")), ..Default::default() };
    load_model(fixture("yolo11p-nc2/yolo11p.yaml").to_str().unwrap(), &opts).unwrap()
}

#[test]
fn budgets_are_met_within_one_group() {
    let m = fixture_model();
    let opts = PruneOptions::default();
    for (metric, text) in [(Metric::Parameters, "60%"), (Metric::Gflops, "70%"), (Metric::Parameters, "400000")] {
        let b = Budget::parse(metric, text, "--target").unwrap();
        let r = prune_to_budget(&m, &opts, b).unwrap();
        let measured = metric.measure(&r.pruned.model).unwrap();
        assert_eq!(measured, r.achieved);
        assert!(r.achieved <= r.target, "{text}: {} > {}", r.achieved, r.target);
        // One candidate group fewer misses the budget: the search prunes no more than it must.
        let step = 1.0 / r.pruned.summary.candidates as f64;
        let less = prune(&m, PruneOptions { ratio: r.pruned.summary.ratio - step, ..opts.clone() }, false).unwrap();
        let fewer = metric.measure(&less.model).unwrap();
        assert!(fewer > r.target, "{text}: ratio {} - one group still meets it ({fewer})", r.pruned.summary.ratio);
        if text.ends_with('%') {
            let share: f64 = text.trim_end_matches('%').parse().unwrap();
            assert!((r.target - share / 100.0 * r.original).abs() < 1e-9);
        }
    }
}

#[test]
fn an_impossible_budget_names_the_smallest_reachable_figure() {
    let m = fixture_model();
    let opts = PruneOptions::default();
    let floor = prune(&m, PruneOptions { ratio: 1.0 - 1e-9, ..opts.clone() }, false).unwrap();
    let smallest = floor.summary.parameters.1;
    let e = prune_to_budget(&m, &opts, Budget::parse(Metric::Parameters, "1000", "--target-params").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("out of reach") && e.contains(&smallest.to_string()), "{e}");
    let e = prune_to_budget(&m, &opts, Budget::parse(Metric::Parameters, "99999999", "--target-params").unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already meets"), "{e}");
    for bad in ["abc", "0", "-5", "150%", "100%", "nan"] {
        assert!(Budget::parse(Metric::Gflops, bad, "--target-gflops").is_err(), "{bad}");
    }
}

#[test]
fn extreme_ratios_leave_every_value_its_floor() {
    // A BN family's kept channels could all fall in one half of a C3k2 split, emptying the other
    // half and the convs that read it; the floor holds per value.
    let m = fixture_model();
    let p = prune(&m, PruneOptions { ratio: 1.0 - 1e-9, ..Default::default() }, false).unwrap().model;
    for (name, t) in &p.tensors {
        assert!(t.shape.iter().all(|&d| d > 0), "{name} {:?}", t.shape);
    }
    let x = image(1, 64, 64, 3);
    let y = run_once(&Cpu, &p, std::slice::from_ref(&x)).unwrap();
    let dir = scratch("extreme");
    let path = dir.join("p.onnx");
    let onnx =
        slimc::export::export_onnx(&p, &slimc::export::ExportOptions { imgsz: Some([64, 64]), ..Default::default() });
    std::fs::write(&path, onnx.unwrap().bytes).unwrap();
    let rows = slimc::commands::verify::verify_onnx(&path, &x, &y, 1e-4).unwrap();
    assert!(rows.iter().all(|r| r.ok), "{rows:?}");
}

#[test]
fn sweep_writes_table_csv_and_plot() {
    let dir = scratch("sweep");
    let model = fixture("checkpoints/yolo11p-trees/best.pt");
    let out = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["prune", model.to_str().unwrap(), "--sweep", "0.2:0.6:0.2", "--data", "datasets/trees/trees.yaml"])
        .args(["--project", dir.to_str().unwrap(), "--name", "s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ratio") && stdout.contains("mAP50-95"), "{stdout}");
    let csv = std::fs::read_to_string(dir.join("s/sweep.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(csv.lines().next().unwrap(), "ratio,parameters,gflops,ort_ms,map50,map50_95");
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["0", "0.2", "0.4", "0.6"]);
    // Each row's parameters are what `prune` gives at that ratio; the first is the unpruned model.
    let m = load_model(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    for r in &rows {
        let ratio: f64 = r[0].parse().unwrap();
        let want = if ratio == 0.0 {
            slimc::commands::info::model_info(&m, None).unwrap().parameters
        } else {
            prune(&m, PruneOptions { ratio, ..Default::default() }, false).unwrap().summary.parameters.1
        };
        assert_eq!(r[1].parse::<usize>().unwrap(), want, "ratio {ratio}");
        assert!(r[4].parse::<f64>().is_ok() && r[5].parse::<f64>().is_ok(), "{r:?}");
    }
    let png = std::fs::read(dir.join("s/sweep.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // -o does not apply to a sweep; a ratio and a budget together are refused.
    let both = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["prune", model.to_str().unwrap(), "--ratio", "0.3", "--target-gflops", "50%", "-o", "x.slim"])
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&both.stderr).contains("exactly one of"));
}
