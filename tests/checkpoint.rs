//! Ultralytics `.pt` checkpoints as users have them (tests/fixtures/checkpoints, made by
//! Ultralytics 8.3.253): each imports, reproduces the output Ultralytics computes from it, exports
//! to ONNX that tract and onnxruntime verify, and a model pruned in place keeps its widths and
//! the pruning invariant.

mod common;

use common::{fixture, rel_err, scratch};
use slimc::backend::{cpu::Cpu, run_once};
use slimc::export::{export_onnx, ExportOptions};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Model;
use slimc_passes::{PassContext, PassManager, Policy, PruneOptions};
use std::process::Command;

fn ckpt(rel: &str) -> String {
    fixture(&format!("checkpoints/{rel}")).display().to_string()
}

fn params(m: &Model) -> usize {
    m.graph
        .params
        .iter()
        .map(|&p| m.graph.value(p))
        .filter(|v| {
            matches!(v.def, slimc_ir::ValueDef::Param(slimc_ir::ParamKind::Weight | slimc_ir::ParamKind::Frozen))
        })
        .map(|v| m.tensors[&v.name].numel())
        .sum()
}

/// Loads `file`, runs it on the folder's input, checks it against `reference` (1e-5 relative to
/// the output's max) and checks its ONNX export with tract and onnxruntime.
fn reproduces(dir: &str, file: &str, reference: &str) -> Model {
    let model = load_model(&ckpt(&format!("{dir}/{file}")), &LoadOptions::default()).unwrap();
    let x = read_npy(&fixture(&format!("checkpoints/{dir}/input.npy"))).unwrap();
    let want = read_npy(&fixture(&format!("checkpoints/{dir}/{reference}"))).unwrap();
    let got = run_once(&Cpu, &model, std::slice::from_ref(&x)).unwrap();
    let err = rel_err(&got[0], &want);
    assert!(err <= 1e-5, "{file}: output off Ultralytics' by {err:.2e} (relative to max)");
    eprintln!("{file}: max abs diff to Ultralytics' output {err:.2e} of its max");
    let hw = [x.shape[2], x.shape[3]];
    let dir = scratch("ckpt-export");
    let path = dir.join(format!("{file}.onnx"));
    std::fs::write(&path, export_onnx(&model, &ExportOptions { imgsz: Some(hw), ..Default::default() }).unwrap().bytes)
        .unwrap();
    let rows = slimc::commands::verify::verify_onnx(&path, &x, &got, 1e-4).unwrap();
    assert!(rows.len() >= 2 && rows.iter().all(|r| r.ok), "{file}: {rows:?}");
    model
}

#[test]
fn trained_checkpoints_reproduce_ultralytics() {
    for file in ["best.pt", "last.pt"] {
        let m = reproduces("yolo11p-trees", file, "output-eval.npy");
        assert_eq!(m.meta.names, vec!["tree".to_string()]);
        assert_eq!(params(&m), 810_451);
        assert_eq!(m.meta.origin.get("version").map(String::as_str), Some("8.3.253"));
        assert!(m.meta.origin["train_args"].contains("\"imgsz\":64"), "{:?}", m.meta.origin);
    }
}

#[test]
fn mid_training_checkpoint_uses_its_ema() {
    let m = reproduces("yolo11p-trees", "last-epoch1.pt", "last-epoch1-output-eval.npy");
    assert_eq!(m.meta.origin.get("epoch").map(String::as_str), Some("0"));
    // The EMA after epoch 1 differs from best.pt's weights: the reference really tells them apart.
    let best = read_npy(&fixture("checkpoints/yolo11p-trees/output-eval.npy")).unwrap();
    let x = read_npy(&fixture("checkpoints/yolo11p-trees/input.npy")).unwrap();
    let got = run_once(&Cpu, &m, &[x]).unwrap();
    assert!(rel_err(&got[0], &best) > 1e-3);
}

#[test]
fn release_checkpoint_reproduces_ultralytics() {
    let m = reproduces("yolo11n-release", "yolo11n.pt", "output-eval.npy");
    assert_eq!(m.meta.names.len(), 80);
    assert_eq!(m.meta.names[79], "class79");
    assert_eq!(params(&m), 2_624_080);
}

