//! CPU kernels of the training ops: convolution gradients (GEMM with transposed operands and
//! col2im), training-mode batch norm and its gradient, max-pool and SiLU gradients.

use super::kernels::{gemm_into, im2col, out_size, sized, zeroed, Mat};
use rayon::prelude::*;
use slimc_ir::eval::nn::{tap, ConvGeometry};
use slimc_ir::Conv2d;

/// The gradient of a convolution with respect to its input `[n, cin, h, w]`, into `dx`; `col`
/// is scratch.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_grad_input(
    dx: &mut Vec<f32>,
    col: &mut Vec<f32>,
    dy: &[f32],
    w: &[f32],
    ws: &[usize],
    xs: &[usize],
    c: &Conv2d,
) {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let dx = zeroed(dx, d.n * d.cin * hw);
    if d.depthwise() {
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dst)| {
            let ci = plane % d.cin;
            let src = &dy[plane * ohw..(plane + 1) * ohw];
            let k = &w[ci * d.kh * d.kw..(ci + 1) * d.kh * d.kw];
            for oy in 0..d.oh {
                for ky in 0..d.kh {
                    let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], d.h) else { continue };
                    for ox in 0..d.ow {
                        let g = src[oy * d.ow + ox];
                        for kx in 0..d.kw {
                            if let Some(ix) = tap(ox, kx, c.stride[1], c.dilation[1], c.pad[1], d.w) {
                                dst[iy * d.w + ix] += g * k[ky * d.kw + kx];
                            }
                        }
                    }
                }
            }
        });
        return;
    }
    let og = d.og;
    let kdim = d.cg * d.kh * d.kw;
    let pointwise = d.pointwise(c);
    let col = sized(col, if pointwise { 0 } else { kdim * ohw });
    for b in 0..d.n {
        for gi in 0..d.g {
            let wg = &w[gi * og * kdim..(gi + 1) * og * kdim];
            let dyg = &dy[(b * d.cout + gi * og) * ohw..(b * d.cout + (gi + 1) * og) * ohw];
            let dxg = &mut dx[(b * d.cin + gi * d.cg) * hw..(b * d.cin + (gi + 1) * d.cg) * hw];
            // col[kdim×ohw] = wgᵀ[kdim×og] · dy[og×ohw]
            if pointwise {
                gemm_into(kdim, ohw, og, Mat::transposed(wg, kdim), Mat::rows(dyg, ohw), dxg, false);
            } else {
                gemm_into(kdim, ohw, og, Mat::transposed(wg, kdim), Mat::rows(dyg, ohw), col, false);
                col2im(col, c, &d, dxg);
            }
        }
    }
}

/// Adds the columns `col [cg·kh·kw × oh·ow]` back into the input planes `dx [cg × h·w]`.
fn col2im(col: &[f32], c: &Conv2d, d: &ConvGeometry, dx: &mut [f32]) {
    let (kk, ohw) = (d.kh * d.kw, d.oh * d.ow);
    dx.par_chunks_mut(d.h * d.w).enumerate().for_each(|(ci, plane)| {
        for r in 0..kk {
            let (ky, kx) = (r / d.kw, r % d.kw);
            let src = &col[(ci * kk + r) * ohw..(ci * kk + r + 1) * ohw];
            for oy in 0..d.oh {
                let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], d.h) else { continue };
                let row = &mut plane[iy * d.w..(iy + 1) * d.w];
                for ox in 0..d.ow {
                    if let Some(ix) = tap(ox, kx, c.stride[1], c.dilation[1], c.pad[1], d.w) {
                        row[ix] += src[oy * d.ow + ox];
                    }
                }
            }
        }
    });
}

/// The gradient of a convolution with respect to its weight `ws`, summed over the batch, into
/// `dw`; `col` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_grad_weight(
    dw: &mut Vec<f32>,
    col: &mut Vec<f32>,
    dy: &[f32],
    x: &[f32],
    xs: &[usize],
    ws: &[usize],
    c: &Conv2d,
) {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let kk = d.kh * d.kw;
    if d.depthwise() {
        let dw = zeroed(dw, d.cout * kk);
        dw.par_chunks_mut(kk).enumerate().for_each(|(ci, k)| {
            for b in 0..d.n {
                let plane = b * d.cin + ci;
                let src = &x[plane * hw..(plane + 1) * hw];
                let g = &dy[plane * ohw..(plane + 1) * ohw];
                for (r, kv) in k.iter_mut().enumerate() {
                    let (ky, kx) = (r / d.kw, r % d.kw);
                    let mut acc = 0.0f32;
                    for oy in 0..d.oh {
                        let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], d.h) else {
                            continue;
                        };
                        for ox in 0..d.ow {
                            if let Some(ix) = tap(ox, kx, c.stride[1], c.dilation[1], c.pad[1], d.w) {
                                acc += g[oy * d.ow + ox] * src[iy * d.w + ix];
                            }
                        }
                    }
                    *kv += acc;
                }
            }
        });
        return;
    }
    let og = d.og;
    let kdim = d.cg * kk;
    let pointwise = d.pointwise(c);
    let col = sized(col, if pointwise { 0 } else { kdim * ohw });
    let dw = zeroed(dw, d.cout * kdim);
    for b in 0..d.n {
        for gi in 0..d.g {
            let xg = &x[(b * d.cin + gi * d.cg) * hw..(b * d.cin + (gi + 1) * d.cg) * hw];
            let dyg = &dy[(b * d.cout + gi * og) * ohw..(b * d.cout + (gi + 1) * og) * ohw];
            let rhs: &[f32] = if pointwise {
                xg
            } else {
                im2col(xg, c, [d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], col);
                col
            };
            // dw[og×kdim] += dy[og×ohw] · colᵀ[ohw×kdim]
            let dst = &mut dw[gi * og * kdim..(gi + 1) * og * kdim];
            gemm_into(og, kdim, ohw, Mat::rows(dyg, ohw), Mat::transposed(rhs, ohw), dst, b > 0);
        }
    }
}

