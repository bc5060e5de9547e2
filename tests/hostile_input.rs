//! Hostile input, class by class: every reader and command answers a malformed, oversized or
//! inconsistent file with a one-line error naming the file and the culprit (exit 1), or a
//! counted warning where skipping is right; never a panic, an abort or a hang.

mod common;
use common::{dataset, fails, scratch, write};
use onnx_protobuf::{AttributeProto, Message, ModelProto, NodeProto, TensorProto};
use slimc_ir::{Anchors, BatchNorm};
use slimc_ir::{Model, Op};
use std::path::Path;
use std::process::Command;

fn slimc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slimc")).args(args).output().unwrap()
}

// ---------- .npy ----------

/// An .npy file: magic, version, header (padded as NumPy pads it) and `data`.
fn npy(version: u8, header: &str, len_override: Option<u32>, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    match version {
        1 => out.extend((h.len() as u16).to_le_bytes()),
        _ => out.extend(len_override.unwrap_or(h.len() as u32).to_le_bytes()),
    }
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

#[test]
fn npy_headers_are_checked_against_the_file() {
    let dir = scratch("hostile-npy");
    let huge = write(
        &dir,
        "huge.npy",
        &npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 4294967296, 4294967296), }", None, &[]),
    );
    let e = fails(&["run", "yolo11n.yaml", "--input", &huge, "-o", &dir.join("y.npy").display().to_string()]);
    assert!(e.contains("huge.npy") && e.contains("too large"), "{e}");
    let short = write(
        &dir,
        "short.npy",
        &npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 64, 64), }", None, &[0; 100]),
    );
    let e = fails(&["run", "yolo11n.yaml", "--input", &short, "-o", &dir.join("y.npy").display().to_string()]);
    assert!(e.contains("short.npy") && e.contains("truncated"), "{e}");
    let v2 = write(
        &dir,
        "v2.npy",
        &npy(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", Some(u32::MAX), &[0; 4]),
    );
    let e = fails(&["run", "yolo11n.yaml", "--input", &v2, "-o", &dir.join("y.npy").display().to_string()]);
    assert!(e.contains("v2.npy") && e.contains("header declares 4294967295 bytes"), "{e}");
}

// ---------- model YAML ----------

const HEAD: &str = "  - [[-1], 1, Detect, [nc]]\n";

fn yaml_error(dir: &Path, name: &str, text: &str) -> String {
    let p = write(dir, name, text.as_bytes());
    fails(&["info", &p])
}

#[test]
fn model_yaml_limits_and_shapes() {
    let dir = scratch("hostile-yaml");
    let conv = |args: &str| format!("nc: 1\nbackbone:\n  - [-1, 1, Conv, [{args}]]\nhead:\n{HEAD}");
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty-from.yaml", format!("nc: 1\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [[], 1, Concat, [1]]\nhead:\n{HEAD}"), "`from` lists no layer"),
        ("inf-width.yaml", format!("nc: 1\nwidth_multiple: .inf\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n{HEAD}"), "width multiple inf"),
        ("wide.yaml", conv("1000000000, 3, 2"), "channels 1000000000 is outside"),
        ("multiple.yaml", format!("nc: 1\nwidth_multiple: 100000\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n{HEAD}"), "width multiple 100000"),
        ("kernel.yaml", conv("16, 100001, 2"), "kernel 100001 is outside"),
        ("negative.yaml", conv("-64, 3, 2"), "channels -64 is outside"),
        ("classes.yaml", format!("nc: 100000000\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n{HEAD}"), "nc 100000000 is outside"),
        ("repeats.yaml", format!("nc: 1\nbackbone:\n  - [-1, 1000000000, C3k2, [16]]\nhead:\n{HEAD}"), "repeats must be an integer in 1..=100"),
        ("alias.yaml", "a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nnc: 1\n".into(), "aliases"),
    ];
    for (name, text, want) in cases {
        let e = yaml_error(&dir, name, &text);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
}

// ---------- .slim ----------

fn saved(dir: &Path, name: &str, m: &Model) -> String {
    write(dir, name, &m.to_bytes())
}

/// The model file's protobuf with its first tensor record appended once more.
fn duplicate_first_tensor(bytes: &[u8]) -> Vec<u8> {
    let varint = |b: &[u8], mut i: usize| -> (u64, usize) {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            v |= ((b[i] & 0x7f) as u64) << shift;
            i += 1;
            if b[i - 1] & 0x80 == 0 {
                return (v, i);
            }
            shift += 7;
        }
    };
    let (magic, msg) = bytes.split_at(8);
    let mut i = 0;
    while i < msg.len() {
        let (key, j) = varint(msg, i);
        assert_eq!(key & 7, 2, "length-delimited fields only");
        let (len, k) = varint(msg, j);
        if key >> 3 == 2 {
            let mut out = [magic, msg].concat();
            out.extend_from_slice(&msg[i..k + len as usize]);
            return out;
        }
        i = k + len as usize;
    }
    panic!("no tensor record");
}

