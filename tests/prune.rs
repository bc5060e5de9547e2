//! The pruning passes' invariant on yolo11n, s and m (random weights, non-trivial BN state), both
//! policies, ratios 0.1–0.7: the rewritten graph computes what the original computes with the
//! removed channels' BN gamma and beta set to zero, and it exports and verifies with tract and
//! onnxruntime. Plus the seed policy's untouched BNs and the ratio checks.

mod common;

use common::{image, randomize_bn, rel_err, scratch, yaml_model};
use slimc::backend::{cpu::Cpu, run_once};
use slimc::export::{export_onnx, ExportOptions};
use slimc_ir::Model;
use slimc_passes::{seed_unprunable, PassContext, PassManager, Policy, PruneOptions};

const PIPELINE: &str = "group-channels,select-channels,propagate-masks,rewrite-widths";

fn prune(m: &Model, ratio: f64, policy: Policy) -> (Model, PassContext) {
    let mut cx = PassContext { prune: PruneOptions { ratio, policy, ..Default::default() }, ..Default::default() };
    let mut p = m.clone();
    PassManager::parse(PIPELINE).unwrap().run_with(&mut p, &mut cx).unwrap();
    (p, cx)
}

/// The original with every removed channel's BN gamma and beta zeroed.
fn zeroed(m: &Model, cx: &PassContext) -> Model {
    let mut z = m.clone();
    for (layer, c) in &cx.report.as_ref().unwrap().removed {
        for p in ["weight", "bias"] {
            z.tensors.get_mut(&format!("{layer}.{p}")).unwrap().f32s_mut().unwrap()[*c] = 0.0;
        }
    }
    z
}

fn check_scale(yaml: &str, seed: u64) {
    check_ratios(yaml, seed, &[0.1, 0.3, 0.5, 0.7]);
}

fn check_ratios(yaml: &str, seed: u64, ratios: &[f64]) {
    let mut m = yaml_model(yaml, Some(3), 64);
    randomize_bn(&mut m, seed);
    let x = image(1, 64, 64, seed);
    let params = |m: &Model| m.graph.params.iter().map(|&p| m.tensors[&m.graph.value(p).name].numel()).sum::<usize>();
    let dir = scratch("prune");
    for policy in [Policy::Seed, Policy::Groups] {
        for &ratio in ratios {
            let (p, cx) = prune(&m, ratio, policy);
            let removed = cx.report.as_ref().unwrap().removed.len();
            assert!(removed > 0, "{yaml} {policy:?} {ratio}: nothing removed");
            assert!(params(&p) < params(&m));
            let want = run_once(&Cpu, &zeroed(&m, &cx), std::slice::from_ref(&x)).unwrap();
            let got = run_once(&Cpu, &p, std::slice::from_ref(&x)).unwrap();
            let err = rel_err(&got[0], &want[0]);
            assert!(err < 1e-5, "{yaml} {policy:?} ratio {ratio}: rewritten graph off by {err:.2e}");
            let path = dir.join(format!("{yaml}-{policy:?}-{ratio}.onnx"));
            std::fs::write(
                &path,
                export_onnx(&p, &ExportOptions { imgsz: Some([64, 64]), ..Default::default() }).unwrap().bytes,
            )
            .unwrap();
            let rows = slimc::commands::verify::verify_onnx(&path, &x, &got, 1e-4).unwrap();
            assert!(rows.iter().all(|r| r.ok), "{yaml} {policy:?} {ratio}: {rows:?}");
        }
    }
}

#[test]
fn invariant_holds_for_yolo11n() {
    check_scale("yolo11n.yaml", 1);
}

#[test]
fn invariant_holds_for_yolo11s() {
    check_scale("yolo11s.yaml", 2);
}

#[test]
fn invariant_holds_for_yolo11m() {
    check_scale("yolo11m.yaml", 3);
}

#[test]
fn invariant_holds_for_yolov8n_c2f() {
    check_ratios("yolov8n.yaml", 4, &[0.3, 0.5, 0.7]);
}