/// The per-channel results of [`batch_norm_train`].
pub struct BnStats {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// `1/sqrt(biased batch variance + eps)` per channel.
    pub invstd: Vec<f32>,
    /// Next running mean.
    pub running_mean: Vec<f32>,
    /// Next running variance (updated with the unbiased batch variance).
    pub running_var: Vec<f32>,
}

/// Per-channel sums of `f(i, value)` over the batch and spatial axes of an NCHW-like tensor.
fn channel_sums(shape: &[usize], f: impl Fn(usize, f32, usize) -> f64 + Sync, x: &[f32]) -> Vec<f64> {
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = 0.0f64;
            for b in 0..n {
                let at = (b * c + ch) * inner;
                for (j, &v) in x[at..at + inner].iter().enumerate() {
                    acc += f(ch, v, at + j);
                }
            }
            acc
        })
        .collect()
}

/// Training-mode batch norm over axis 1 (batch statistics; PyTorch's running-statistic update),
/// the output into `y`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    y: &mut Vec<f32>,
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    momentum: f32,
) -> BnStats {
    let c = shape[1];
    let count = x.len() / c.max(1);
    let mean: Vec<f64> = channel_sums(shape, |_, v, _| v as f64, x).into_iter().map(|s| s / count as f64).collect();
    let var: Vec<f64> = channel_sums(shape, |ch, v, _| (v as f64 - mean[ch]).powi(2), x)
        .into_iter()
        .map(|s| s / count as f64)
        .collect();
    let invstd: Vec<f32> = var.iter().map(|&v| (1.0 / (v + eps as f64).sqrt()) as f32).collect();
    let inner: usize = shape[2..].iter().product();
    let y = sized(y, x.len());
    y.par_chunks_mut(inner.max(1)).zip(x.par_chunks(inner.max(1))).enumerate().for_each(|(i, (dst, src))| {
        let ch = i % c;
        let (s, m) = (gamma[ch] * invstd[ch], mean[ch] as f32);
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = (v - m) * s + beta[ch];
        }
    });
    let unbiased = count as f64 / (count.max(2) - 1) as f64;
    let m = momentum as f64;
    BnStats {
        mean: mean.iter().map(|&v| v as f32).collect(),
        invstd,
        running_mean: running_mean.iter().zip(&mean).map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b) as f32).collect(),
        running_var: running_var
            .iter()
            .zip(&var)
            .map(|(&r, &v)| ((1.0 - m) * r as f64 + m * v * unbiased) as f32)
            .collect(),
    }
}

/// The gradient of training-mode batch norm: `dx` into its buffer, `(dgamma, dbeta)` returned.
pub fn batch_norm_grad(
    dx: &mut Vec<f32>,
    dy: &[f32],
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = shape[1];
    let count = (x.len() / c.max(1)) as f64;
    let dbeta = channel_sums(shape, |_, g, _| g as f64, dy);
    let dgamma = channel_sums(shape, |ch, g, i| g as f64 * ((x[i] - mean[ch]) * invstd[ch]) as f64, dy);
    let inner: usize = shape[2..].iter().product();
    let dx = sized(dx, x.len());
    dx.par_chunks_mut(inner.max(1)).enumerate().for_each(|(i, dst)| {
        let ch = i % c;
        let at = i * inner;
        let k = gamma[ch] as f64 * invstd[ch] as f64 / count;
        for (j, o) in dst.iter_mut().enumerate() {
            let xhat = ((x[at + j] - mean[ch]) * invstd[ch]) as f64;
            *o = (k * (count * dy[at + j] as f64 - dbeta[ch] - xhat * dgamma[ch])) as f32;
        }
    });
    (dgamma.into_iter().map(|v| v as f32).collect(), dbeta.into_iter().map(|v| v as f32).collect())
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
    let oh = out_size(h, k[0], s[0], 1, p[0], p[2]);
    let ow = out_size(w, k[1], s[1], 1, p[1], p[3]);
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

/// The gradient of SiLU into `dx`, in parallel: `dy·s·(1 + x·(1 − s))`.
pub fn silu_grad(dx: &mut Vec<f32>, dy: &[f32], x: &[f32]) {
    let dx = sized(dx, x.len());
    dx.par_chunks_mut(1 << 14).zip(dy.par_chunks(1 << 14).zip(x.par_chunks(1 << 14))).for_each(|(o, (dy, x))| {
        for ((o, &g), &v) in o.iter_mut().zip(dy).zip(x) {
            let s = 1.0 / (1.0 + (-v).exp());
            *o = g * s * (1.0 + v * (1.0 - s));
        }
    });
}