#[test]
fn slim_files_pass_the_verifier_or_are_refused() {
    let dir = scratch("hostile-slim");
    let base = common::yaml_model("yolo11n.yaml", Some(1), 64);
    let edit = |f: &dyn Fn(&mut Model)| {
        let mut m = base.clone();
        f(&mut m);
        m
    };
    let cases: Vec<(&str, Model, &str)> = vec![
        (
            "eps.slim",
            edit(&|m| {
                let n = m.graph.nodes.iter_mut().find(|n| matches!(n.op, Op::BatchNorm(_))).unwrap();
                n.op = Op::BatchNorm(BatchNorm { eps: f32::NAN, momentum: 0.03 });
            }),
            "eps NaN must be positive and finite",
        ),
        (
            "anchors.slim",
            edit(&|m| {
                let n = m.graph.nodes.iter_mut().find(|n| matches!(n.op, Op::Anchors(_))).unwrap();
                if let Op::Anchors(Anchors { strides, .. }) = &mut n.op {
                    strides[0] = 0.0;
                }
            }),
            "anchor strides",
        ),
        (
            "dilation.slim",
            edit(&|m| {
                let n = m.graph.nodes.iter_mut().find(|n| matches!(n.op, Op::Conv2d(_))).unwrap();
                if let Op::Conv2d(c) = &mut n.op {
                    c.dilation = [0, 0];
                }
            }),
            "dilation [0, 0] must be at least 1",
        ),
        (
            "names.slim",
            edit(&|m| m.meta.names = (0..5).map(|i| format!("c{i}")).collect()),
            "5 class names for a Detect head of 1 classes",
        ),
    ];
    for (name, m, want) in cases {
        let e = fails(&["info", &saved(&dir, name, &m)]);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    let dup = write(&dir, "dup.slim", &duplicate_first_tensor(&base.to_bytes()));
    let e = fails(&["info", &dup]);
    assert!(e.contains("dup.slim") && e.contains("stored twice"), "{e}");
}

// ---------- ONNX ----------

fn fixture_onnx() -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(common::fixture("yolo11p-nc2/model-bn.onnx")).unwrap()).unwrap()
}

fn constant_i64(out: &str, dims: &[i64], v: &[i64]) -> NodeProto {
    let t = TensorProto { dims: dims.to_vec(), data_type: 7, int64_data: v.to_vec(), ..Default::default() };
    let a = AttributeProto {
        name: "value".into(),
        type_: onnx_protobuf::attribute_proto::AttributeType::TENSOR.into(),
        t: Some(t).into(),
        ..Default::default()
    };
    NodeProto { op_type: "Constant".into(), output: vec![out.into()], attribute: vec![a], ..Default::default() }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: format!("bad_{op}"),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: onnx_protobuf::attribute_proto::AttributeType::INTS.into(),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// The fixture with `nodes` run first (on its input `images` or their own constants).
fn with_nodes(nodes: Vec<NodeProto>) -> ModelProto {
    let mut m = fixture_onnx();
    let g = m.graph.as_mut().unwrap();
    for (i, n) in nodes.into_iter().enumerate() {
        g.node.insert(i, n);
    }
    m
}

/// The fixture with its first node of type `op` edited.
fn with_edit(op: &str, f: impl Fn(&mut NodeProto)) -> ModelProto {
    let mut m = fixture_onnx();
    f(m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == op).unwrap());
    m
}

