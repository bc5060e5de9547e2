//! CPU kernels of the training ops: convolution gradients (GEMM with transposed operands and
//! col2im), training-mode batch norm and its gradient, max-pool and SiLU gradients.

use super::kernels::{
    column_tile, each_image, gemm_into, im2col, im2col_row, inside, out_size, per_channel, sized, zeroed, Mat, CHUNK,
};
use super::simd::{self, simd_fn};
use rayon::prelude::*;
use slimc_ir::eval::nn::{running_update, tap, ConvGeometry};
use slimc_ir::Conv2d;

/// The gradient of a convolution with respect to its input `[n, cin, h, w]`, into `dx`.
pub fn conv2d_grad_input(dx: &mut Vec<f32>, dy: &[f32], w: &[f32], ws: &[usize], xs: &[usize], c: &Conv2d) {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let dx = zeroed(dx, d.n * d.cin * hw);
    if d.depthwise() {
        // The forward's row-by-row taps, transposed: each tap adds its weight times a stretch of
        // an output-gradient row into the input-gradient row it read.
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dst)| {
            let k = &w[plane % d.cin * d.kh * d.kw..][..d.kh * d.kw];
            let src = &dy[plane * ohw..(plane + 1) * ohw];
            each_tap(c, &d, |oy, iy, r, lo, hi, first| {
                let (g, row) = (&src[oy * d.ow + lo..oy * d.ow + hi], &mut dst[iy * d.w..(iy + 1) * d.w]);
                if c.stride[1] == 1 {
                    simd::axpy(&mut row[first..first + g.len()], g, k[r]);
                } else {
                    row[first..].iter_mut().step_by(c.stride[1]).zip(g).for_each(|(o, &v)| *o += k[r] * v);
                }
            });
        });
        return;
    }
    let og = d.og;
    let kdim = d.cg * d.kh * d.kw;
    let pointwise = d.pointwise(c);
    let tile = (!pointwise).then(|| column_tile(kdim, ohw)).flatten();
    each_image(dx, d.n, d.cin * hw, |b, dx, col, par| {
        let col = sized(col, if pointwise { 0 } else { kdim * tile.unwrap_or(ohw) });
        for gi in 0..d.g {
            let wg = &w[gi * og * kdim..(gi + 1) * og * kdim];
            let dyg = &dy[(b * d.cout + gi * og) * ohw..(b * d.cout + (gi + 1) * og) * ohw];
            let dxg = &mut dx[gi * d.cg * hw..(gi + 1) * d.cg * hw];
            // col[kdim×ohw] = wgᵀ[kdim×og] · dy[og×ohw]
            if pointwise {
                gemm_into(kdim, ohw, og, Mat::transposed(wg, kdim), Mat::rows(dyg, ohw), dxg, false, par);
            } else if let Some(tile) = tile {
                // By cache-sized tiles of output positions, in order (tiles add into
                // overlapping input positions).
                for n0 in (0..ohw).step_by(tile) {
                    let nt = tile.min(ohw - n0);
                    let col = &mut col[..kdim * nt];
                    let dyt = Mat { data: &dyg[n0..], rs: ohw, cs: 1 };
                    gemm_into(kdim, nt, og, Mat::transposed(wg, kdim), dyt, col, false, par);
                    let kk = d.kh * d.kw;
                    for (row, r) in col.chunks(nt).enumerate() {
                        let plane = &mut dxg[row / kk * hw..(row / kk + 1) * hw];
                        col2im_row(r, c, &d, row % kk, n0, plane);
                    }
                }
            } else {
                gemm_into(kdim, ohw, og, Mat::transposed(wg, kdim), Mat::rows(dyg, ohw), col, false, par);
                col2im(col, c, &d, dxg, par);
            }
        }
    });
}

/// Calls `f(oy, iy, tap, lo, hi, first)` for every output row `oy` and every tap
/// (`ky·kw + kx`) that reads input row `iy`: output columns `lo..hi` read input columns
/// `first + (j − lo)·stride` of that row (the forward depthwise kernel's stretches).
fn each_tap(c: &Conv2d, d: &ConvGeometry, mut f: impl FnMut(usize, usize, usize, usize, usize, usize)) {
    for oy in 0..d.oh {
        for ky in 0..d.kh {
            let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], d.h) else { continue };
            for kx in 0..d.kw {
                let off = (kx * c.dilation[1]) as isize - c.pad[1] as isize;
                let (lo, hi) = inside(d.ow, c.stride[1], off, d.w);
                if lo < hi {
                    f(oy, iy, ky * d.kw + kx, lo, hi, ((lo * c.stride[1]) as isize + off) as usize);
                }
            }
        }
    }
}