#[test]
fn invariant_holds_for_yolov5nu_c3() {
    check_ratios("yolov5nu.yaml", 5, &[0.3, 0.5, 0.7]);
}

#[test]
fn invariant_holds_for_yolo12n_area_attention() {
    check_ratios("yolo12n.yaml", 6, &[0.3, 0.5, 0.7]);
}

#[test]
fn invariant_holds_for_yolov8n_p2_and_p6() {
    check_ratios("yolov8n-p2.yaml", 7, &[0.5]);
    check_ratios("yolov8n-p6.yaml", 8, &[0.5]);
}

/// YOLO12 l carries A2C2f's learnt residual scale `gamma` (a per-channel multiply around the
/// block); pruning keeps the invariant there too.
#[test]
fn invariant_holds_for_yolo12l_with_gamma() {
    check_ratios("yolo12l.yaml", 9, &[0.5]);
}

/// Kept widths are multiples of `round_to` wherever a layer was narrowed, in every family.
#[test]
fn widths_round_as_asked_in_every_family() {
    for yaml in ["yolov8n.yaml", "yolov5nu.yaml", "yolo12n.yaml"] {
        let mut m = yaml_model(yaml, Some(3), 64);
        randomize_bn(&mut m, 10);
        let mut cx =
            PassContext { prune: PruneOptions { ratio: 0.5, round_to: 8, ..Default::default() }, ..Default::default() };
        let mut p = m.clone();
        PassManager::parse(PIPELINE).unwrap().run_with(&mut p, &mut cx).unwrap();
        let mut narrowed = 0;
        for (name, t) in &p.tensors {
            if name.ends_with(".bn.weight") && t.numel() != m.tensors[name].numel() {
                narrowed += 1;
                assert_eq!(t.numel() % 8, 0, "{yaml}: {name} keeps {} channels", t.numel());
            }
        }
        assert!(narrowed > 0, "{yaml}: nothing narrowed");
    }
}

/// The seed recipe's unprunable BNs (its §1.3) outside the residual pairs: 16/19/22 cv2 (they
/// feed Detect's DWConv), attention, PSA ffn.1, C2PSA cv1 and Detect's class branch.
fn seed_common(v: &mut Vec<String>) {
    for l in [16, 19, 22] {
        v.push(format!("model.{l}.cv2.bn"));
    }
    for p in ["qkv", "pe", "proj"] {
        v.push(format!("model.10.m.0.attn.{p}.bn"));
    }
    v.push("model.10.m.0.ffn.1.bn".into());
    v.push("model.10.cv1.bn".into());
    for i in 0..3 {
        for s in ["0.0", "0.1", "1.0", "1.1"] {
            v.push(format!("model.23.cv3.{i}.{s}.bn"));
        }
    }
    v.sort();
}

/// For scale n: the residual pairs of every C3k2 bottleneck (C3k2 cv1 and m.0.cv2) and of the
/// C3k bottlenecks in layers 6, 8, 22 (C3k cv1 and m.j.cv2), plus the common ones.
fn seed_list_n() -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for l in [2, 4, 13, 16, 19] {
        v.push(format!("model.{l}.cv1.bn"));
        v.push(format!("model.{l}.m.0.cv2.bn"));
    }
    for l in [6, 8, 22] {
        v.push(format!("model.{l}.m.0.cv1.bn"));
        for j in 0..2 {
            v.push(format!("model.{l}.m.0.m.{j}.cv2.bn"));
        }
    }
    seed_common(&mut v);
    v
}

