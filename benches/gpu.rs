//! Convolution throughput of the GPU backend, with each of its convolution lowerings (tiled
//! implicit GEMM, packed im2col + GEMM), against the CPU backend, side by side in one run:
//! forward, input gradient and weight gradient on yolo11n's layer shapes (imgsz 320, batch 1),
//! in GFLOP/s (2·MACs over the median of 3 timed runs after a warm-up run; each run includes
//! uploading the operands and reading the result back, as a one-node program does).
//!
//! Run: `cargo bench --bench gpu` (the GPU is the best adapter: lavapipe where there is no GPU;
//! `. scripts/setup.sh` first); with `GPU_PEAK_TFLOPS` set, the best GPU forward rate is also
//! given as a share of that f32 peak. Prints a table; nothing is asserted. Under `cargo test` (no
//! `--bench` argument) it runs the pointwise layer only, to check the bench runs.

#[path = "../tests/common/single_op.rs"]
mod single_op;

use single_op::single_op;
use slimc::backend::{
    cpu::Cpu,
    gpu::{ConvLowering, Gpu},
    Backend,
};
use slimc_ir::{Conv2d, Op, Tensor};
use std::time::Instant;

/// (what, input shape, weight shape, stride, padding, groups).
const LAYERS: &[(&str, [usize; 4], [usize; 4], usize, usize, usize)] = &[
    ("stem 3x3/2", [1, 3, 320, 320], [16, 3, 3, 3], 2, 1, 1),
    ("3x3/2 16->32", [1, 16, 160, 160], [32, 16, 3, 3], 2, 1, 1),
    ("3x3 64->64 @40", [1, 64, 40, 40], [64, 64, 3, 3], 1, 1, 1),
    ("3x3 128->128 @20", [1, 128, 20, 20], [128, 128, 3, 3], 1, 1, 1),
    ("1x1 256->256 @10", [1, 256, 10, 10], [256, 256, 1, 1], 1, 0, 1),
    ("3x3 depthwise 64 @40", [1, 64, 40, 40], [64, 1, 3, 3], 1, 1, 64),
];

/// Median seconds of one run of `op` on `args` on `backend`.
fn seconds(backend: &dyn Backend, op: &Op, args: &[Tensor]) -> f64 {
    let model = single_op(op, &args.iter().map(Tensor::ty).collect::<Vec<_>>()).unwrap();
    let mut exe = backend.compile(&model).unwrap();
    exe.run_in_order(args).unwrap();
    let mut t: Vec<f64> = (0..3)
        .map(|_| {
            let start = Instant::now();
            exe.run_in_order(args).unwrap();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[1]
}

fn main() {
    let gpu = Gpu::new().expect("a GPU adapter (scripts/setup.sh installs lavapipe)");
    let name = format!("{} ({})", gpu.adapter().name, gpu.adapter().backend);
    println!(
        "GFLOP/s, CPU backend vs GPU backend on {name} (its default: {:?}), {} CPU threads",
        gpu.conv(),
        rayon::current_num_threads()
    );
    let tiled = gpu.clone().with_conv(ConvLowering::Tiled);
    let packed = gpu.with_conv(ConvLowering::packed());
    let backends = [&Cpu as &dyn Backend, &tiled, &packed];
    let mut header = format!("{:<22} {:>8}", "layer", "GFLOP");
    for what in ["fwd", "dx", "dw"] {
        for backend in ["cpu", "tiled", "packed"] {
            header += &format!(" {:>10}", format!("{what} {backend}"));
        }
    }
    // The adapter's f32 peak in TFLOP/s, when known (benches/gpu_check.sh looks it up by name).
    let peak = std::env::var("GPU_PEAK_TFLOPS").ok().and_then(|v| v.parse::<f64>().ok());
    if peak.is_some() {
        header += &format!(" {:>10}", "fwd % peak");
    }
    println!("{header}");
    let layers = if std::env::args().any(|a| a == "--bench") { LAYERS } else { &LAYERS[4..5] };
    for &(what, xs, ws, stride, pad, groups) in layers {
        let c = Conv2d { stride: [stride; 2], pad: [pad; 4], dilation: [1; 2], groups };
        let (x, w) = (Tensor::full(&xs, 0.5), Tensor::full(&ws, 0.1));
        let oh = (xs[2] + 2 * pad - ws[2]) / stride + 1;
        let ow = (xs[3] + 2 * pad - ws[3]) / stride + 1;
        let dy = Tensor::full(&[xs[0], ws[0], oh, ow], 0.2);
        let gflop = 2.0 * (ws.iter().product::<usize>() * xs[0] * oh * ow) as f64 / 1e9;
        let ops = [
            (Op::Conv2d(c.clone()), vec![x.clone(), w.clone()]),
            (Op::Conv2dGradInput(c.clone()), vec![dy.clone(), w.clone(), x.clone()]),
            (Op::Conv2dGradWeight(c.clone()), vec![dy, x, w]),
        ];
        let mut row = format!("{what:<22} {gflop:>8.3}");
        let mut best_gpu_forward = 0.0f64;
        for (k, (op, args)) in ops.iter().enumerate() {
            for (b, backend) in backends.iter().enumerate() {
                let rate = gflop / seconds(*backend, op, args);
                if k == 0 && b > 0 {
                    best_gpu_forward = best_gpu_forward.max(rate);
                }
                row += &format!(" {rate:>10.2}");
            }
        }
        if let Some(p) = peak {
            row += &format!(" {:>9.2}%", 100.0 * best_gpu_forward / (p * 1e3));
        }
        println!("{row}");
    }
}