#[test]
fn narrowed_checkpoint_keeps_its_widths_and_prunes() {
    let m = reproduces("yolo11p-trees", "narrowed.pt", "narrowed-output-eval.npy");
    assert_eq!(params(&m), 798_591);
    assert_eq!(m.tensors["model.2.m.0.cv1.conv.weight"].shape, vec![2, 8, 3, 3]);
    assert_eq!(m.tensors["model.19.m.0.cv2.conv.weight"].shape[1], 8);
    // The pruning invariant on the imported graph: pruned = original with the removed channels'
    // gamma and beta zeroed.
    let mut cx = PassContext {
        prune: PruneOptions { ratio: 0.4, policy: Policy::Groups, min_channels: 1, round_to: 1, ..Default::default() },
        ..Default::default()
    };
    let mut p = m.clone();
    PassManager::parse("group-channels,select-channels,propagate-masks,rewrite-widths")
        .unwrap()
        .run_with(&mut p, &mut cx)
        .unwrap();
    let removed = &cx.report.as_ref().unwrap().removed;
    assert!(!removed.is_empty());
    let mut z = m.clone();
    for (layer, c) in removed {
        for f in ["weight", "bias"] {
            z.tensors.get_mut(&format!("{layer}.{f}")).unwrap().f32s_mut().unwrap()[*c] = 0.0;
        }
    }
    let x = read_npy(&fixture("checkpoints/yolo11p-trees/input.npy")).unwrap();
    let want = run_once(&Cpu, &z, std::slice::from_ref(&x)).unwrap();
    let got = run_once(&Cpu, &p, std::slice::from_ref(&x)).unwrap();
    let err = rel_err(&got[0], &want[0]);
    assert!(err < 1e-5, "pruned narrowed.pt off by {err:.2e}");
    assert!(params(&p) < params(&m));
}

#[test]
fn bare_state_dict_loads_as_weights() {
    let opts = LoadOptions {
        nc: Some(1),
        weights: Some(fixture("checkpoints/yolo11p-trees/state_dict.pt")),
        ..Default::default()
    };
    let m = load_model(&fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(), &opts).unwrap();
    let x = read_npy(&fixture("checkpoints/yolo11p-trees/input.npy")).unwrap();
    let want = read_npy(&fixture("checkpoints/yolo11p-trees/output-eval.npy")).unwrap();
    let err = rel_err(&run_once(&Cpu, &m, &[x]).unwrap()[0], &want);
    assert!(err <= 1e-5, "state_dict.pt through --weights off by {err:.2e}");
    eprintln!("state_dict.pt through --weights: max abs diff {err:.2e} of the output's max");
}