#[test]
fn onnx_nodes_are_checked_before_they_are_read() {
    let dir = scratch("hostile-onnx");
    let set = |n: &mut NodeProto, a: AttributeProto| {
        n.attribute.retain(|x| x.name != a.name);
        n.attribute.push(a);
    };
    let cases: Vec<(&str, ModelProto, &str)> = vec![
        ("identity.onnx", with_nodes(vec![node("Identity", &[], &["j"])]), "Identity needs 1 input"),
        ("concat.onnx", with_nodes(vec![node("Concat", &["images"], &[])]), "Concat has no output"),
        ("split.onnx", with_nodes(vec![node("Split", &[""], &["a", "b"])]), "Split needs 1 input"),
        ("shape.onnx", with_nodes(vec![node("Shape", &[], &["s"])]), "Shape needs 1 input"),
        (
            "expand.onnx",
            with_nodes(vec![
                constant_i64("c", &[2], &[2, 3]),
                constant_i64("t", &[2], &[4, 5]),
                node("Expand", &["c", "t"], &["e"]),
            ]),
            "does not broadcast",
        ),
        (
            "div.onnx",
            with_nodes(vec![
                constant_i64("a", &[1], &[i64::MIN]),
                constant_i64("b", &[1], &[-1]),
                node("Div", &["a", "b"], &["q"]),
            ]),
            "overflows",
        ),
        (
            "squeeze.onnx",
            with_nodes(vec![
                constant_i64("a", &[2, 3], &[1, 2, 3, 4, 5, 6]),
                constant_i64("ax", &[1], &[0]),
                node("Squeeze", &["a", "ax"], &["q"]),
            ]),
            "Squeeze of axis 0, which has size 2",
        ),
        (
            "fill.onnx",
            with_nodes(vec![constant_i64("s", &[1], &[1 << 40]), node("ConstantOfShape", &["s"], &["f"])]),
            "too large",
        ),
        (
            "wrap.onnx",
            with_nodes(vec![constant_i64("s", &[2], &[1 << 32, 1 << 32]), node("ConstantOfShape", &["s"], &["f"])]),
            "too large",
        ),
        (
            "range.onnx",
            with_nodes(vec![
                constant_i64("a", &[], &[0]),
                constant_i64("b", &[], &[i64::MAX]),
                constant_i64("d", &[], &[1]),
                node("Range", &["a", "b", "d"], &["r"]),
            ]),
            "elements, over",
        ),
        (
            "pads.onnx",
            with_edit("Conv", |n| set(n, ints("pads", &[1 << 40, 1 << 40, 1 << 40, 1 << 40]))),
            "cannot reshape",
        ),
        (
            "group.onnx",
            with_edit("Conv", |n| {
                set(
                    n,
                    AttributeProto {
                        name: "group".into(),
                        type_: onnx_protobuf::attribute_proto::AttributeType::INT.into(),
                        i: 0,
                        ..Default::default()
                    },
                )
            }),
            "groups",
        ),
        ("dilation.onnx", with_edit("Conv", |n| set(n, ints("dilations", &[0, 0]))), "dilation"),
        ("pool.onnx", with_edit("MaxPool", |n| set(n, ints("kernel_shape", &[0, 0]))), "must be at least 1"),
    ];
    for (name, m, want) in cases {
        let p = write(&dir, name, &m.write_to_bytes().unwrap());
        let e = fails(&["info", &p]);
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    // Resize by a million: refused at import.
    let mut m = fixture_onnx();
    let g = m.graph.as_mut().unwrap();
    let r = g.node.iter_mut().find(|n| n.op_type == "Resize").unwrap().clone();
    let scales = TensorProto {
        name: "huge_scales".into(),
        dims: vec![4],
        data_type: 1,
        float_data: vec![1.0, 1.0, 1e6, 1e6],
        ..Default::default()
    };
    g.initializer.push(scales);
    let mut r2 = r.clone();
    r2.input = vec![r.input[0].clone(), String::new(), "huge_scales".into()];
    *g.node.iter_mut().find(|n| n.op_type == "Resize").unwrap() = r2;
    let p = write(&dir, "resize.onnx", &m.write_to_bytes().unwrap());
    let e = fails(&["info", &p]);
    assert!(e.contains("resize.onnx") && e.contains("by 1 to 64"), "{e}");
}

// ---------- training, weights, data, files ----------

#[test]
fn hyper_parameters_are_checked_before_any_work() {
    let dir = scratch("hostile-hyp");
    let yaml = dataset(&dir, 2).display().to_string();
    for (flag, value, want) in [
        ("--nbs", "0", "--nbs must be at least 1"),
        ("--lr0", "NaN", "--lr0 NaN must be a finite number"),
        ("--lrf", "NaN", "--lrf NaN must be a finite number"),
        ("--sr", "inf", "--sr inf must be a finite number"),
        ("--epochs", "0", "--epochs must be at least 1"),
    ] {
        let e = fails(&["train", "yolo11n.yaml", "--data", &yaml, "--imgsz", "64", flag, value]);
        assert!(e.contains(want), "{flag} {value}: {e}");
    }
    let e = fails(&["pipeline", "--data", &yaml, "--epochs", "0", "--project", &dir.display().to_string()]);
    assert!(e.contains("--epochs must be at least 1"), "{e}");
    let e = fails(&["train", "yolo11n.yaml", "--data", &yaml, "--nc", "5"]);
    assert!(e.contains("--nc 5") && e.contains("names 1 classes"), "{e}");
    let e = fails(&["val", "yolo11n.yaml", "--data", &yaml, "--batch", "0"]);
    assert!(e.contains("--batch must be at least 1"), "{e}");
    for size in ["4294967296", "100000"] {
        let out = slimc(&["val", "yolo11n.yaml", "--data", &yaml, "--imgsz", size]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("sides in 1..=8192") && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn non_finite_weights_are_refused_and_stop_training() {
    let dir = scratch("hostile-nan");
    let mut m = common::yaml_model("yolo11n.yaml", Some(1), 64);
    m.tensors.get_mut("model.0.conv.weight").unwrap().f32s_mut().unwrap()[3] = f32::NAN;
    let p = saved(&dir, "nan.slim", &m);
    let yaml = dataset(&dir, 2).display().to_string();
    for args in [
        vec!["export", p.as_str(), "-o", "x.onnx"],
        vec!["prune", p.as_str(), "--ratio", "0.5", "-o", "x.slim"],
        vec!["val", p.as_str(), "--data", yaml.as_str()],
        vec!["bn-hist", p.as_str()],
    ] {
        let e = fails(&args);
        assert!(e.contains("nan.slim") && e.contains("model.0.conv.weight") && e.contains("--allow-nonfinite"), "{e}");
    }
    let project = dir.display().to_string();
    let args =
        ["--allow-nonfinite", "--data", &yaml, "--imgsz", "64", "--batch", "2", "--epochs", "1", "--project", &project];
    let out = slimc(&[&["train", p.as_str()][..], &args[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(last.contains("epoch 1, batch 1: the box loss is NaN") && last.contains("nothing was saved"), "{err}");
}

#[test]
fn unreadable_label_files_are_counted_as_corrupt() {
    let dir = scratch("hostile-labels");
    let yaml = dataset(&dir, 3);
    std::fs::write(dir.join("labels/train/im0.txt"), [0xff, 0xfe, 0x00, 0x81, 0x30]).unwrap();
    std::fs::remove_file(dir.join("labels/train/im1.txt")).unwrap();
    std::fs::create_dir(dir.join("labels/train/im1.txt")).unwrap();
    let out = slimc(&[
        "train",
        "yolo11n.yaml",
        "--data",
        &yaml.display().to_string(),
        "--imgsz",
        "64",
        "--epochs",
        "1",
        "--batch",
        "2",
        "--project",
        &dir.display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("im0.txt: not UTF-8 text") && err.contains("im1.txt: is a directory"), "{err}");
    assert!(err.contains("2 corrupt"), "{err}");
    // 200,000 rows of which half repeat: de-duplicated in linear time.
    let text: String =
        (0..200_000).map(|i| format!("0 0.5 0.5 {:.6} 0.1\n", (i % 100_000) as f32 / 1e6 + 0.01)).collect();
    let (labels, dups) = slimc::data::dataset::parse_labels(&text, 1).unwrap();
    assert_eq!((labels.len(), dups), (100_000, 100_000));
}

#[test]
fn outputs_never_replace_inputs_and_stale_temporaries_go() {
    let dir = scratch("hostile-files");
    let m = common::yaml_model("yolo11n.yaml", Some(1), 64);
    let p = saved(&dir, "m.slim", &m);
    let before = std::fs::read(&p).unwrap();
    let e = fails(&["export", &p, "-o", &p]);
    assert!(e.contains("m.slim") && e.contains("also an input"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before, "the model was replaced");
    // A temporary left by a killed writer (pid 999999999 does not run) is removed by the next write.
    let stale = dir.join(".out.slim.999999999.tmp");
    std::fs::write(&stale, b"partial").unwrap();
    let out = slimc(&["import", &p, "-o", &dir.join("out.slim").display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stale.exists(), "stale temporary left behind");
    // A plot that cannot be written names its file.
    let e = fails(&["bn-hist", &p, "-o", &dir.join("no/such/dir/g.png").display().to_string()]);
    assert!(e.contains("no/such/dir/g.png"), "{e}");
}

#[test]
fn onnx_files_validate_and_verify_at_their_own_size() {
    let dir = scratch("hostile-onnx-val");
    let yaml = dataset(&dir, 2).display().to_string();
    let slim = saved(&dir, "m.slim", &common::yaml_model("yolo11n.yaml", Some(1), 64));
    let onnx = dir.join("m.onnx").display().to_string();
    assert!(slimc(&["export", &slim, "--imgsz", "96", "-o", &onnx]).status.success());
    let out = slimc(&["val", &onnx, "--data", &yaml, "--no-plots"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all"));
    // The reference model was built at 64; the default input takes the ONNX file's own 96x96.
    let out = slimc(&["verify", &onnx, "--against", &slim]);
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("onnxruntime"), "{text}");
}

#[test]
fn runs_beyond_the_memory_limit_are_refused_with_the_figure() {
    let dir = scratch("hostile-memory");
    let x = common::fixture("yolo11p-nc2/input.npy").display().to_string();
    let y = dir.join("y.npy").display().to_string();
    let e = fails(&["run", "yolo11n.yaml", "--input", &x, "-o", &y, "--max-memory", "0.0001"]);
    assert!(e.contains("yolo11n.yaml") && e.contains("[1, 3, 128, 128] needs") && e.contains("MB available"), "{e}");
    assert!(!Path::new(&y).exists());
}