#[test]
fn seed_policy_keeps_exactly_the_seed_recipes_unprunable_bns() {
    let m = yaml_model("yolo11n.yaml", None, 64);
    let got: Vec<String> = seed_unprunable(&m.graph).into_iter().collect();
    assert_eq!(got, seed_list_n());
    // yolo11m: every C3k2 holds C3k (two bottlenecks each), so the residual pairs are inside C3k.
    let m = yaml_model("yolo11m.yaml", None, 64);
    let got: Vec<String> = seed_unprunable(&m.graph).into_iter().collect();
    let mut want: Vec<String> = vec![];
    for l in [2, 4, 6, 8, 13, 16, 19, 22] {
        want.push(format!("model.{l}.m.0.cv1.bn"));
        for j in 0..2 {
            want.push(format!("model.{l}.m.0.m.{j}.cv2.bn"));
        }
    }
    seed_common(&mut want);
    assert_eq!(got, want);
    // And pruning under the seed policy leaves all of them whole.
    let mut m = yaml_model("yolo11n.yaml", None, 64);
    randomize_bn(&mut m, 5);
    let (_, cx) = prune(&m, 0.5, Policy::Seed);
    let report = cx.report.unwrap();
    for (layer, before, after) in &report.layers {
        if seed_list_n().contains(layer) {
            assert_eq!(before, after, "{layer} is unprunable under the seed policy");
        }
    }
}

#[test]
fn every_scale_prunes_under_the_seed_policy() {
    for yaml in ["yolo11l.yaml", "yolo11x.yaml"] {
        let mut m = yaml_model(yaml, Some(2), 64);
        randomize_bn(&mut m, 7);
        let (p, cx) = prune(&m, 0.3, Policy::Seed);
        assert!(!cx.report.unwrap().removed.is_empty(), "{yaml}");
        run_once(&Cpu, &p, &[image(1, 64, 64, 1)]).unwrap();
    }
}

#[test]
fn floor_clamps_and_bad_ratios_are_errors() {
    let mut m = yaml_model("yolo11n.yaml", None, 64);
    randomize_bn(&mut m, 9);
    let mut cx = PassContext { prune: PruneOptions { ratio: 0.95, ..Default::default() }, ..Default::default() };
    let mut p = m.clone();
    PassManager::parse("select-channels").unwrap().run_with(&mut p, &mut cx).unwrap();
    let sel = cx.selection.as_ref().unwrap();
    assert!(sel.clamped.iter().any(|c| c.contains("--min-channels 8")), "{:?}", sel.clamped);
    PassManager::parse("rewrite-widths").unwrap().run_with(&mut p, &mut cx).unwrap();
    for (layer, before, after) in &cx.report.unwrap().layers {
        assert!(*after >= 8.min(*before), "{layer}: {after} of {before}");
    }
    for ratio in [0.0, 1.0, -0.2, 1.5] {
        let mut cx = PassContext { prune: PruneOptions { ratio, ..Default::default() }, ..Default::default() };
        let err = PassManager::parse(PIPELINE).unwrap().run_with(&mut m.clone(), &mut cx).unwrap_err().to_string();
        assert!(err.contains("outside (0, 1)"), "{err}");
    }
}

/// YOLOv8-Prune's exclusions found by structure alone: the residual pairs of the backbone's
/// shortcut bottlenecks (C2f/C3 `cv1` and each `m.j.cv2`); the neck's blocks have no shortcut
/// and the head's last convs have no BN. YOLOv5u's C3 blocks the same way.
#[test]
fn seed_policy_finds_the_v8_and_v5_residual_pairs_by_structure() {
    for (yaml, repeats) in [("yolov8n.yaml", [1, 2, 2, 1]), ("yolov5nu.yaml", [1, 2, 3, 1])] {
        let m = yaml_model(yaml, None, 64);
        let mut want: Vec<String> = vec![];
        for (l, n) in [2, 4, 6, 8].into_iter().zip(repeats) {
            want.push(format!("model.{l}.cv1.bn"));
            want.extend((0..n).map(|j| format!("model.{l}.m.{j}.cv2.bn")));
        }
        want.sort();
        let got: Vec<String> = seed_unprunable(&m.graph).into_iter().collect();
        assert_eq!(got, want, "{yaml}");
    }
}
