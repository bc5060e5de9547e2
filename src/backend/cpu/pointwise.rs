//! Elementwise kernels: activations and their gradients, broadcast arithmetic, softmax.

use super::buffers::{sized, Block, CHUNK};
use super::layout::row_start;
use super::simd::{self, simd_fn};
use rayon::prelude::*;
use slimc_ir::Binary;

/// Inner positions per task of [`softmax`].
const SOFTMAX_BLOCK: usize = 512;

/// Softmax along `axis` into `out`: each task takes one outer index and a block of inner
/// positions and runs the max, the exponentials, the sum and the division across the block's
/// positions at once (in the reference's order along the axis for each position).
pub fn softmax(out: &mut Vec<f32>, x: &[f32], shape: &[usize], axis: usize) {
    let n = shape[axis];
    let inner = shape[axis + 1..].iter().product::<usize>();
    let outer = shape[..axis].iter().product::<usize>();
    let out = sized(out, x.len());
    if n == 0 || inner == 0 {
        return;
    }
    if inner == 1 {
        // Rows along the last axis: contiguous, several per task.
        out.par_chunks_mut(n * (CHUNK / n).max(1)).zip(x.par_chunks(n * (CHUNK / n).max(1))).for_each(|(o, x)| {
            for (o, x) in o.chunks_mut(n).zip(x.chunks(n)) {
                let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                exp_minus(o, x, m);
                let sum: f32 = o.iter().sum();
                divide_by(o, sum);
            }
        });
        return;
    }
    let dst = Block(out.as_mut_ptr());
    let blocks = inner.div_ceil(SOFTMAX_BLOCK);
    (0..outer * blocks).into_par_iter().for_each(|task| {
        let (o, b) = (task / blocks, task % blocks);
        let (i0, i1) = (b * SOFTMAX_BLOCK, inner.min((b + 1) * SOFTMAX_BLOCK));
        let w = i1 - i0;
        let base = o * n * inner + i0;
        let dst = dst;
        let mut m = vec![f32::NEG_INFINITY; w];
        for k in 0..n {
            let row = &x[base + k * inner..base + k * inner + w];
            m.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
        }
        let mut sum = vec![0.0f32; w];
        // SAFETY: this task alone writes positions i0..i1 of outer index o, at every k.
        let at = |k: usize| unsafe { std::slice::from_raw_parts_mut(dst.0.add(base + k * inner), w) };
        for k in 0..n {
            let row = &x[base + k * inner..base + k * inner + w];
            exp_shifted(at(k), row, &m, &mut sum);
        }
        for k in 0..n {
            divide(at(k), &sum);
        }
    });
}

simd_fn! {
    /// `o = exp(x − m)` and `s += o`, elementwise.
    fn exp_shifted(o: &mut [f32], x: &[f32], m: &[f32], s: &mut [f32]) {
        for (((o, &v), &m), s) in o.iter_mut().zip(x).zip(m).zip(s.iter_mut()) {
            *o = simd::exp(v - m);
            *s += *o;
        }
    }
}

simd_fn! {
    /// `o = exp(x − m)`.
    fn exp_minus(o: &mut [f32], x: &[f32], m: f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = simd::exp(v - m);
        }
    }
}

simd_fn! {
    /// `o /= s`.
    fn divide_by(o: &mut [f32], s: f32) {
        for o in o.iter_mut() {
            *o /= s;
        }
    }
}

simd_fn! {
    /// `o /= s`, elementwise.
    fn divide(o: &mut [f32], s: &[f32]) {
        for (o, &s) in o.iter_mut().zip(s) {
            *o /= s;
        }
    }
}

simd_fn! {
    /// `o = x·sigmoid(x)` on one chunk.
    fn silu_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v / (1.0 + simd::exp(-v));
        }
    }
}

simd_fn! {
    /// `o = sigmoid(x)` on one chunk.
    fn sigmoid_chunk(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = simd::sigmoid(v);
        }
    }
}

/// `x * sigmoid(x)` into `out`, in parallel.
pub fn silu(out: &mut Vec<f32>, x: &[f32]) {
    let out = sized(out, x.len());
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| silu_chunk(o, x));
}

/// The logistic function into `out`, in parallel.
pub fn sigmoid(out: &mut Vec<f32>, x: &[f32]) {
    let out = sized(out, x.len());
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| sigmoid_chunk(o, x));
}

/// `o[j] = a[j·sa] ∘ b[j·sb]` for one row; the strides are 0 (a broadcast operand) or 1 in the
/// hot cases, which get loops the compiler vectorises.
#[inline(always)]
fn arith_row(o: &mut [f32], a: &[f32], sa: isize, b: &[f32], sb: isize, f: impl Fn(f32, f32) -> f32) {
    match (sa, sb) {
        (1, 1) => o.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = f(x, y)),
        (1, 0) => o.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x, b[0])),
        (0, 1) => o.iter_mut().zip(b).for_each(|(o, &y)| *o = f(a[0], y)),
        _ => o.iter_mut().enumerate().for_each(|(j, o)| *o = f(a[j * sa as usize], b[j * sb as usize])),
    }
}

/// `a ∘ b` with NumPy broadcasting to `shape` into `out`, by runs of whole rows of the last
/// axis in parallel; `sa`, `sb` are the operands' broadcast strides
/// (`slimc_ir::layout::broadcast_strides`).
pub fn arith(out: &mut Vec<f32>, op: Binary, a: &[f32], sa: &[isize], b: &[f32], sb: &[isize], shape: &[usize]) {
    let n: usize = shape.iter().product();
    let out = sized(out, n);
    if n == 0 {
        return;
    }
    let last = shape.last().copied().unwrap_or(1);
    let (la, lb) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
    let rows_per_task = (CHUNK / last).max(1);
    out.par_chunks_mut(rows_per_task * last).enumerate().for_each(|(t, dst)| {
        for (k, o) in dst.chunks_mut(last).enumerate() {
            let row = t * rows_per_task + k;
            let (ia, ib) = (row_start(row, shape, sa), row_start(row, shape, sb));
            let (x, y) = (&a[ia as usize..], &b[ib as usize..]);
            match op {
                Binary::Add => arith_row(o, x, la, y, lb, |p, q| p + q),
                Binary::Sub => arith_row(o, x, la, y, lb, |p, q| p - q),
                Binary::Mul => arith_row(o, x, la, y, lb, |p, q| p * q),
                Binary::Div => arith_row(o, x, la, y, lb, |p, q| p / q),
            }
        }
    });
}

simd_fn! {
    /// The SiLU gradient on one chunk.
    fn silu_grad_chunk(o: &mut [f32], dy: &[f32], x: &[f32]) {
        for ((o, &g), &v) in o.iter_mut().zip(dy).zip(x) {
            let s = simd::sigmoid(v);
            *o = g * s * (1.0 + v * (1.0 - s));
        }
    }
}

/// The gradient of SiLU into `dx`, in parallel: `dy·s·(1 + x·(1 − s))`.
pub fn silu_grad(dx: &mut Vec<f32>, dy: &[f32], x: &[f32]) {
    let dx = sized(dx, x.len());
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(o, (dy, x))| silu_grad_chunk(o, dy, x));
}
