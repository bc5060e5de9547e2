//! Bad input gets a one-line error naming the file and the culprit and a non-zero exit, never
//! a panic.

mod common;
use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto};
use std::path::Path;

use common::{fails, scratch, write};

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

/// Width arguments that leave a block no channels (`e` of C2f, C3, A2C2f's `mlp_ratio`), and an
/// image size off the model's largest stride: one line naming the file, the layer and why.
#[test]
fn yaml_whose_arguments_leave_a_conv_no_channels() {
    let dir = common::scratch("bad-widths");
    let yaml = |name: &str, row: &str| {
        let text =
            format!("nc: 1\nbackbone:\n  - [-1, 1, Conv, [64, 3, 2]]\n  - {row}\nhead:\n  - [[1], 1, Detect, [nc]]\n");
        write(&dir, name, text.as_bytes())
    };
    for (row, culprit) in [
        ("[-1, 1, C2f, [16, True, 1, 0.01]]", "model.1.cv1.conv"),
        ("[-1, 1, C3, [16, True, 1, 0.01]]", "model.1.cv1.conv"),
        ("[-1, 1, A2C2f, [64, True, 1, False, 0.001]]", "model.1.m.0.0.mlp.0.conv"),
    ] {
        let p = yaml("narrow.yaml", row);
        let e = fails(&["info", &p, "--imgsz", "64"]);
        assert!(
            e.contains("narrow.yaml")
                && e.contains("layer 1")
                && e.contains(culprit)
                && e.contains("no output channels"),
            "{e}"
        );
    }
    let e = fails(&["info", "yolov8n-p6.yaml", "--imgsz", "160"]);
    assert!(e.contains("yolov8n-p6.yaml") && e.contains("largest stride 64") && e.contains("128 or 192"), "{e}");
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

/// Rewrites a fixture checkpoint entry by entry (`edit` returns the new bytes of an entry, or
/// `None` to keep it) into `dir/name`, stored as torch.save stores.
fn rezip(src: &str, dir: &Path, name: &str, edit: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) -> String {
    use std::io::{Read, Write};
    let mut zin = zip::ZipArchive::new(std::fs::File::open(common::fixture(src)).unwrap()).unwrap();
    let p = dir.join(name);
    let mut zout = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let mut bytes = vec![];
        f.read_to_end(&mut bytes).unwrap();
        let entry = f.name().unwrap().to_string();
        zout.start_file(entry.as_str(), opts).unwrap();
        zout.write_all(&edit(&entry, &bytes).unwrap_or(bytes)).unwrap();
    }
    zout.finish().unwrap();
    p.display().to_string()
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes.windows(from.len()).position(|w| w == from).expect("pattern in the fixture");
    [&bytes[..at], to, &bytes[at + from.len()..]].concat()
}

const BEST: &str = "checkpoints/yolo11p-trees/best.pt";

#[test]
fn truncated_checkpoint() {
    let dir = common::scratch("bad-pt-trunc");
    let full = std::fs::read(common::fixture(BEST)).unwrap();
    let p = write(&dir, "trunc.pt", &full[..full.len() / 3]);
    let e = fails(&["info", &p]);
    assert!(e.contains("trunc.pt") && e.contains("not a PyTorch checkpoint"), "{e}");
}

#[test]
fn zip_that_is_not_a_checkpoint() {
    let dir = common::scratch("bad-pt-zip");
    // data.pkl replaced by text: no pickle.
    let q = rezip(BEST, &dir, "notes.pt", |n, _| n.ends_with("data.pkl").then(|| b"hello".to_vec()));
    // An ordinary zip without data.pkl.
    let text = dir.join("plain.pt");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&text).unwrap());
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(b"not a model").unwrap();
        z.finish().unwrap();
    }
    let e = fails(&["info", text.to_str().unwrap()]);
    assert!(e.contains("plain.pt") && e.contains("without data.pkl"), "{e}");
    let e = fails(&["info", &q]);
    assert!(e.contains("notes.pt") && e.contains("data.pkl") && e.contains("pickle byte"), "{e}");
}

#[test]
fn pickle_with_an_unsupported_opcode() {
    let dir = common::scratch("bad-pt-op");
    let p = rezip(BEST, &dir, "ext.pt", |n, _| n.ends_with("data.pkl").then(|| b"\x80\x02\x82\x01.".to_vec()));
    let e = fails(&["info", &p]);
    assert!(e.contains("ext.pt") && e.contains("unsupported pickle opcode 0x82 (EXT1)"), "{e}");
}

#[test]
fn checkpoint_of_a_task_or_block_slimc_cannot_express() {
    let dir = common::scratch("bad-pt-task");
    let p = rezip(BEST, &dir, "seg.pt", |n, b| {
        n.ends_with("data.pkl").then(|| {
            replace(b, b"ultralytics.nn.tasks\nDetectionModel\n", b"ultralytics.nn.tasks\nSegmentationModel\n")
        })
    });
    let e = fails(&["info", &p]);
    assert!(e.contains("seg.pt") && e.contains("SegmentationModel"), "{e}");
    let p = rezip(BEST, &dir, "head.pt", |n, b| {
        n.ends_with("data.pkl").then(|| replace(b, b"X\x06\x00\x00\x00Detect", b"X\x07\x00\x00\x00Segment"))
    });
    let e = fails(&["info", &p]);
    assert!(e.contains("head.pt") && e.contains("unknown module `Segment`"), "{e}");
    let p = rezip(BEST, &dir, "block.pt", |n, b| {
        n.ends_with("data.pkl").then(|| replace(b, b"X\x05\x00\x00\x00C2PSA", b"X\x06\x00\x00\x00C2fPSA"))
    });
    let e = fails(&["info", &p]);
    assert!(e.contains("block.pt") && e.contains("unknown module `C2fPSA`"), "{e}");
}

#[test]
fn checkpoint_tensor_with_a_short_storage() {
    let dir = common::scratch("bad-pt-short");
    let p = rezip(BEST, &dir, "short.pt", |n, b| n.ends_with("/data/3").then(|| b[..b.len() / 2].to_vec()));
    let e = fails(&["info", &p]);
    assert!(e.contains("short.pt") && e.contains("storage 3 holds"), "{e}");
}

/// A global batch that does not divide among the data-parallel ranks is a one-line error before
/// any work.
#[test]
fn a_batch_that_does_not_divide_among_the_ranks() {
    let d = scratch("ranks");
    let yaml = common::dataset(&d, 4);
    let (yaml, project) = (yaml.display().to_string(), d.display().to_string());
    let args = ["train", "yolo11n.yaml", "--imgsz", "64", "--batch", "8", "--epochs", "1", "--device", "cpu"];
    let e = fails(&[&args[..], &["--emulate-ranks", "3", "--data", &yaml, "--project", &project]].concat());
    assert!(e.contains("--batch 8 (the global batch) does not divide among 3 ranks"), "{e}");
}
