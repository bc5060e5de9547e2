//! Max pooling and its gradient.

use super::buffers::{sized, zeroed};
use super::simd::simd_fn;
use rayon::prelude::*;
use slimc_ir::eval::nn::window_out;

/// 2-D max pooling with -inf padding into `out`; returns the output shape. Separable, as the
/// maximum is exact in any order: each plane's rows are pooled across their window first, then
/// the pooled rows down theirs (whole rows at a time, vectorised).
pub fn max_pool2d(
    out: &mut Vec<f32>,
    x: &[f32],
    xs: &[usize],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 4],
) -> Vec<usize> {
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let oh = window_out(h, k[0], s[0], 1, p[0], p[2]);
    let ow = window_out(w, k[1], s[1], 1, p[1], p[3]);
    let out = sized(out, n * c * oh * ow);
    if out.is_empty() {
        return vec![n, c, oh, ow];
    }
    // The window of output position `o` along an axis of `len` inputs, clamped to the input.
    let window = |o: usize, k: usize, s: usize, p: usize, len: usize| {
        let a = (o * s) as isize - p as isize;
        (a.max(0) as usize, ((a + k as isize).max(0) as usize).min(len))
    };
    out.par_chunks_mut(oh * ow).enumerate().for_each_init(Vec::new, |rows, (plane, dst)| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        rows.clear();
        rows.resize(h * ow, f32::NEG_INFINITY);
        for (row, pooled) in src.chunks(w).zip(rows.chunks_mut(ow)) {
            for (ox, m) in pooled.iter_mut().enumerate() {
                let (a, b) = window(ox, k[1], s[1], p[1], w);
                *m = row[a.min(b)..b].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            }
        }
        for (oy, o) in dst.chunks_mut(ow).enumerate() {
            o.fill(f32::NEG_INFINITY);
            let (a, b) = window(oy, k[0], s[0], p[0], h);
            for iy in a..b.max(a) {
                max_into(o, &rows[iy * ow..(iy + 1) * ow]);
            }
        }
    });
    vec![n, c, oh, ow]
}

simd_fn! {
    /// `o = max(o, x)`, elementwise.
    fn max_into(o: &mut [f32], x: &[f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = o.max(v);
        }
    }
}

/// The gradient of 2-D max pooling: each output's gradient goes to the first maximum of its
/// window in scan order (as PyTorch picks its index). Into `dx`.
pub fn max_pool2d_grad(
    dx: &mut Vec<f32>,
    dy: &[f32],
    x: &[f32],
    xs: &[usize],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 4],
) {
    let (h, w) = (xs[2], xs[3]);
    let oh = window_out(h, k[0], s[0], 1, p[0], p[2]);
    let ow = window_out(w, k[1], s[1], 1, p[1], p[3]);
    let dx = zeroed(dx, x.len());
    dx.par_chunks_mut(h * w).enumerate().for_each(|(plane, dst)| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        let g = &dy[plane * oh * ow..(plane + 1) * oh * ow];
        for oy in 0..oh {
            let y0 = (oy * s[0]) as isize - p[0] as isize;
            for ox in 0..ow {
                let x0 = (ox * s[1]) as isize - p[1] as isize;
                let (mut m, mut at) = (f32::NEG_INFINITY, usize::MAX);
                for iy in y0.max(0)..(y0 + k[0] as isize).min(h as isize) {
                    for ix in x0.max(0)..(x0 + k[1] as isize).min(w as isize) {
                        let i = iy as usize * w + ix as usize;
                        if src[i] > m || at == usize::MAX {
                            (m, at) = (src[i], i);
                        }
                    }
                }
                if at != usize::MAX {
                    dst[at] += g[oy * ow + ox];
                }
            }
        }
    });
}
