//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::{Model, Op, Tensor};
use std::path::PathBuf;

/// A file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// A scratch directory unique to one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("slimc-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds a YAML model at image size `imgsz`.
pub fn yaml_model(name: &str, nc: Option<usize>, imgsz: usize) -> Model {
    load_model(name, &LoadOptions { nc, imgsz: Some([imgsz, imgsz]), ..Default::default() }).unwrap()
}

/// Gives every BatchNorm the fixtures' kind of non-trivial state: gamma in [0.5, 1.5), beta in
/// [-0.2, 0.2), running mean within ±0.2, running var in [0.5, 2).
pub fn randomize_bn(model: &mut Model, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let g = &model.graph;
    let mut names = vec![];
    for n in &g.nodes {
        if let Op::BatchNorm { .. } = n.op {
            names.push(n.inputs[1..].iter().map(|&v| g.value(v).name.clone()).collect::<Vec<_>>());
        }
    }
    for ns in names {
        for (k, name) in ns.iter().enumerate() {
            let t = model.tensors.get_mut(name).unwrap();
            let (lo, hi) = [(0.5, 1.5), (-0.2, 0.2), (-0.2, 0.2), (0.5, 2.0)][k];
            for v in t.f32s_mut().unwrap() {
                *v = rng.random_range(lo..hi);
            }
        }
    }
}

/// A seeded uniform [0, 1) image batch.
pub fn image(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Tensor::from_f32(vec![n, 3, h, w], (0..n * 3 * h * w).map(|_| rng.random::<f32>()).collect()).unwrap()
}

/// Max |a - b| over max |b| (shapes must agree).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    slimc::verify::compare(a, b).unwrap().1
}
