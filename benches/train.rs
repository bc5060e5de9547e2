//! Training throughput of yolo11n (nc 1) on the CPU backend at imgsz 320, batch 8, on the bundled
//! trees dataset: each iteration takes the next augmented batch from the loader (mosaic, affine,
//! HSV, flip; decoded in parallel ahead of the step) and runs the whole training step program —
//! forward, backward, clipping, an AdamW update and the EMA — the work of one `slimc train`
//! iteration with the optimizer stepping every micro-batch. Criterion reports it as images per
//! second.
//!
//! Run: `cargo bench --bench train`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slimc::backend::cpu::Cpu;
use slimc::data::augment::Hyp;
use slimc::data::dataset::{load_dataset_spec, scan};
use slimc::data::loader::Split;
use slimc::load::{load_model, LoadOptions};
use slimc::train::optim::{choose, Optimizer};
use slimc::train::step::Program;
use slimc_passes::OptimizerOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn train(c: &mut Criterion) {
    let (imgsz, batch) = (320, 8);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/trees/trees.yaml");
    let spec = load_dataset_spec(&data).unwrap();
    let (samples, _) = scan(&spec.train, 1, "train").unwrap();
    let split = Arc::new(Split::new(samples, imgsz, false).unwrap());
    let opts = LoadOptions { nc: Some(1), imgsz: Some([imgsz, imgsz]), ..Default::default() };
    let model = load_model("yolo11n.yaml", &opts).unwrap();
    let mut opt = Optimizer::new(choose("AdamW", 0.002, 0.9, 0.0, 1, 1).unwrap(), 5e-4);
    let options = OptimizerOptions { rule: opt.rule(), weight_decay: 5e-4, ..Default::default() };
    let mut program = Program::with_optimizer(&model, &Cpu, options).unwrap();
    let mut epoch = 0;
    let mut rx = split.train_epoch(batch, Hyp::default(), 0, epoch);
    let mut group = c.benchmark_group("yolo11n-train");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).throughput(Throughput::Elements(batch as u64));
    group.bench_function("slimc-cpu/320/batch8", |b| {
        b.iter(|| {
            let batch = match rx.recv() {
                Ok(b) => b.unwrap(),
                Err(_) => {
                    epoch += 1;
                    rx = split.train_epoch(batch, Hyp::default(), 0, epoch);
                    rx.recv().unwrap().unwrap()
                }
            };
            opt.steps += 1;
            let scalars = opt.scalars(true, true, 0.0, opt.steps);
            program.train_step(&batch.images, &batch.targets, &scalars).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, train);
criterion_main!(benches);
