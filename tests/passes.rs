//! Passes keep what the graph computes: checked by running the CPU interpreter before and
//! after each pass on models with non-trivial BN statistics.

mod common;
use slimc::backend::{cpu::Cpu, run_once};
use slimc_passes::PassManager;

#[test]
fn fold_bn_preserves_outputs_and_removes_every_bn() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(2), 128);
    common::randomize_bn(&mut m, 3);
    let x = common::image(2, 128, 96, 1);
    let before = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    let reports = PassManager::parse("fold-bn,dce").unwrap().run(&mut m).unwrap();
    assert!(reports[0].changed);
    assert!(m.graph.nodes.iter().all(|n| n.op.name() != "batch_norm"));
    // Every conv except the three box/class output convs and the DFL gains a bias.
    let after = run_once(&Cpu, &m, &[x]).unwrap();
    let e = common::rel_err(&after[0], &before[0]);
    assert!(e < 1e-5, "fold-bn changed the output by {e:e}");
}

#[test]
fn fold_constants_turns_anchors_into_constants_without_changing_outputs() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(1), 160);
    let x = common::image(1, 160, 160, 2);
    let before = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    PassManager::parse("fold-constants,dce").unwrap().run(&mut m).unwrap();
    assert!(m.graph.nodes.iter().all(|n| n.op.name() != "anchors"));
    let after = run_once(&Cpu, &m, &[x]).unwrap();
    assert_eq!(after[0], before[0]);
}

#[test]
fn dce_removes_unused_branches_and_their_tensors() {
    let mut m = common::yaml_model("yolo11n.yaml", Some(1), 160);
    // Make the P3 box-branch map the only output: everything after it is dead.
    let feat = m.graph.find("model.23.cv2.0.2").unwrap();
    m.graph.outputs = vec![feat];
    let n = m.graph.nodes.len();
    PassManager::parse("dce").unwrap().run(&mut m).unwrap();
    assert!(m.graph.nodes.len() < n);
    assert!(!m.tensors.contains_key("model.23.dfl.conv.weight"));
    assert!(m.tensors.contains_key("model.23.cv2.0.2.bias"));
    m.check().unwrap();
}
