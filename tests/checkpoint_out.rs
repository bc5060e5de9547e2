//! Ultralytics checkpoints out (`slimc export --format pt`, `slimc prune -o x.pt`): what slimc
//! writes reads back through slimc's own checkpoint reader as the model it wrote — every tensor
//! bit-equal in fp32, rounded to half in fp16, the same graph, classes and strides — still
//! reproduces Ultralytics' output on the fixtures, keeps a pruned model's widths, and bad
//! requests fail with one line and leave nothing behind. (`benches/pt_roundtrip.sh` checks the
//! files in Ultralytics itself.)

mod common;

use common::{fixture, rel_err, scratch};
use slimc::backend::{cpu::Cpu, run_once};
use slimc::export::pt::{save_pt, write_pt, PtOptions};
use slimc::io::read_npy;
use slimc::load::{load_model, LoadOptions};
use slimc_ir::{print_graph, Model, TensorData};
use slimc_passes::{Policy, PruneOptions};
use std::path::Path;
use std::process::Command;

fn load(path: &str) -> Model {
    load_model(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{path}: {e:#}"))
}

fn ckpt(rel: &str) -> String {
    fixture(&format!("checkpoints/{rel}")).display().to_string()
}

/// Writes `m`, reads it back, and checks what came back against what went in: the graph as
/// text, names, strides, and every tensor through `same` (original, read back).
fn round_trip(m: &Model, opts: PtOptions, file: &Path, same: impl Fn(&str, f32, f32) -> bool) -> Model {
    save_pt(m, file, opts).unwrap();
    let back = load(file.to_str().unwrap());
    assert_eq!(print_graph(&back.graph), print_graph(&m.graph), "{}: the graph read back differs", file.display());
    assert_eq!(back.meta.names, m.meta.names);
    assert_eq!(back.meta.strides, m.meta.strides);
    assert_eq!(back.tensors.keys().collect::<Vec<_>>(), m.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &m.tensors {
        let b = &back.tensors[name];
        assert_eq!(b.shape, t.shape, "{name}");
        match (&t.data, &b.data) {
            (TensorData::F32(x), TensorData::F32(y)) => {
                for (p, q) in x.iter().zip(y) {
                    assert!(same(name, *p, *q), "{name}: wrote {p}, read back {q}");
                }
            }
            (x, y) => assert_eq!(x, y, "{name}"),
        }
    }
    back
}

fn bit_equal(_: &str, a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits()
}

#[test]
fn fp32_checkpoints_read_back_bit_equal_and_reproduce_ultralytics() {
    let dir = scratch("pt-fp32");
    for (folder, file) in [("yolo11p-trees", "best.pt"), ("yolo11n-release", "yolo11n.pt")] {
        let m = load(&ckpt(&format!("{folder}/{file}")));
        let back = round_trip(&m, PtOptions { fp32: true }, &dir.join(file), bit_equal);
        let x = read_npy(&fixture(&format!("checkpoints/{folder}/input.npy"))).unwrap();
        let want = read_npy(&fixture(&format!("checkpoints/{folder}/output-eval.npy"))).unwrap();
        let got = run_once(&Cpu, &back, std::slice::from_ref(&x)).unwrap();
        let err = rel_err(&got[0], &want);
        assert!(err <= 1e-5, "{file} written and read back: off Ultralytics' output by {err:.2e}");
    }
    // A model from YAML, at another class count.
    let m = load_model("yolo11n.yaml", &LoadOptions { nc: Some(3), ..Default::default() }).unwrap();
    round_trip(&m, PtOptions { fp32: true }, &dir.join("yolo11n-nc3.pt"), bit_equal);
}

/// The other families (C2f, C3, C2, the legacy Detect head, A2C2f with its area attention and,
/// at scale l, its `gamma`) write and read back bit-equal, and so do they pruned with even
/// halves; the tiny fixtures' models reproduce Ultralytics' output after the round trip.
#[test]
fn every_family_reads_back_bit_equal_pruned_or_not() {
    let dir = scratch("pt-families");
    for (name, folder) in [("yolov8p", "yolov8p-nc2"), ("yolov5p", "yolov5p-nc1"), ("yolo12p", "yolo12p-nc1")] {
        let opts = LoadOptions { weights: Some(fixture(&format!("{folder}/model.safetensors"))), ..Default::default() };
        let m = load_model(&fixture(&format!("{folder}/{name}.yaml")).display().to_string(), &opts).unwrap();
        let back = round_trip(&m, PtOptions { fp32: true }, &dir.join(format!("{name}.pt")), bit_equal);
        let x = read_npy(&fixture(&format!("{folder}/input.npy"))).unwrap();
        let want = read_npy(&fixture(&format!("{folder}/output-eval.npy"))).unwrap();
        let err = rel_err(&run_once(&Cpu, &back, std::slice::from_ref(&x)).unwrap()[0], &want);
        assert!(err <= 1e-5, "{name} written and read back: off Ultralytics' output by {err:.2e}");
    }
    for yaml in ["yolov8n.yaml", "yolov5nu.yaml", "yolo12n.yaml", "yolov8n-p6.yaml", "yolo12l.yaml"] {
        let m = load_model(yaml, &LoadOptions { nc: Some(2), imgsz: Some([128, 128]), ..Default::default() }).unwrap();
        round_trip(&m, PtOptions { fp32: true }, &dir.join(yaml.replace("yaml", "pt")), bit_equal);
        let opts = PruneOptions { ratio: 0.5, policy: Policy::Groups, even_splits: true, ..Default::default() };
        let p = slimc::commands::prune::prune(&m, opts, false).unwrap().model;
        assert!(p.tensors.values().map(|t| t.numel()).sum::<usize>() < m.tensors.values().map(|t| t.numel()).sum());
        round_trip(&p, PtOptions { fp32: true }, &dir.join(yaml.replace(".yaml", "-pruned.pt")), bit_equal);
    }
}

#[test]
fn fp16_checkpoints_hold_each_tensor_rounded_to_half() {
    let dir = scratch("pt-fp16");
    let m = load(&ckpt("yolo11p-trees/best.pt"));
    let half = |_: &str, a: f32, b: f32| {
        // Every value is the nearest half (slimc's own constants, which the checkpoint does not
        // hold, come back as they were).
        a.to_bits() == b.to_bits() || half::f16::from_f32(a).to_f32().to_bits() == b.to_bits()
    };
    round_trip(&m, PtOptions::default(), &dir.join("best16.pt"), half);
    let bytes32 = write_pt(&m, PtOptions { fp32: true }).unwrap().len();
    let bytes16 = std::fs::metadata(dir.join("best16.pt")).unwrap().len() as usize;
    assert!(bytes16 * 10 < bytes32 * 6, "fp16 {bytes16} bytes vs fp32 {bytes32}");
}

#[test]
fn a_pruned_model_keeps_its_widths_only_with_even_halves() {
    let dir = scratch("pt-pruned");
    let m = load(&ckpt("yolo11n-release/yolo11n.pt"));
    let opts = PruneOptions { ratio: 0.5, policy: Policy::Groups, ..Default::default() };
    // Uneven C3k2 halves have no stock Ultralytics form: a one-line error naming the layer.
    let uneven = slimc::commands::prune::prune(&m, opts.clone(), false).unwrap().model;
    let err = format!("{:#}", write_pt(&uneven, PtOptions::default()).unwrap_err());
    assert!(err.contains("model.") && err.contains("halves") && err.contains("--even-splits"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    for policy in [Policy::Seed, Policy::Groups] {
        let p = slimc::commands::prune::prune(&m, PruneOptions { policy, even_splits: true, ..opts.clone() }, false)
            .unwrap();
        let narrowed = p.model.tensors["model.2.cv1.conv.weight"].shape[0]
            < m.tensors["model.2.cv1.conv.weight"].shape[0]
            || p.model.tensors.values().map(|t| t.numel()).sum::<usize>() < m.tensors.values().map(|t| t.numel()).sum();
        assert!(narrowed, "{policy:?}: nothing was pruned");
        let back = round_trip(&p.model, PtOptions { fp32: true }, &dir.join(format!("{policy:?}.pt")), bit_equal);
        let x = read_npy(&fixture("checkpoints/yolo11n-release/input.npy")).unwrap();
        let want = run_once(&Cpu, &p.model, std::slice::from_ref(&x)).unwrap();
        let got = run_once(&Cpu, &back, std::slice::from_ref(&x)).unwrap();
        assert_eq!(rel_err(&got[0], &want[0]), 0.0, "{policy:?}");
    }
}

#[test]
fn bad_requests_fail_in_one_line_and_leave_nothing() {
    let dir = scratch("pt-bad");
    let mut m = load(&ckpt("yolo11p-trees/best.pt"));
    // Non-finite weights.
    if let TensorData::F32(v) = &mut m.tensors.get_mut("model.0.conv.weight").unwrap().data {
        v[3] = f32::NAN;
    }
    let out = dir.join("nan.pt");
    let err = format!("{:#}", save_pt(&m, &out, PtOptions::default()).unwrap_err());
    assert!(err.contains("model.0.conv.weight") && err.contains("non-finite"), "{err}");
    assert!(!out.exists());
    // A folder that does not exist.
    let m = load(&ckpt("yolo11p-trees/best.pt"));
    let out = dir.join("missing/sub/x.pt");
    let err = format!("{:#}", save_pt(&m, &out, PtOptions::default()).unwrap_err());
    assert!(err.contains("missing/sub/x.pt"), "{err}");
    assert!(!dir.join("missing").exists());
    // A model with no Ultralytics architecture (an ONNX import).
    let onnx = dir.join("m.onnx");
    std::fs::write(&onnx, slimc::export::export_onnx(&m, &Default::default()).unwrap().bytes).unwrap();
    let imported = load(onnx.to_str().unwrap());
    let err = format!("{:#}", write_pt(&imported, PtOptions::default()).unwrap_err());
    assert!(err.contains("no Ultralytics architecture"), "{err}");
    // Writing over an input.
    let input = dir.join("in.pt");
    std::fs::copy(ckpt("yolo11p-trees/best.pt"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["export", input.to_str().unwrap(), "-o", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("also an input") && stderr.trim().lines().count() == 1, "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn the_cli_writes_checkpoints_by_extension_and_format() {
    let dir = scratch("pt-cli");
    let out = dir.join("y.pt");
    let run = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["export", "yolo11n.yaml", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("Ultralytics checkpoint, fp16"));
    // The archive torch.load reads.
    let zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    for want in ["archive/data.pkl", "archive/version", "archive/byteorder", "archive/data/0"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    let pruned = dir.join("prune.pt");
    let run = Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["prune", &ckpt("yolo11n-release/yolo11n.pt"), "--ratio", "0.5", "-o", pruned.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(load(pruned.to_str().unwrap()).tensors.values().map(|t| t.numel()).sum::<usize>() < 2_600_000);
}

#[test]
fn a_checkpoint_ultralytics_fine_tuned_from_ours_keeps_the_widths_and_reads_back() {
    // benches/pt_roundtrip.sh (FIXTURE=1): slimc pruned yolo11p to pruned-even.pt, Ultralytics
    // fine-tuned it one epoch through a trainer that keeps the model and saved its output.
    let ours = load(&ckpt("yolo11p-trees/pruned-even.pt"));
    let tuned = load(&ckpt("yolo11p-trees/pruned-even-finetuned.pt"));
    let shapes = |m: &Model| m.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect::<Vec<_>>();
    assert_eq!(shapes(&tuned), shapes(&ours), "Ultralytics' fine-tuning changed the widths");
    let original = load(&ckpt("yolo11p-trees/best.pt"));
    assert!(
        ours.tensors.values().map(|t| t.numel()).sum::<usize>() * 10
            < original.tensors.values().map(|t| t.numel()).sum::<usize>() * 7
    );
    let x = read_npy(&fixture("checkpoints/yolo11p-trees/input.npy")).unwrap();
    let want = read_npy(&fixture("checkpoints/yolo11p-trees/pruned-even-finetuned-output-eval.npy")).unwrap();
    let got = run_once(&Cpu, &tuned, std::slice::from_ref(&x)).unwrap();
    let err = rel_err(&got[0], &want);
    assert!(err <= 1e-5, "slimc's output on Ultralytics' fine-tuned checkpoint is off by {err:.2e}");
}
