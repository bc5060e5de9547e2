//! Bad input gets a one-line error naming the file and the culprit and a non-zero exit, never
//! a panic.

mod common;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto};
use std::path::Path;
use std::process::Command;

/// Runs slimc and returns its stderr, asserting failure with exactly one line and no panic.
fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slimc")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "slimc {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "slimc {args:?} exit code: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn truncated_onnx() {
    let dir = common::scratch("bad-trunc");
    let full = std::fs::read(common::fixture("yolo11p-nc2/model-bn.onnx")).unwrap();
    let p = write(&dir, "trunc.onnx", &full[..full.len() / 3]);
    let e = fails(&["info", &p]);
    assert!(e.contains("trunc.onnx") && (e.contains("not a valid ONNX model") || e.contains("truncated")), "{e}");
}

#[test]
fn onnx_with_unknown_op() {
    let dir = common::scratch("bad-op");
    let mut m =
        ModelProto::parse_from_bytes(&std::fs::read(common::fixture("yolo11p-nc2/model-bn.onnx")).unwrap()).unwrap();
    let g: &mut GraphProto = m.graph.as_mut().unwrap();
    let first = g.node[0].clone();
    g.node.insert(
        0,
        NodeProto {
            op_type: "FrobnicateV2".into(),
            name: "weird_node".into(),
            input: first.input.clone(),
            output: vec!["w_out".into()],
            ..Default::default()
        },
    );
    m.opset_import = vec![OperatorSetIdProto { version: 17, ..Default::default() }];
    let p = write(&dir, "unknown.onnx", &m.write_to_bytes().unwrap());
    let e = fails(&["info", &p]);
    assert!(
        e.contains("unknown.onnx") && e.contains("FrobnicateV2") && e.contains("weird_node") && e.contains("opset 17"),
        "{e}"
    );
}

#[test]
fn yaml_with_unknown_module() {
    let dir = common::scratch("bad-module");
    let text = slimc::frontend::yaml::YOLO11_YAML.replace("[-1, 1, SPPF, [1024, 5]]", "[-1, 1, SPPX, [1024, 5]]");
    let p = write(&dir, "yolo11n.yaml", text.as_bytes());
    let e = fails(&["info", &p]);
    assert!(e.contains("yolo11n.yaml") && e.contains("layer 9") && e.contains("unknown module `SPPX`"), "{e}");
}

#[test]
fn yaml_with_wrong_argument_count() {
    let dir = common::scratch("bad-args");
    let text = slimc::frontend::yaml::YOLO11_YAML
        .replace("[-1, 1, Conv, [128, 3, 2]]", "[-1, 1, Conv, [128, 3, 2, 1, 1, 1, True, 9]]");
    let p = write(&dir, "yolo11s.yaml", text.as_bytes());
    let e = fails(&["info", &p]);
    assert!(
        e.contains("yolo11s.yaml") && e.contains("layer 1") && e.contains("Conv takes 1 to 7 arguments, found 8"),
        "{e}"
    );
}

#[test]
fn weights_with_a_wrong_shape() {
    let dir = common::scratch("bad-weights");
    let src = std::fs::read(common::fixture("yolo11p-nc2/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    let t = tensors.iter_mut().find(|t| t.0 == "model.2.cv1.bn.weight").unwrap();
    t.1 = vec![t.1[0] / 2];
    t.2.truncate(t.2.len() / 2);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    let w = write(&dir, "bad.safetensors", &bytes);
    let yaml = common::fixture("yolo11p-nc2/yolo11p.yaml");
    let e = fails(&["info", yaml.to_str().unwrap(), "--weights", &w]);
    assert!(
        e.contains("bad.safetensors") && e.contains("model.2.cv1.bn.weight has shape [8], the model needs [16]"),
        "{e}"
    );
}

#[test]
fn missing_files() {
    let e = fails(&["info", "/nonexistent/model.onnx"]);
    assert!(e.contains("/nonexistent/model.onnx"), "{e}");
    let e = fails(&["dump", "/nonexistent/yolo11n.yaml"]);
    assert!(e.contains("/nonexistent/yolo11n.yaml") && e.contains("no such file"), "{e}");
    let e = fails(&["info", "/nonexistent/m.slim"]);
    assert!(e.contains("/nonexistent/m.slim"), "{e}");
    let e = fails(&["run", "yolo11n.yaml", "--input", "/nonexistent/x.npy", "-o", "/tmp/y.npy"]);
    assert!(e.contains("/nonexistent/x.npy"), "{e}");
}

#[test]
fn corrupt_model_file_and_unknown_pass() {
    let dir = common::scratch("bad-slim");
    let p = write(&dir, "junk.slim", b"SLIMC\0v1\xff\xff\xff");
    let e = fails(&["info", &p]);
    assert!(e.contains("junk.slim") && e.contains("corrupt"), "{e}");
    let e = fails(&["opt", "yolo11n.yaml", "--passes", "dce,fold-everything"]);
    assert!(e.contains("unknown pass `fold-everything`") && e.contains("fold-bn"), "{e}");
}
