//! The IR text form: dump → parse → dump is the identity for every scale, parse gives back the
//! same graph, a checked-in golden dump of yolo11n is matched (SLIMC_BLESS=1 rewrites it),
//! and model files round-trip exactly.

mod common;
use slimc_ir::{parse_graph, print_graph, Model};

#[test]
fn dump_parse_dump_is_identity_for_all_scales() {
    for s in ["n", "s", "m", "l", "x"] {
        let m = common::yaml_model(&format!("yolo11{s}.yaml"), None, 640);
        let text = print_graph(&m.graph);
        let parsed = parse_graph(&text).unwrap_or_else(|e| panic!("yolo11{s}: {e}"));
        assert_eq!(parsed, m.graph, "yolo11{s}: parse(print(g)) != g");
        assert_eq!(print_graph(&parsed), text, "yolo11{s}: print(parse(print(g))) != print(g)");
    }
}

/// Compares `text` with tests/golden/`name` (SLIMC_BLESS=1 rewrites it).
fn check_golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var("SLIMC_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).expect("golden file (run with SLIMC_BLESS=1 to create it)");
    if golden != text {
        let line = golden
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(golden.lines().count().min(text.lines().count()));
        panic!("IR differs from tests/golden/{name} at line {}; review and re-bless with SLIMC_BLESS=1", line + 1);
    }
}

#[test]
fn golden_yolo11n_dump() {
    let m = common::yaml_model("yolo11n.yaml", None, 640);
    check_golden("yolo11n.slimir", &print_graph(&m.graph));
}

/// The pruning passes on yolo11n (seeded BN state, ratio 0.5, policy groups): the analysis
/// summary and the narrowed IR.
#[test]
fn golden_yolo11n_pruned() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(1), 320);
    common::randomize_bn(&mut m, 3);
    let mut cx = slimc_passes::PassContext {
        prune: slimc_passes::PruneOptions { ratio: 0.5, ..Default::default() },
        ..Default::default()
    };
    let pm = slimc_passes::PassManager::parse("group-channels,select-channels,propagate-masks").unwrap();
    pm.run_with(&mut m, &mut cx).unwrap();
    let analysis = cx.describe();
    slimc_passes::PassManager::parse("rewrite-widths").unwrap().run_with(&mut m, &mut cx).unwrap();
    check_golden("yolo11n-pruned.slimir", &(analysis + &cx.describe() + &print_graph(&m.graph)));
}

#[test]
fn imported_onnx_graph_round_trips() {
    let m =
        slimc::load::load_model(common::fixture("yolo11p-nc2/model-bn.onnx").to_str().unwrap(), &Default::default())
            .unwrap();
    let parsed = parse_graph(&print_graph(&m.graph)).unwrap();
    assert_eq!(parsed, m.graph);
}

#[test]
fn model_file_round_trips_exactly() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(3), 320);
    common::randomize_bn(&mut m, 1);
    m.meta.names = vec!["a".into(), "b".into(), "c d".into()];
    m.training_state = vec![1, 2, 3];
    let dir = common::scratch("modelfile");
    let p = dir.join("m.slim");
    m.save(&p).unwrap();
    let back = Model::load(&p).unwrap();
    assert_eq!(back, m);
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn parse_errors_name_the_line() {
    let m = common::yaml_model("yolo11n.yaml", None, 640);
    let text = print_graph(&m.graph);
    let broken = text.replacen("conv2d(", "conv3d(", 1);
    let line = broken.lines().position(|l| l.contains("conv3d(")).unwrap() + 1;
    let e = parse_graph(&broken).unwrap_err().to_string();
    assert!(e.starts_with(&format!("line {line}:")) && e.contains("unknown op `conv3d`"), "{e}");
    let e = parse_graph(&text.replacen("stride=[2,2]", "stride=[2]", 1)).unwrap_err().to_string();
    assert!(e.contains("stride") && e.contains("needs 2 values"), "{e}");
}
