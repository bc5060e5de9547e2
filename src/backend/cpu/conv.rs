//! Convolution: im2col + GEMM (tiled to the cache for large images) where the direct kernel
//! ([`super::direct`]) does not run, pointwise convolutions as plain products, depthwise as
//! direct loops. Its gradients are in [`super::conv_grad`].

use super::buffers::{each_image, scratch, sized, with_scratch, Block};
use super::direct;
use super::epilogue::{with_bias, Epilogue};
use super::gemm::{gemm_into, sgemm, Mat};
use super::layout::strided_copy;
use super::simd::simd_fn;
use rayon::prelude::*;
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::Conv2d;

/// 2-D convolution into `out`, then its bias and `epi`. `x` is `[n, cin, h, w]`, `w` is
/// `[cout, cin/groups, kh, kw]`. Returns the output shape `[n, cout, oh, ow]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    out: &mut Vec<f32>,
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    c: &Conv2d,
    epi: Option<Epilogue>,
) -> Vec<usize> {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let out = sized(out, d.n * d.cout * ohw);
    let epi = with_bias(epi, bias, d.cout);
    let epi = epi.as_ref();
    if d.depthwise() {
        depthwise(x, w, c, [d.n, d.cin, d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], out, epi);
    } else if direct::applies(&d, c) {
        direct::conv_direct(x, w, c, &d, out, epi);
    } else {
        let (og, cg) = (d.og, d.cg);
        let kdim = cg * d.kh * d.kw;
        let pointwise = d.pointwise(c);
        let tile = (!pointwise).then(|| column_tile(kdim, ohw)).flatten();
        each_image(out, d.n, d.cout * ohw, |b, out, col, par| {
            let col = scratch(col, if pointwise || tile.is_some() { 0 } else { kdim * ohw });
            for gi in 0..d.g {
                let xg = &x[(b * d.cin + gi * cg) * hw..(b * d.cin + (gi + 1) * cg) * hw];
                let wg = &w[gi * og * kdim..(gi + 1) * og * kdim];
                let dst = &mut out[gi * og * ohw..(gi + 1) * og * ohw];
                if let Some(tile) = tile {
                    conv_tiled(xg, wg, c, &d, tile, dst, par, epi.map(|e| (e, gi * og)));
                    continue;
                }
                let rhs: &[f32] = if pointwise {
                    xg
                } else {
                    im2col(xg, c, [d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], col, par);
                    col
                };
                sgemm(og, ohw, kdim, wg, rhs, dst, par);
            }
            // The image's result while it is in this core's cache (the tiles applied their own).
            if let (Some(e), None) = (epi, tile) {
                e.planes(out, ohw, par);
            }
        });
    }
    vec![d.n, d.cout, d.oh, d.ow]
}

