//! Export then verify: the ONNX file run by tract and by onnxruntime agrees with the IR
//! interpreter, for yolo11n and yolo11s at nc 80 and nc 1 with non-trivial BN statistics,
//! static and dynamic, BN folded and kept. These tests need onnxruntime (scripts/setup.sh
//! installs it) and never skip.

mod common;
use slimc::backend::{cpu::Cpu, run_once};
use slimc::commands::verify::verify_onnx;
use slimc::export::{export_onnx, ExportOptions};

const TOL: f32 = 1e-4;

fn export_and_verify(name: &str, nc: usize, imgsz: usize, opts: ExportOptions, check_size: [usize; 2]) {
    let mut m = common::yaml_model(name, Some(nc), imgsz);
    common::randomize_bn(&mut m, 7);
    let dir = common::scratch("export");
    let path = dir.join(format!("{name}-{nc}-{}-{}.onnx", opts.dynamic, opts.keep_bn));
    std::fs::write(&path, export_onnx(&m, &opts).unwrap().bytes).unwrap();
    let x = common::image(1, check_size[0], check_size[1], 3);
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    let rows = verify_onnx(&path, &x, &want, TOL).unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r.ok, "{name} nc {nc}: {} differs by {:e} (rel {:e})", r.engine, r.max_abs, r.max_rel);
    }
}

#[test]
fn yolo11n_nc80_static_folded() {
    export_and_verify("yolo11n.yaml", 80, 320, ExportOptions::default(), [320, 320]);
}

#[test]
fn yolo11n_nc1_static_keep_bn_opset21() {
    export_and_verify(
        "yolo11n.yaml",
        1,
        256,
        ExportOptions { opset: 21, keep_bn: true, ..Default::default() },
        [256, 256],
    );
}

#[test]
fn yolo11s_nc80_static() {
    export_and_verify("yolo11s.yaml", 80, 256, ExportOptions { opset: 19, ..Default::default() }, [256, 256]);
}

#[test]
fn yolo11s_nc1_dynamic_at_another_size() {
    export_and_verify("yolo11s.yaml", 1, 320, ExportOptions { dynamic: true, ..Default::default() }, [192, 256]);
}

#[test]
fn export_layout_matches_ultralytics() {
    let m = common::yaml_model("yolo11n.yaml", Some(1), 320);
    let bytes = export_onnx(&m, &ExportOptions::default()).unwrap().bytes;
    let dir = common::scratch("layout");
    let p = dir.join("n.onnx");
    std::fs::write(&p, &bytes).unwrap();
    // Re-import our own export: input images [1,3,320,320], output0 [1,5,2100].
    let back = slimc::load::load_model(p.to_str().unwrap(), &Default::default()).unwrap();
    let g = &back.graph;
    assert_eq!(g.value(g.inputs[0]).name, "images");
    assert_eq!(g.ty(g.inputs[0]).fixed_shape(), Some(vec![1, 3, 320, 320]));
    assert_eq!(g.value(g.outputs[0]).name, "output0");
    assert_eq!(g.ty(g.outputs[0]).fixed_shape(), Some(vec![1, 5, 2100]));
    assert_eq!(back.meta.names, vec!["class0".to_string()]);
    assert!(g.nodes.iter().all(|n| n.op.name() != "batch_norm"), "BN is folded by default");
}

#[test]
fn exports_at_opsets_13_to_22_import_back_and_compute_the_same() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(2), 128);
    common::randomize_bn(&mut m, 11);
    let x = common::image(1, 128, 128, 4);
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    let dir = common::scratch("opsets");
    for (opset, keep_bn) in [(13, true), (18, false), (22, true)] {
        let p = dir.join(format!("o{opset}.onnx"));
        std::fs::write(&p, export_onnx(&m, &ExportOptions { opset, keep_bn, ..Default::default() }).unwrap().bytes)
            .unwrap();
        let back = slimc::load::load_model(p.to_str().unwrap(), &Default::default()).unwrap();
        let got = run_once(&Cpu, &back, std::slice::from_ref(&x)).unwrap();
        let e = common::rel_err(&got[0], &want[0]);
        assert!(e < 1e-5, "opset {opset}: re-imported export differs by {e:e}");
    }
}

