//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod archive;
pub mod single_op;
pub mod step_parity;

use rand::{Rng, SeedableRng};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::{Model, Op, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    // Cargo sets the variable when it runs a test; a test binary run by itself (benches/gpu_check.sh
    // on a machine without Rust) is given it, else the checkout it was built in is used.
    let root =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("tests/fixtures").join(rel)
}

/// A scratch directory unique to one test, removed when dropped unless the test is failing
/// (then it stays for inspection). Runs used to leave a gigabyte or more each under /tmp.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Makes a fresh [`Scratch`] directory named for the test.
pub fn scratch(name: &str) -> Scratch {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("slimc-test-{}-{n}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
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
        if let Op::BatchNorm(_) = n.op {
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
    slimc::commands::verify::compare(a, b).unwrap().1
}

/// Runs slimc and returns its stderr, asserting failure with exactly one line and no panic.
pub fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slimc")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "slimc {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "slimc {args:?} exit code: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// A dataset of `n` train and 2 val 64×64 JPEGs, each with one bright box on a dark ground.
pub fn dataset(root: &Path, n: usize) -> PathBuf {
    for split in ["train", "val"] {
        std::fs::create_dir_all(root.join("images").join(split)).unwrap();
        std::fs::create_dir_all(root.join("labels").join(split)).unwrap();
        let count = if split == "train" { n } else { 2 };
        for i in 0..count {
            let (x0, y0, w, h) = (8 + 5 * i as u32 % 24, 10 + 3 * i as u32 % 20, 24, 20);
            let img = image::RgbImage::from_fn(64, 64, |x, y| {
                if x >= x0 && x < x0 + w && y >= y0 && y < y0 + h {
                    image::Rgb([230, 200, 40])
                } else {
                    image::Rgb([20, 30, 25])
                }
            });
            img.save(root.join(format!("images/{split}/im{i}.jpg"))).unwrap();
            let (cx, cy) = ((x0 as f32 + w as f32 / 2.0) / 64.0, (y0 as f32 + h as f32 / 2.0) / 64.0);
            std::fs::write(
                root.join(format!("labels/{split}/im{i}.txt")),
                format!("0 {cx} {cy} {} {}\n", w as f32 / 64.0, h as f32 / 64.0),
            )
            .unwrap();
        }
    }
    let yaml = root.join("data.yaml");
    std::fs::write(&yaml, "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: box\n").unwrap();
    yaml
}

/// How many subnormal float32 values an ONNX file's initializers hold.
pub fn onnx_subnormals(path: &Path) -> usize {
    use onnx_protobuf::{Message, ModelProto};
    let m = ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    m.graph
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| {
            let raw = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            raw.chain(t.float_data.iter().copied()).filter(|x| x.is_subnormal()).count()
        })
        .sum()
}
