//! Forward latency of yolo11n on the CPU backend at 320 and 640 (compiled once, then run), with
//! onnxruntime's latency on the exported file in the same run (set ORT_DYLIB_PATH, or run
//! scripts/setup.sh first). After each size's criterion figures, a paired comparison: rounds
//! that time a few forwards of each, back to back, so the speed phases of a shared machine hit
//! both alike; it prints the median of the rounds' time ratios and their range.
//!
//! Run: `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, Criterion};
use slimc::backend::{cpu::Cpu, Backend};
use slimc::export::{export_onnx, ExportOptions};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Tensor;
use std::time::{Duration, Instant};

/// Rounds of the paired comparison.
const ROUNDS: usize = 15;

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// slimc's time over onnxruntime's, paired: each round times `runs` forwards of one and then of
/// the other (which goes first alternates; each after a pause and one untimed run), and its
/// ratio is that round's; prints the rounds' median ratio, their range and each side's median
/// time.
fn paired(size: usize, mut slimc: impl FnMut(), mut ort: impl FnMut()) {
    let runs = (3_000_000 / (size * size)).max(2);
    let time = |f: &mut dyn FnMut()| {
        // The other engine's idle worker threads spin for a while after its last run: let them
        // go to sleep, and warm this one's, before timing.
        std::thread::sleep(Duration::from_millis(100));
        f();
        let t = Instant::now();
        (0..runs).for_each(|_| f());
        t.elapsed().as_secs_f64() * 1e3 / runs as f64
    };
    let (mut ratios, mut ts, mut to) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = time(&mut slimc);
            (a, time(&mut ort))
        } else {
            let b = time(&mut ort);
            (time(&mut slimc), b)
        };
        ratios.push(a / b);
        ts.push(a);
        to.push(b);
    }
    let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
    println!(
        "yolo11n-forward/paired/{size}: slimc time / onnxruntime's = {:.3} (median of {ROUNDS} rounds of {runs} \
         runs each; range {lo:.3}-{hi:.3}); slimc {:.2} ms, onnxruntime {:.2} ms",
        median(&mut ratios),
        median(&mut ts),
        median(&mut to)
    );
}

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
        match slimc::commands::verify::OrtSession::new(&path) {
            Ok(mut s) => {
                group.bench_function(format!("onnxruntime/{size}"), |b| b.iter(|| s.run(&x).unwrap()));
                // Not under `cargo test`, which runs each benchmark once to check that it runs.
                if !std::env::args().any(|a| a == "--bench") {
                    continue;
                }
                paired(
                    size,
                    || {
                        exe.run_in_order(std::slice::from_ref(&x)).unwrap();
                    },
                    || {
                        s.run(&x).unwrap();
                    },
                );
            }
            Err(e) => eprintln!("skipping onnxruntime at {size}: {e}"),
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
