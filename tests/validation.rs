//! Validation with a kept program (the trainer compiles its validation program once and writes
//! each epoch's weights into it) against validation compiled afresh, on the trees val split.

mod common;

use slimc::backend::cpu::Cpu;
use slimc::data::dataset::{load_dataset_spec, scan};
use slimc::data::loader::Split;
use slimc::dist::World;
use slimc::load::{load_model, LoadOptions};
use slimc::val::validate::{validate, validate_reusing, ValOptions, ValProgram, ValResult};
use slimc_ir::Model;
use std::path::PathBuf;

fn summary(r: &ValResult) -> (f64, f64, f64, f64, Option<[f32; 3]>, usize) {
    let m = &r.metrics;
    (m.map50, m.map, m.mp, m.mr, r.loss, r.predictions.len())
}

#[test]
fn a_kept_program_validates_new_weights_as_a_fresh_one_does() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let spec = load_dataset_spec(&root.join("datasets/trees/trees.yaml")).unwrap();
    let (samples, _) = scan(&spec.val, spec.names.len(), "val").unwrap();
    let split = Split::new(samples, 160, false).unwrap();
    let best = common::fixture("trees-trained/yolo11p-trees.slim");
    let trained = load_model(best.to_str().unwrap(), &LoadOptions::default()).unwrap();
    // The same graph with other weights: every convolution weight scaled by 0.9.
    let mut other: Model = trained.clone();
    for (name, t) in other.tensors.iter_mut() {
        if name.ends_with("conv.weight") {
            t.f32s_mut().unwrap().iter_mut().for_each(|v| *v *= 0.9);
        }
    }
    let opts = ValOptions { keep_predictions: true, ..ValOptions::quiet(8) };
    let mut program = ValProgram::default();
    let world = World::solo();
    let first = validate_reusing(&Cpu, &trained, &split, 1, &opts, &world, &mut program).unwrap();
    let second = validate_reusing(&Cpu, &other, &split, 1, &opts, &world, &mut program).unwrap();
    let fresh =
        [validate(&Cpu, &trained, &split, 1, &opts).unwrap(), validate(&Cpu, &other, &split, 1, &opts).unwrap()];
    assert_eq!(summary(&first), summary(&fresh[0]));
    assert_eq!(summary(&second), summary(&fresh[1]));
    let boxes =
        |r: &ValResult| r.predictions.iter().map(|p| (p.score.to_bits(), p.bbox.map(f32::to_bits))).collect::<Vec<_>>();
    assert_eq!(boxes(&second), boxes(&fresh[1]), "the kept program's detections differ");
    // The weights did change what the model finds (so the comparison can fail).
    assert!(first.metrics.map50 > 0.1, "{}", first.metrics.map50);
    assert_ne!(summary(&second), summary(&first));
}