/// An ONNX `Slice` whose step lies far beyond its axis (start 0, end 64, step 2^63 − 1, as some
/// exporters write "one element") takes ceil((end − start)/step) = 1 row, as onnxruntime
/// computes it; slimc's length arithmetic used to overflow to 0 rows. (tract 0.23.9 still gives
/// 0 rows here, the same overflow, so onnxruntime is the reference.)
#[test]
fn a_slice_with_a_huge_step_takes_one_row_like_onnxruntime() {
    use onnx_protobuf::{
        tensor_shape_proto::{dimension::Value, Dimension},
        type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
        TensorShapeProto, TypeProto, ValueInfoProto,
    };
    let d = common::scratch("slice-step");
    let value = |name: &str, dims: &[i64]| ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&v| Dimension { value: Some(Value::DimValue(v)), ..Default::default() })
                        .collect(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let constant = |name: &str, v: i64| {
        let t = TensorProto { dims: vec![1], data_type: 7, int64_data: vec![v], ..Default::default() };
        NodeProto {
            op_type: "Constant".into(),
            output: vec![name.into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                type_: onnx_protobuf::attribute_proto::AttributeType::TENSOR.into(),
                t: Some(t).into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let slice = NodeProto {
        op_type: "Slice".into(),
        input: ["images", "s", "e", "a", "st"].map(String::from).to_vec(),
        output: vec!["y".into()],
        ..Default::default()
    };
    let graph = GraphProto {
        name: "slice".into(),
        node: vec![constant("s", 0), constant("e", 64), constant("a", 2), constant("st", i64::MAX), slice],
        input: vec![value("images", &[1, 3, 64, 8])],
        output: vec![value("y", &[1, 3, 1, 8])],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { version: 17, ..Default::default() }],
        graph: Some(graph).into(),
        ..Default::default()
    };
    let path = d.join("slice.onnx");
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    let m = slimc::load::load_model(&path.display().to_string(), &Default::default()).unwrap();
    let x = common::image(1, 64, 8, 3);
    let y = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    assert_eq!(y[0].shape, vec![1, 3, 1, 8]);
    // Row 0 of every channel.
    let (xs, ys) = (x.f32s().unwrap(), y[0].f32s().unwrap());
    for c in 0..3 {
        assert_eq!(&ys[c * 8..c * 8 + 8], &xs[c * 64 * 8..c * 64 * 8 + 8]);
    }
    let ort = slimc::commands::verify::run_ort(&path, &x).unwrap();
    assert_eq!((&ort[0].shape, ort[0].f32s().unwrap()), (&y[0].shape, ys));
}

/// Sparse training leaves subnormal weights (the EMA of a gamma held at zero decays through
/// them, and BN folding spreads such a gamma over its channel's weights); x86 computes with
/// them in microcode, so the export sets them to zero and says how many, and the file computes
/// what the model computes.
#[test]
fn exports_hold_no_subnormal_weights() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(1), 64);
    common::randomize_bn(&mut m, 5);
    let g = m.tensors.get_mut("model.2.cv1.bn.weight").unwrap().f32s_mut().unwrap();
    (g[0], g[1]) = (1e-39, -3e-40);
    m.tensors.get_mut("model.0.conv.weight").unwrap().f32s_mut().unwrap()[0] = 5e-41;
    let d = common::scratch("subnormal");
    for keep_bn in [false, true] {
        let out = export_onnx(&m, &ExportOptions { imgsz: Some([64, 64]), keep_bn, ..Default::default() }).unwrap();
        // Unfolded: the two gammas and the weight; folded: the weight and every weight of the two
        // channels (model.2.cv1 reads 32 channels through a 1x1 kernel: 64 products), less any
        // that round to exact zero.
        if keep_bn {
            assert_eq!(out.flushed, 3);
        } else {
            assert!(out.flushed > 40, "{}", out.flushed);
        }
        let path = d.join(format!("m{keep_bn}.onnx"));
        std::fs::write(&path, &out.bytes).unwrap();
        assert_eq!(common::onnx_subnormals(&path), 0);
        let x = common::image(1, 64, 64, 2);
        let y = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
        for a in verify_onnx(&path, &x, &y, 1e-4).unwrap() {
            assert!(a.ok, "{a:?}");
        }
    }
}