/// A pointwise convolution of the concatenation of `parts` along channels (`channels[i]` of
/// them in part `i`, all `[n, ·, h, w]`) into `out` of `shape` `[n, cout, h, w]`: the sum of
/// each part times its columns of `w [cout, Σ channels]`, image by image.
pub fn conv_pointwise_parts(
    out: &mut Vec<f32>,
    parts: &[&[f32]],
    channels: &[usize],
    w: &[f32],
    bias: Option<&[f32]>,
    shape: &[usize],
    epi: Option<Epilogue>,
) {
    let (n, cout, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let cin: usize = channels.iter().sum();
    let out = sized(out, n * cout * hw);
    let epi = with_bias(epi, bias, cout);
    each_image(out, n, cout * hw, |b, dst, _, par| {
        let mut k0 = 0;
        for (p, &c) in parts.iter().zip(channels) {
            let a = Mat { data: &w[k0..], rs: cin, cs: 1 };
            gemm_into(cout, hw, c, a, Mat::rows(&p[b * c * hw..(b + 1) * c * hw], hw), dst, k0 > 0, par);
            k0 += c;
        }
        if let Some(e) = &epi {
            e.planes(dst, hw, par);
        }
    });
}

/// The output positions `lo..hi` (of `n`) whose input index `o·stride + off` lies in `0..size`.
pub(crate) fn inside(n: usize, stride: usize, off: isize, size: usize) -> (usize, usize) {
    let s = stride as isize;
    // o ≥ ceil(−off / s) and o·s + off ≤ size − 1.
    let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
    let hi = if (size as isize) - 1 - off < 0 { 0 } else { (((size as isize - 1 - off) / s) + 1) as usize };
    let hi = hi.min(n);
    (lo.min(hi), hi)
}

/// Unfolds the input planes `x [cg × h·w]` into `col [cg·kh·kw × oh·ow]`, rows in parallel
/// with `par`.
pub(crate) fn im2col(x: &[f32], c: &Conv2d, hw: [usize; 2], k: [usize; 2], o: [usize; 2], col: &mut [f32], par: bool) {
    let n = o[0] * o[1];
    let row = |(row, dst): (usize, &mut [f32])| im2col_row(x, c, hw, k, o, row, 0, dst);
    if par {
        col.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        col.chunks_mut(n).enumerate().for_each(row);
    }
}

/// Row `row` of the unfolded input (input channel `row / (kh·kw)`, tap `row % (kh·kw)`) for the
/// output positions `first..first + dst.len()` (row-major over `oh × ow`), into `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_row(
    x: &[f32],
    c: &Conv2d,
    [h, w]: [usize; 2],
    [kh, kw]: [usize; 2],
    [_, ow]: [usize; 2],
    row: usize,
    first: usize,
    dst: &mut [f32],
) {
    let (ci, r) = (row / (kh * kw), row % (kh * kw));
    let (ky, kx) = (r / kw, r % kw);
    let plane = &x[ci * h * w..(ci + 1) * h * w];
    let (stride, off) = (c.stride[1], (kx * c.dilation[1]) as isize - c.pad[1] as isize);
    // The output columns whose input column lies inside the plane: the same on every row.
    let (lo, hi) = inside(ow, stride, off, w);
    let end = first + dst.len();
    let (mut oy, mut p) = (first / ow, first);
    let (sy, dy) = (c.stride[0], (ky * c.dilation[0]) as isize - c.pad[0] as isize);
    let at = ((lo * stride) as isize + off).max(0) as usize;
    // Whole output rows (all but the stretch's first and last, usually): the same columns
    // from each input row, the few padded ones zeroed by plain loops (not a memset call each).
    if p % ow == 0 {
        while p + ow <= end {
            let d = &mut dst[p - first..p - first + ow];
            let iy = (oy * sy) as isize + dy;
            (oy, p) = (oy + 1, p + ow);
            if iy < 0 || iy >= h as isize || lo >= hi {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            d[..lo].iter_mut().for_each(|v| *v = 0.0);
            d[hi..].iter_mut().for_each(|v| *v = 0.0);
            strided_copy(&mut d[lo..hi], &src[at..], stride);
        }
    }
    while p < end {
        // Output row oy's stretch: columns ox0..ox1, positions p..q.
        let (ox0, ox1) = (p - oy * ow, ow.min(end - oy * ow));
        let q = oy * ow + ox1;
        let d = &mut dst[p - first..q - first];
        let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pad[0] as isize;
        (oy, p) = (oy + 1, q);
        if iy < 0 || iy >= h as isize {
            d.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
        let (a, b) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
        let b = b.max(a);
        d[..a - ox0].fill(0.0);
        d[b - ox0..].fill(0.0);
        let at = ((a * stride) as isize + off) as usize;
        strided_copy(&mut d[a - ox0..b - ox0], &src[at..], stride);
    }
}

/// Bytes of unfolded input per tile of a tiled convolution: about what a core's L2 holds.
const TILE_BYTES: usize = 256 << 10;

/// Output positions per tile when a convolution's unfolded input (`kdim × ohw`) is too large to
/// stay in cache (over four tiles' worth); at least 256, so each tile's product is still a
/// large one. None: unfold it whole.
pub(crate) fn column_tile(kdim: usize, ohw: usize) -> Option<usize> {
    (kdim * ohw * 4 > 4 * TILE_BYTES).then(|| (TILE_BYTES / (kdim * 4)).max(256))
}

thread_local! {
    /// Per-thread scratch of the tiled convolution's unfolded tile.
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One group of one image of a convolution, by tiles of `tile` output positions: each tile
/// unfolds its stretch of the input into a cache-sized scratch and multiplies it into its own
/// columns of `dst [og × ohw]`; tiles run in parallel with `par`.
/// `epi` with the group's first output channel: the epilogue each tile applies to its columns
/// while they are in cache.
#[allow(clippy::too_many_arguments)]
fn conv_tiled(
    xg: &[f32],
    wg: &[f32],
    c: &Conv2d,
    d: &ConvGeometry,
    tile: usize,
    dst: &mut [f32],
    par: bool,
    epi: Option<(&Epilogue, usize)>,
) {
    let (og, ohw, kdim) = (d.og, d.oh * d.ow, d.cg * d.kh * d.kw);
    assert!(dst.len() >= og * ohw && wg.len() >= og * kdim, "conv_tiled operand sizes");
    let block = Block(dst.as_mut_ptr());
    let run = |t: usize| {
        let (n0, n1) = (t * tile, ohw.min((t + 1) * tile));
        let nt = n1 - n0;
        with_scratch(&TILE, |buf| {
            let col = scratch(buf, kdim * nt);
            for (row, r) in col.chunks_mut(nt).enumerate() {
                im2col_row(xg, c, [d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], row, n0, r);
            }
            let block = block;
            // SAFETY: rows 0..og, columns n0..n1 of the og × ohw block `dst` checked above; no
            // other tile writes these columns.
            unsafe {
                gemm::gemm(
                    og,
                    nt,
                    kdim,
                    block.0.add(n0),
                    1,
                    ohw as isize,
                    false,
                    wg.as_ptr(),
                    1,
                    kdim as isize,
                    col.as_ptr(),
                    1,
                    nt as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if let Some((e, ch0)) = epi {
                for r in 0..og {
                    // SAFETY: row r's columns n0..n1 of `dst`, this tile's alone (above).
                    let o = unsafe { std::slice::from_raw_parts_mut(block.0.add(r * ohw + n0), nt) };
                    e.apply(ch0 + r, o);
                }
            }
        });
    };
    let tiles = ohw.div_ceil(tile);
    if par {
        (0..tiles).into_par_iter().for_each(run);
    } else {
        (0..tiles).for_each(run);
    }
}

/// Depthwise convolution, one plane per task: each output row accumulates, tap by tap, a
/// scaled input row over the output positions whose input lies inside the plane (a contiguous
/// `axpy` at stride 1), so no bounds are tested per element; `epi` applied to each plane.
#[allow(clippy::too_many_arguments)]
fn depthwise(
    x: &[f32],
    w: &[f32],
    c: &Conv2d,
    [_, ch, h, wi]: [usize; 4],
    [kh, kw]: [usize; 2],
    [oh, ow]: [usize; 2],
    out: &mut [f32],
    epi: Option<&Epilogue>,
) {
    // Per kernel column: the output columns whose input column is inside the row, and the first
    // input column they read (the same for every plane and row).
    let (s, dil) = (c.stride[1], c.dilation[1]);
    let cols: Vec<(usize, usize, usize)> = (0..kw)
        .map(|kx| {
            let off = (kx * dil) as isize - c.pad[1] as isize;
            let (lo, hi) = inside(ow, s, off, wi);
            (lo, hi, if lo < hi { ((lo * s) as isize + off) as usize } else { 0 })
        })
        .collect();
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
        let ci = plane % ch;
        let src = &x[plane * h * wi..(plane + 1) * h * wi];
        let k = &w[ci * kh * kw..(ci + 1) * kh * kw];
        depthwise_plane(dst, src, k, c, &cols, [h, wi, kh, kw, oh, ow]);
        if let Some(e) = epi {
            e.apply(ci, dst);
        }
    });
}

simd_fn! {
    /// One plane of a depthwise convolution (input `src [h × wi]`, taps `k [kh × kw]`, `cols` per
    /// kernel column as [`depthwise`] computes them, output
    /// `dst [oh × ow]`), row by row. At stride 1 the columns every tap reads inside the row go
    /// by blocks of 16 outputs held in registers across all taps; the others (the borders) tap
    /// by tap. Either way each output sums its taps in the same order.
    fn depthwise_plane(
        dst: &mut [f32],
        src: &[f32],
        k: &[f32],
        c: &Conv2d,
        cols: &[(usize, usize, usize)],
        dims: [usize; 6],
    ) {
        const V: usize = 16;
        let [h, wi, kh, kw, oh, ow] = dims;
        let s = c.stride[1];
        let (xl, xr) = cols.iter().fold((0, ow), |(l, r), &(lo, hi, _)| (l.max(lo), r.min(hi)));
        let blocks = if s == 1 && xr > xl { (xr - xl) / V } else { 0 };
        let (bl, br) = (xl, xl + blocks * V);
        let rows = |oy: usize| {
            (0..kh).filter_map(move |ky| {
                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pad[0] as isize;
                (iy >= 0 && iy < h as isize).then(|| (ky, &src[iy as usize * wi..(iy as usize + 1) * wi]))
            })
        };
        for oy in 0..oh {
            let d = &mut dst[oy * ow..(oy + 1) * ow];
            d.iter_mut().for_each(|v| *v = 0.0);
            for b in 0..blocks {
                let x0 = bl + b * V;
                let mut acc = [0.0f32; V];
                for (ky, row) in rows(oy) {
                    for (kx, &(lo, _, first)) in cols.iter().enumerate() {
                        let a = k[ky * kw + kx];
                        let r = &row[first + x0 - lo..first + x0 - lo + V];
                        for j in 0..V {
                            acc[j] += a * r[j];
                        }
                    }
                }
                d[x0..x0 + V].copy_from_slice(&acc);
            }
            for (ky, row) in rows(oy) {
                for (kx, &(lo, hi, first)) in cols.iter().enumerate() {
                    let a = k[ky * kw + kx];
                    // The columns outside the register blocks: [lo, bl) and [br, hi).
                    for (x0, x1) in [(lo, hi.min(bl)), (lo.max(br), hi)] {
                        if x0 >= x1 {
                            continue;
                        }
                        let at = first + (x0 - lo) * s;
                        if s == 1 {
                            for (o, &v) in d[x0..x1].iter_mut().zip(&row[at..at + x1 - x0]) {
                                *o += a * v;
                            }
                        } else {
                            for (j, o) in d[x0..x1].iter_mut().enumerate() {
                                *o += a * row[at + j * s];
                            }
                        }
                    }
                }
            }
        }
    }
}