#[test]
fn cli_runs_and_describes_a_checkpoint() {
    let dir = scratch("ckpt-cli");
    let out = dir.join("y.npy");
    let input = fixture("checkpoints/yolo11p-trees/input.npy");
    let run = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["run", &ckpt("yolo11p-trees/best.pt"), "--input", input.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let want = read_npy(&fixture("checkpoints/yolo11p-trees/output-eval.npy")).unwrap();
    let err = rel_err(&read_npy(&out).unwrap(), &want);
    assert!(err <= 1e-5, "slimc run best.pt off by {err:.2e}");

    let info = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["info", &ckpt("yolo11p-trees/best.pt"), "--json"])
        .output()
        .unwrap();
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(j["parameters"], 810_451);
    assert_eq!(j["nc"], 1);
    assert_eq!(j["origin"]["version"], "8.3.253");
    assert!(j["origin"]["date"].as_str().unwrap().starts_with("20"), "{}", j["origin"]);

    // import keeps the checkpoint's facts in the .slim file.
    let slim = dir.join("best.slim");
    let imp = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["import", &ckpt("yolo11p-trees/best.pt"), "-o", slim.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(imp.status.success(), "{}", String::from_utf8_lossy(&imp.stderr));
    let back = Model::load(&slim).unwrap();
    assert_eq!(back.meta.origin.get("version").map(String::as_str), Some("8.3.253"));
}

#[test]
fn training_from_a_checkpoint_of_another_class_count_transfers_the_rest() {
    let dir = scratch("ckpt-train");
    let out = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "train",
            &ckpt("yolo11n-release/yolo11n.pt"),
            "--data",
            "datasets/trees/trees.yaml",
            "--epochs",
            "1",
            "--imgsz",
            "64",
            "--batch",
            "16",
            "--project",
            dir.to_str().unwrap(),
            "--name",
            "t",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // yolo11n.pt has 80 classes, the trees dataset 1. Every tensor whose shape does not depend on
    // the class count moves; the Detect class branch is narrower at nc 1 (its width is
    // max(ch0, min(nc, 100)): 80 -> 64), so its tensors start fresh, as in Ultralytics (which
    // reports 448/499 here, counting BN's num_batches_tracked too).
    let line = err.lines().find(|l| l.starts_with("Transferred ")).unwrap_or_else(|| panic!("{err}"));
    let counts: Vec<usize> = line
        .trim_start_matches("Transferred ")
        .split(" items")
        .next()
        .unwrap()
        .split('/')
        .map(|n| n.parse().unwrap())
        .collect();
    let at = |nc| load_model("yolo11n.yaml", &LoadOptions { nc: Some(nc), ..Default::default() }).unwrap();
    let (one, eighty) = (at(1), at(80));
    let named = |m: &Model| {
        m.graph
            .params
            .iter()
            .map(|&p| m.graph.value(p))
            .filter(|v| !matches!(v.def, slimc_ir::ValueDef::Param(slimc_ir::ParamKind::Const)))
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };
    let changed: Vec<String> =
        named(&one).into_iter().filter(|n| one.tensors[n].shape != eighty.tensors[n].shape).collect();
    assert!(changed.iter().all(|n| n.starts_with("model.23.cv3.")), "{changed:?}");
    assert_eq!(counts, vec![named(&one).len() - changed.len(), named(&one).len()], "{line}");
    assert!(line.ends_with("yolo11n.pt"), "{line}");
    let m = Model::load(&dir.join("t/weights/last.slim")).unwrap();
    assert_eq!(m.meta.names, vec!["tree".to_string()]);
    assert_eq!(m.tensors["model.23.cv3.0.2.weight"].shape[0], 1);
}

#[test]
fn widths_the_graph_cannot_carry_are_named() {
    let spec =
        slimc::frontend::yaml::load_spec(&fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(), Some(1)).unwrap();
    let full = slimc::frontend::yolo::lower(&spec, [64, 64], 0, None).unwrap();
    let widths: std::collections::BTreeMap<String, Vec<usize>> =
        full.tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
    // The unchanged widths lower to the same graph.
    let same = slimc::frontend::yolo::lower(&spec, [64, 64], 0, Some(&widths)).unwrap();
    assert_eq!(same.graph, full.graph);
    let lower_with = |name: &str, shape: Vec<usize>| {
        let mut w = widths.clone();
        w.insert(name.to_string(), shape);
        slimc::frontend::yolo::lower(&spec, [64, 64], 0, Some(&w)).unwrap_err().to_string()
    };
    // A bottleneck whose cv2 no longer gives its input's width: the residual add cannot join them.
    let e = lower_with("model.2.m.0.cv2.conv.weight", vec![6, 4, 3, 3]);
    assert!(e.contains("model.2.m.0") && e.contains("residual add joins 8 and 6"), "{e}");
    // A C3k2 whose cv1 gives an odd width: the split no longer halves.
    let cv1 = widths["model.2.cv1.conv.weight"].clone();
    let e = lower_with("model.2.cv1.conv.weight", vec![cv1[0] - 1, cv1[1], 1, 1]);
    assert!(e.contains("model.2") && e.contains("no longer split in two halves"), "{e}");
    // A conv whose weight does not take its input's channels.
    let e = lower_with("model.1.conv.weight", vec![32, 5, 3, 3]);
    assert!(e.contains("model.1.conv") && e.contains("receives 8 channels"), "{e}");
    // A conv narrowed to nothing would leave an empty value behind.
    let e = lower_with("model.1.conv.weight", vec![0, 8, 3, 3]);
    assert!(e.contains("model.1.conv") && e.contains("[0, 8, 3, 3]"), "{e}");
}

/// Seeded mutations of a real checkpoint (its pickle bytes flipped, cut or duplicated) load or
/// fail with an error, never a panic.
#[test]
fn mutated_checkpoints_never_panic() {
    use rand::SeedableRng;
    let src = fixture("checkpoints/yolo11p-trees/best.pt");
    let entries = common::archive::entries(&std::fs::read(&src).unwrap());
    let pkl = entries.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap();
    let dir = scratch("ckpt-mutate");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut loaded, mut refused) = (0, 0);
    for case in 0..60 {
        let mut e = entries.clone();
        common::archive::damage(&mut e, pkl, case % 4, &mut rng);
        let path = dir.join(format!("m{case}.pt"));
        std::fs::write(&path, common::archive::archive(&e)).unwrap();
        let p = path.display().to_string();
        let r = std::panic::catch_unwind(|| load_model(&p, &LoadOptions::default()).map(|m| m.check().is_ok()));
        match r {
            Ok(Ok(_)) => loaded += 1,
            Ok(Err(err)) => {
                assert!(err.to_string().contains(&format!("m{case}.pt")), "case {case}: error without the file: {err}");
                refused += 1
            }
            Err(_) => panic!("case {case}: the importer panicked"),
        }
    }
    assert!(refused > 0 && loaded + refused == 60);
}
