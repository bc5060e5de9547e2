//! Forward latency of yolo11n on the CPU backend at 320 and 640 (compiled once, then run), with
//! onnxruntime's latency on the exported file in the same run (set ORT_DYLIB_PATH, or run
//! scripts/setup.sh first).
//!
//! Run: `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, Criterion};
use slimc::backend::{cpu::Cpu, Backend};
use slimc::export::{export_onnx, ExportOptions};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Tensor;
use std::time::Duration;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("yolo11n-forward");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    for size in [320usize, 640] {
        let model =
            load_model("yolo11n.yaml", &LoadOptions { imgsz: Some([size, size]), ..Default::default() }).unwrap();
        let x = Tensor::full(&[1, 3, size, size], 0.5);
        let mut exe = Cpu.compile(&model).unwrap();
        group.bench_function(format!("slimc-cpu/{size}"), |b| {
            b.iter(|| exe.run_in_order(std::slice::from_ref(&x)).unwrap())
        });
        let path = std::env::temp_dir().join(format!("slimc-bench-yolo11n-{size}.onnx"));
        std::fs::write(&path, export_onnx(&model, &ExportOptions::default()).unwrap().bytes).unwrap();
        match slimc::verify::OrtSession::new(&path) {
            Ok(mut s) => {
                group.bench_function(format!("onnxruntime/{size}"), |b| b.iter(|| s.run(&x).unwrap()));
            }
            Err(e) => eprintln!("skipping onnxruntime at {size}: {e}"),
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
