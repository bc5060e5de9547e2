//! The gradients of a convolution: with respect to its input (the direct kernel where it runs,
//! else GEMM with the weight and col2im) and to its weight (im2col and GEMM, summed over the
//! batch in a fixed order).

use super::buffers::{each_image, scratch, sized, zeroed, CHUNK};
use super::conv::{column_tile, im2col, im2col_row, inside};
use super::direct;
use super::gemm::{gemm_into, Mat};
use super::simd;
use rayon::prelude::*;
use slimc_ir::eval::nn::{tap, ConvGeometry};
use slimc_ir::Conv2d;

/// The gradient of a convolution with respect to its input `[n, cin, h, w]`, into `dx`.
pub fn conv2d_grad_input(dx: &mut Vec<f32>, dy: &[f32], w: &[f32], ws: &[usize], xs: &[usize], c: &Conv2d) {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    if !d.depthwise() && direct::grad_input(sized(dx, d.n * d.cin * hw), dy, w, &d, c) {
        return;
    }
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
        let col = scratch(col, if pointwise { 0 } else { kdim * tile.unwrap_or(ohw) });
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
        let col = scratch(col, if pointwise { 0 } else { kdim * tile.unwrap_or(ohw) });
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