/// Adds one row of the columns, tap `r` (of `kh·kw`) for the output positions
/// `first..first + src.len()` (row-major over `oh × ow`), back into its input plane `plane [h·w]`.
fn col2im_row(src: &[f32], c: &Conv2d, d: &ConvGeometry, r: usize, first: usize, plane: &mut [f32]) {
    let (ky, kx) = (r / d.kw, r % d.kw);
    let (stride, off) = (c.stride[1], (kx * c.dilation[1]) as isize - c.pad[1] as isize);
    let (lo, hi) = inside(d.ow, stride, off, d.w);
    let (mut p, end) = (first, first + src.len());
    while p < end {
        let (oy, ox0) = (p / d.ow, p % d.ow);
        let q = end.min((oy + 1) * d.ow);
        let ox1 = ox0 + (q - p);
        let from = &src[p - first..q - first];
        p = q;
        let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], d.h) else { continue };
        let (a, b) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
        if a >= b {
            continue;
        }
        let at = ((a * stride) as isize + off) as usize;
        let row = &mut plane[iy * d.w..(iy + 1) * d.w];
        let from = &from[a - ox0..b - ox0];
        if stride == 1 {
            simd::add_into(&mut row[at..at + from.len()], from);
        } else {
            for (k, &v) in from.iter().enumerate() {
                row[at + k * stride] += v;
            }
        }
    }
}

/// Adds the columns `col [cg·kh·kw × oh·ow]` back into the input planes `dx [cg × h·w]`, planes
/// in parallel with `par`.
fn col2im(col: &[f32], c: &Conv2d, d: &ConvGeometry, dx: &mut [f32], par: bool) {
    let (kk, ohw) = (d.kh * d.kw, d.oh * d.ow);
    let plane = |(ci, plane): (usize, &mut [f32])| {
        for r in 0..kk {
            col2im_row(&col[(ci * kk + r) * ohw..(ci * kk + r + 1) * ohw], c, d, r, 0, plane);
        }
    };
    if par {
        dx.par_chunks_mut(d.h * d.w).enumerate().for_each(plane);
    } else {
        dx.chunks_mut(d.h * d.w).enumerate().for_each(plane);
    }
}

/// Image groups of the weight gradient: each group sums its images' products into its own
/// partial, and the partials are added in group order, so the result does not depend on how many
/// threads run them.
const WEIGHT_GRAD_GROUPS: usize = 8;

/// The gradient of a convolution with respect to its weight `ws`, summed over the batch, into
/// `dw`; `partial` is scratch for the image groups' partial sums.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_grad_weight(
    dw: &mut Vec<f32>,
    partial: &mut Vec<f32>,
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
        // Each tap's weight gradient: dot products of output-gradient rows with the input rows
        // the tap read, over the batch.
        let dw = zeroed(dw, d.cout * kk);
        dw.par_chunks_mut(kk).enumerate().for_each(|(ci, k)| {
            for b in 0..d.n {
                let plane = b * d.cin + ci;
                let (src, g) = (&x[plane * hw..(plane + 1) * hw], &dy[plane * ohw..(plane + 1) * ohw]);
                each_tap(c, &d, |oy, iy, r, lo, hi, first| {
                    let (g, row) = (&g[oy * d.ow + lo..oy * d.ow + hi], &src[iy * d.w..(iy + 1) * d.w]);
                    k[r] += if c.stride[1] == 1 {
                        simd::dot(g, &row[first..first + g.len()])
                    } else {
                        g.iter().zip(row[first..].iter().step_by(c.stride[1])).map(|(a, b)| a * b).sum()
                    };
                });
            }
        });
        return;
    }
    let og = d.og;
    let kdim = d.cg * kk;
    let pointwise = d.pointwise(c);
    let len = d.cout * kdim;
    let groups = d.n.clamp(1, WEIGHT_GRAD_GROUPS);
    let per_group = d.n.div_ceil(groups);
    // Group `k` sums images k·per_group.. into its partial.
    let tile = (!pointwise).then(|| column_tile(kdim, ohw)).flatten();
    let group = |k: usize, dst: &mut [f32], col: &mut Vec<f32>, par: bool| {
        let col = sized(col, if pointwise { 0 } else { kdim * tile.unwrap_or(ohw) });
        for (j, b) in (k * per_group..((k + 1) * per_group).min(d.n)).enumerate() {
            for gi in 0..d.g {
                let xg = &x[(b * d.cin + gi * d.cg) * hw..(b * d.cin + (gi + 1) * d.cg) * hw];
                let dyg = &dy[(b * d.cout + gi * og) * ohw..(b * d.cout + (gi + 1) * og) * ohw];
                if let Some(tile) = tile {
                    // dw[og×kdim] (+)= dy[og×tile] · colᵀ[tile×kdim], tile by tile in order.
                    let dst = &mut dst[gi * og * kdim..(gi + 1) * og * kdim];
                    for (t, n0) in (0..ohw).step_by(tile).enumerate() {
                        let nt = tile.min(ohw - n0);
                        let col = &mut col[..kdim * nt];
                        for (row, r) in col.chunks_mut(nt).enumerate() {
                            im2col_row(xg, c, [d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], row, n0, r);
                        }
                        let dyt = Mat { data: &dyg[n0..], rs: ohw, cs: 1 };
                        gemm_into(og, kdim, nt, dyt, Mat::transposed(col, nt), dst, j > 0 || t > 0, par);
                    }
                    continue;
                }
                let rhs: &[f32] = if pointwise {
                    xg
                } else {
                    im2col(xg, c, [d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], col, par);
                    col
                };
                // dw[og×kdim] (+)= dy[og×ohw] · colᵀ[ohw×kdim]
                let dst = &mut dst[gi * og * kdim..(gi + 1) * og * kdim];
                gemm_into(og, kdim, ohw, Mat::rows(dyg, ohw), Mat::transposed(rhs, ohw), dst, j > 0, par);
            }
        }
    };
    let dw = sized(dw, len);
    if groups == 1 {
        each_image(dw, 1, len, group);
        return;
    }
    let parts = sized(partial, groups * len);
    let used = d.n.div_ceil(per_group);
    each_image(&mut parts[..used * len], used, len, group);
    let parts = &parts[..used * len];
    dw.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let at = i * CHUNK;
        o.copy_from_slice(&parts[at..at + o.len()]);
        for k in 1..used {
            simd::add_into(o, &parts[k * len + at..k * len + at + o.len()]);
        }
    });
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

