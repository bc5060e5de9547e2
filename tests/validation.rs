//! Validation on the trees val split: with a kept program (the trainer compiles its validation
//! program once and writes each epoch's weights into it) against validation compiled afresh, and
//! with the forward run in chunks of images against one run of the whole batch.

mod common;

use slimc::backend::cpu::Cpu;
use slimc::backend::Backend;
use slimc::data::dataset::{load_dataset_spec, scan};
use slimc::data::loader::Loader;
use slimc::distributed::World;
use slimc::load::{load_model, LoadOptions};
use slimc::val::nms::{non_max_suppression, NmsOptions};
use slimc::val::validate::{validate, validate_reusing, ValOptions, ValProgram, ValResult};
use slimc_ir::Model;
use std::path::PathBuf;

/// The trees val split at 160 and the trained fixture model.
fn trees_and_trained() -> (Loader, Model) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let spec = load_dataset_spec(&root.join("datasets/trees/trees.yaml")).unwrap();
    let (samples, _) = scan(&spec.val, spec.names.len(), "val").unwrap();
    let split = Loader::new(samples, 160, false).unwrap();
    let best = common::fixture("trees-trained/yolo11p-trees.slim");
    (split, load_model(best.to_str().unwrap(), &LoadOptions::default()).unwrap())
}

fn summary(r: &ValResult) -> (f64, f64, f64, f64, Option<[f32; 3]>, usize) {
    let m = &r.metrics;
    (m.map50, m.map, m.mp, m.mr, r.loss, r.predictions.len())
}

#[test]
fn a_kept_program_validates_new_weights_as_a_fresh_one_does() {
    let (split, trained) = trees_and_trained();
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

/// On the CPU validation runs the forward one image per worker thread and the loss, normalised
/// over the whole batch, on the batch's joined level maps: the same loss and detections as the
/// graph with the loss attached run once on each whole batch.
#[test]
fn validation_in_chunks_of_images_equals_whole_batch_runs() {
    let (split, trained) = trees_and_trained();
    let batch = 8;
    // Two worker threads: the forward runs in chunks of two images.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    assert_eq!(pool.install(|| Cpu.inference_batch()), Some(2));
    let opts = ValOptions { keep_predictions: true, ..ValOptions::quiet(batch) };
    let chunked = pool.install(|| validate(&Cpu, &trained, &split, 1, &opts)).unwrap();

    let mut whole = trained.clone();
    let pred = whole.graph.outputs[0];
    let node = slimc_passes::attach_detect_loss(&mut whole.graph).unwrap();
    whole.graph.outputs = vec![pred, whole.graph.nodes[node.0].outputs[0]];
    let mut exe = Cpu.compile(&whole).unwrap();
    let batches = split.val_batches(batch);
    assert!(batches.iter().any(|b| b.len() > 2), "no batch larger than a chunk");
    let (mut loss, mut scores) = ([0.0f32; 3], vec![]);
    for idx in &batches {
        let b = split.val_batch(idx).unwrap();
        let out = pool.install(|| exe.run(&[&b.images, &b.targets])).unwrap();
        for (l, v) in loss.iter_mut().zip(out[1].f32s().unwrap()) {
            *l += v / batches.len() as f32;
        }
        let (rows, anchors) = (out[0].shape[1], out[0].shape[2]);
        let data = out[0].f32s().unwrap();
        for k in 0..idx.len() {
            let dets = non_max_suppression(
                &data[k * rows * anchors..(k + 1) * rows * anchors],
                1,
                anchors,
                &NmsOptions::default(),
            );
            scores.extend(dets.iter().map(|d| d.score.to_bits()));
        }
    }
    assert_eq!(chunked.loss, Some(loss), "loss over whole batches");
    let got: Vec<u32> = chunked.predictions.iter().map(|p| p.score.to_bits()).collect();
    assert!(scores.len() > 100, "{} detections", scores.len());
    assert_eq!(got, scores, "detections image by image");
}
