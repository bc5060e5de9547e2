//! Training throughput of yolo11n (nc 1) at imgsz 320, batch 8, on the bundled trees dataset, on
//! the CPU backend and the GPU backend side by side in one run (the GPU is the best adapter:
//! lavapipe where there is no GPU): each iteration takes the next augmented batch from the
//! loader (mosaic, affine, HSV, flip; decoded in parallel ahead of the step) and runs the whole
//! training step program — forward, backward, clipping, an AdamW update and the EMA — the work
//! of one `slimc train` iteration with the optimizer stepping every micro-batch. After one
//! warm-up step (which compiles and, on the GPU, builds the pipelines) it times `steps` steps
//! (10 on the CPU, 3 on the GPU: a step takes about a minute on lavapipe) and prints images per
//! second.
//!
//! Run: `cargo bench --bench train` (`. scripts/setup.sh` first, for lavapipe). Under `cargo
//! test` (no `--bench` argument) it only checks that one step runs on each backend, at imgsz 64.

use slimc::backend::cpu::Cpu;
use slimc::backend::gpu::Gpu;
use slimc::backend::Backend;
use slimc::data::augment::Hyp;
use slimc::data::dataset::{load_dataset_spec, scan};
use slimc::data::loader::Loader;
use slimc::load::{load_model, LoadOptions};
use slimc::train::schedule::{choose, Schedule};
use slimc::train::step::Program;
use slimc_passes::OptimizerOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Images per second of `steps` training steps of yolo11n at `imgsz` on `backend`, after one
/// warm-up step.
fn images_per_second(backend: &dyn Backend, imgsz: usize, steps: usize) -> f64 {
    let batch = 8;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/trees/trees.yaml");
    let spec = load_dataset_spec(&data).unwrap();
    let (samples, _) = scan(&spec.train, 1, "train").unwrap();
    let split = Arc::new(Loader::new(samples, imgsz, false).unwrap());
    let opts = LoadOptions { nc: Some(1), imgsz: Some([imgsz, imgsz]), ..Default::default() };
    let model = load_model("yolo11n.yaml", &opts).unwrap();
    let mut opt = Schedule::new(choose("AdamW", 0.002, 0.9, 0.0, 1, 1).unwrap(), 5e-4);
    let options = OptimizerOptions { rule: opt.rule(), beta1: opt.beta1(), weight_decay: 5e-4, ..Default::default() };
    let mut program = Program::with_optimizer(&model, backend, options).unwrap();
    let mut epoch = 0;
    let mut rx = split.train_epoch(batch, Hyp::default(), 0, epoch, 1, 0..1);
    let mut step = || {
        let b = match rx.recv() {
            Ok(b) => b.unwrap(),
            Err(_) => {
                epoch += 1;
                rx = split.train_epoch(batch, Hyp::default(), 0, epoch, 1, 0..1);
                rx.recv().unwrap().unwrap()
            }
        };
        opt.steps += 1;
        let scalars = opt.scalars(true, true, 0.0, opt.steps);
        program.train_step(&b.images, &b.targets, &scalars).unwrap();
    };
    step();
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    (steps * batch) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let gpu = Gpu::new().expect("a GPU adapter (scripts/setup.sh installs lavapipe)");
    let name = format!("{} ({}, convolutions {:?})", gpu.adapter().name, gpu.adapter().backend, gpu.conv());
    let (imgsz, cpu_steps, gpu_steps) =
        if std::env::args().any(|a| a == "--bench") { (320, 10, 3) } else { (64, 1, 1) };
    let cpu = images_per_second(&Cpu, imgsz, cpu_steps);
    println!("yolo11n train step, imgsz {imgsz}, batch 8: CPU backend {cpu:.2} img/s");
    let g = images_per_second(&gpu, imgsz, gpu_steps);
    println!(
        "yolo11n train step, imgsz {imgsz}, batch 8: GPU backend on {name} {g:.2} img/s ({:.3}x the CPU)",
        g / cpu
    );
}