/// Per-channel `(Σa, Σa·b)` over the batch and spatial axes of NCHW-like tensors, in f64, in
/// parallel over channels.
fn channel_sums(shape: &[usize], a: &[f32], b: &[f32]) -> Vec<[f64; 2]> {
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = [0.0f64; 2];
            for i in 0..n {
                let at = (i * c + ch) * inner;
                let [s, d] = simd::sum_and_dot(&a[at..at + inner], &b[at..at + inner]);
                acc = [acc[0] + s, acc[1] + d];
            }
            acc
        })
        .collect()
}

/// Training-mode batch norm over axis 1 (batch statistics; PyTorch's running-statistic update),
/// the output into `y`. One pass gathers each channel's sum and sum of squares (in f64), one
/// applies the normalisation.
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
    let count = (x.len() / shape[1].max(1)) as f64;
    let sums = channel_sums(shape, x, x);
    let mean: Vec<f64> = sums.iter().map(|s| s[0] / count).collect();
    let var: Vec<f64> = sums.iter().zip(&mean).map(|(s, &m)| (s[1] / count - m * m).max(0.0)).collect();
    let invstd: Vec<f32> = var.iter().map(|&v| (1.0 / (v + eps as f64).sqrt()) as f32).collect();
    let coef: Vec<[f32; 3]> = (0..shape[1])
        .map(|ch| {
            let s = gamma[ch] as f64 * invstd[ch] as f64;
            [s as f32, 0.0, (beta[ch] as f64 - mean[ch] * s) as f32]
        })
        .collect();
    per_channel(sized(y, x.len()), shape, x, None, &coef);
    let [running_mean, running_var] =
        running_update(running_mean, running_var, &mean, &var, x.len() / shape[1].max(1), momentum);
    BnStats { mean: mean.iter().map(|&v| v as f32).collect(), invstd, running_mean, running_var }
}

/// The gradient of training-mode batch norm: `dx` into its buffer, `(dgamma, dbeta)` returned.
/// One pass gathers `Σdy` and `Σdy·x` per channel; `dx` is then `a·dy + b·x + c` per channel.
pub fn batch_norm_grad(
    dx: &mut Vec<f32>,
    dy: &[f32],
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let count = (x.len() / shape[1].max(1)) as f64;
    let sums = channel_sums(shape, dy, x);
    let (mut dgamma, mut dbeta) = (vec![], vec![]);
    let coef: Vec<[f32; 3]> = sums
        .iter()
        .enumerate()
        .map(|(ch, &[sdy, sdyx])| {
            let (m, r) = (mean[ch] as f64, invstd[ch] as f64);
            // dγ = Σ dy·x̂ = r·(Σdy·x − m·Σdy); dx = k·(N·dy − dβ − x̂·dγ) with k = γ·r/N.
            let dg = r * (sdyx - m * sdy);
            dgamma.push(dg as f32);
            dbeta.push(sdy as f32);
            let k = gamma[ch] as f64 * r / count;
            [(k * count) as f32, (-k * dg * r) as f32, (k * (dg * r * m - sdy)) as f32]
        })
        .collect();
    per_channel(sized(dx, x.len()), shape, dy, Some(x), &coef);
    (dgamma, dbeta)
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
