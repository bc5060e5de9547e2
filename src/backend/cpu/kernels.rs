//! CPU kernels for the heavy ops: convolution (im2col + GEMM), batch norm, max pooling,
//! batched matmul and the hot elementwise ops. Parallel with rayon; GEMM from the `gemm` crate.

use super::layout::row_start;
use super::simd::{self, simd_fn};
use rayon::prelude::*;
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::Conv2d;

/// A matrix operand: data with a row stride and a column stride (a transpose swaps them).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub rs: usize,
    /// Distance between consecutive columns.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { data, rs: 1, cs: cols }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` (or `c += a·b` with `accumulate`); `c` is row-major. With
/// `par`, a large product is split across threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_into(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: &mut [f32], accumulate: bool, par: bool) {
    assert!(a.fits(m, k) && b.fits(k, n) && c.len() >= m * n, "gemm operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let par = if par && m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `fits` and the length check above keep every strided access inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `c[m×n] = a[m×k] · b[k×n]`, row-major, overwriting `c`; `par` as in [`gemm_into`].
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32], par: bool) {
    gemm_into(m, n, k, Mat::rows(a, k), Mat::rows(b, n), c, false, par);
}

thread_local! {
    /// Per-thread im2col/col2im scratch, grown to the largest use and kept.
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f(b, out_b, col, par)` for each image `b` of a batch of `n`, `out_b` being its `per`
/// elements of `out` and `col` a per-thread scratch. Several images run in parallel, one per
/// thread, each single-threaded (`par` false): no thread waits on another's small product. A
/// single image runs alone with `par` true, its products and loops split across threads.
pub(crate) fn each_image(
    out: &mut [f32],
    n: usize,
    per: usize,
    f: impl Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync + Send,
) {
    if n <= 1 || per == 0 {
        COL.with(|c| f(0, out, &mut c.borrow_mut(), true));
    } else {
        out.par_chunks_mut(per).enumerate().for_each(|(b, dst)| COL.with(|c| f(b, dst, &mut c.borrow_mut(), false)));
    }
}

pub(crate) use slimc_ir::eval::nn::window_out as out_size;

/// `buf` as `n` zeros, reusing its allocation.
pub(crate) fn zeroed(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.clear();
    buf.reserve_exact(n);
    buf.resize(n, 0.0);
    buf
}

/// `buf` with `n` elements of unspecified value, reusing its allocation: for kernels that write
/// every element.
pub(crate) fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.reserve_exact(n.saturating_sub(buf.len()));
    buf.resize(n, 0.0);
    buf.truncate(n);
    buf
}

/// 2-D convolution into `out`. `x` is `[n, cin, h, w]`, `w` is `[cout, cin/groups, kh, kw]`.
/// Returns the output shape `[n, cout, oh, ow]`.
pub fn conv2d(
    out: &mut Vec<f32>,
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    c: &Conv2d,
) -> Vec<usize> {
    let d = ConvGeometry::new(xs, ws, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let out = sized(out, d.n * d.cout * ohw);
    if d.depthwise() {
        depthwise(x, w, c, [d.n, d.cin, d.h, d.w], [d.kh, d.kw], [d.oh, d.ow], out);
    } else {
        let (og, cg) = (d.og, d.cg);
        let kdim = cg * d.kh * d.kw;
        let pointwise = d.pointwise(c);
        let tile = (!pointwise).then(|| column_tile(kdim, ohw)).flatten();
        each_image(out, d.n, d.cout * ohw, |b, out, col, par| {
            let col = sized(col, if pointwise || tile.is_some() { 0 } else { kdim * ohw });
            for gi in 0..d.g {
                let xg = &x[(b * d.cin + gi * cg) * hw..(b * d.cin + (gi + 1) * cg) * hw];
                let wg = &w[gi * og * kdim..(gi + 1) * og * kdim];
                let dst = &mut out[gi * og * ohw..(gi + 1) * og * ohw];
                if let Some(tile) = tile {
                    conv_tiled(xg, wg, c, &d, tile, dst, par);
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
        });
    }
    if let Some(bias) = bias {
        add_bias(out, bias, ohw);
    }
    vec![d.n, d.cout, d.oh, d.ow]
}

/// Adds each channel's bias to its planes of `out` (`[n, c, plane]`).
fn add_bias(out: &mut [f32], bias: &[f32], plane: usize) {
    out.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
        let v = bias[i % bias.len()];
        p.iter_mut().for_each(|o| *o += v);
    });
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
) {
    let (n, cout, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let cin: usize = channels.iter().sum();
    let out = sized(out, n * cout * hw);
    each_image(out, n, cout * hw, |b, dst, _, par| {
        let mut k0 = 0;
        for (p, &c) in parts.iter().zip(channels) {
            let a = Mat { data: &w[k0..], rs: cin, cs: 1 };
            gemm_into(cout, hw, c, a, Mat::rows(&p[b * c * hw..(b + 1) * c * hw], hw), dst, k0 > 0, par);
            k0 += c;
        }
    });
    if let Some(bias) = bias {
        add_bias(out, bias, hw);
    }
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
    let (mut p, end) = (first, first + dst.len());
    while p < end {
        // One output row's stretch: positions p..q of output row oy, columns ox0..ox1.
        let (oy, ox0) = (p / ow, p % ow);
        let q = end.min((oy + 1) * ow);
        let ox1 = ox0 + (q - p);
        let d = &mut dst[p - first..q - first];
        let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pad[0] as isize;
        p = q;
        if iy < 0 || iy >= h as isize {
            d.fill(0.0);
            continue;
        }
        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
        let (lo, hi) = inside(ow, stride, off, w);
        let (lo, hi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1).max(lo.clamp(ox0, ox1)));
        d[..lo - ox0].fill(0.0);
        d[hi - ox0..].fill(0.0);
        let at = (lo * stride) as isize + off;
        let seg = &mut d[lo - ox0..hi - ox0];
        if stride == 1 {
            seg.copy_from_slice(&src[at as usize..at as usize + seg.len()]);
        } else {
            seg.iter_mut().zip(src[at as usize..].iter().step_by(stride)).for_each(|(o, &v)| *o = v);
        }
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

/// An output shared by parallel tasks that each write their own disjoint elements of it (the
/// columns of a tiled convolution, the inner positions of a softmax).
#[derive(Clone, Copy)]
struct Block(*mut f32);
// SAFETY: every user writes only elements no other task touches (see its call sites).
unsafe impl Send for Block {}
unsafe impl Sync for Block {}

/// One group of one image of a convolution, by tiles of `tile` output positions: each tile
/// unfolds its stretch of the input into a cache-sized scratch and multiplies it into its own
/// columns of `dst [og × ohw]`; tiles run in parallel with `par`.
fn conv_tiled(xg: &[f32], wg: &[f32], c: &Conv2d, d: &ConvGeometry, tile: usize, dst: &mut [f32], par: bool) {
    let (og, ohw, kdim) = (d.og, d.oh * d.ow, d.cg * d.kh * d.kw);
    assert!(dst.len() >= og * ohw && wg.len() >= og * kdim, "conv_tiled operand sizes");
    let block = Block(dst.as_mut_ptr());
    let run = |t: usize| {
        let (n0, n1) = (t * tile, ohw.min((t + 1) * tile));
        let nt = n1 - n0;
        TILE.with(|buf| {
            let mut buf = buf.borrow_mut();
            let col = sized(&mut buf, kdim * nt);
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
/// `axpy` at stride 1), so no bounds are tested per element.
fn depthwise(
    x: &[f32],
    w: &[f32],
    c: &Conv2d,
    [_, ch, h, wi]: [usize; 4],
    [kh, kw]: [usize; 2],
    [oh, ow]: [usize; 2],
    out: &mut [f32],
) {
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
        let ci = plane % ch;
        let src = &x[plane * h * wi..(plane + 1) * h * wi];
        let k = &w[ci * kh * kw..(ci + 1) * kh * kw];
        let (s, dil) = (c.stride[1], c.dilation[1]);
        for oy in 0..oh {
            let d = &mut dst[oy * ow..(oy + 1) * ow];
            d.fill(0.0);
            for ky in 0..kh {
                let iy = (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pad[0] as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &src[iy as usize * wi..(iy as usize + 1) * wi];
                for kx in 0..kw {
                    let off = (kx * dil) as isize - c.pad[1] as isize;
                    let (lo, hi) = inside(ow, s, off, wi);
                    if lo >= hi {
                        continue;
                    }
                    let (a, first) = (k[ky * kw + kx], (lo * s) as isize + off);
                    if s == 1 {
                        simd::axpy(&mut d[lo..hi], &row[first as usize..first as usize + hi - lo], a);
                    } else {
                        for (j, o) in d[lo..hi].iter_mut().enumerate() {
                            *o += a * row[first as usize + j * s];
                        }
                    }
                }
            }
        }
    });
}

/// Inference batch norm over axis 1 with running statistics, into `out`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    out: &mut Vec<f32>,
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) {
    let coef = bn_coefficients(gamma, beta, mean, var, eps);
    per_channel(sized(out, x.len()), shape, x, None, &coef);
}

/// Inference batch norm as per-channel `(a, 0, c)` of `a·x + c`.
pub fn bn_coefficients(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> Vec<[f32; 3]> {
    (0..gamma.len())
        .map(|ch| {
            let s = gamma[ch] / (var[ch] + eps).sqrt();
            [s, 0.0, beta[ch] - mean[ch] * s]
        })
        .collect()
}

simd_fn! {
    /// `o = a·o + c`, then `o = o·sigmoid(o)` with `silu`, in place.
    fn epilogue_plane(o: &mut [f32], a: f32, c: f32, silu: bool) {
        if silu {
            for v in o.iter_mut() {
                let y = a * *v + c;
                *v = y / (1.0 + simd::exp(-y));
            }
        } else {
            for v in o.iter_mut() {
                *v = a * *v + c;
            }
        }
    }
}

/// A convolution's epilogue on its `[n, c, …]` result, plane by plane in parallel: each
/// channel's `coef` affine (the inference batch norm; `(1, 0, 0)` for none), then SiLU.
pub fn epilogue(t: &mut slimc_ir::Tensor, coef: &[[f32; 3]], silu: bool) -> slimc_ir::Result<()> {
    let c = t.shape[1];
    let inner = t.shape[2..].iter().product::<usize>().max(1);
    t.f32s_mut()?.par_chunks_mut(inner).enumerate().for_each(|(i, plane)| {
        let [a, _, k] = coef[i % c];
        epilogue_plane(plane, a, k, silu);
    });
    Ok(())
}

/// Applies `o = coef(ch)(x, y)` plane by plane, in parallel: `coef` gives each channel's
/// `(a, b, c)` of `a·x + b·y + c` (with `y` absent, `b` is ignored).
pub(crate) fn per_channel(out: &mut [f32], shape: &[usize], x: &[f32], y: Option<&[f32]>, coef: &[[f32; 3]]) {
    let c = shape[1];
    let inner = shape[2..].iter().product::<usize>().max(1);
    out.par_chunks_mut(inner).enumerate().for_each(|(i, dst)| {
        let [a, b, k] = coef[i % c];
        let src = &x[i * inner..(i + 1) * inner];
        match y {
            Some(y) => simd::affine2(dst, src, &y[i * inner..(i + 1) * inner], a, b, k),
            None => simd::affine(dst, src, a, k),
        }
    });
}

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
    let oh = out_size(h, k[0], s[0], 1, p[0], p[2]);
    let ow = out_size(w, k[1], s[1], 1, p[1], p[3]);
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

/// Elements per parallel task of the elementwise kernels.
pub(crate) const CHUNK: usize = 1 << 14;

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

/// An elementwise arithmetic op.
#[derive(Clone, Copy, Debug)]
pub enum Arith {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
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
/// (`slimc_ir::eval::broadcast_strides`).
pub fn arith(out: &mut Vec<f32>, op: Arith, a: &[f32], sa: &[isize], b: &[f32], sb: &[isize], shape: &[usize]) {
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
                Arith::Add => arith_row(o, x, la, y, lb, |p, q| p + q),
                Arith::Sub => arith_row(o, x, la, y, lb, |p, q| p - q),
                Arith::Mul => arith_row(o, x, la, y, lb, |p, q| p * q),
                Arith::Div => arith_row(o, x, la, y, lb, |p, q| p / q),
            }
        }
    });
}

/// Batched matrix product over the last two axes with broadcast batch axes, into `out`.
pub fn matmul(out: &mut Vec<f32>, a: &[f32], sa: &[usize], b: &[f32], sb: &[usize], out_shape: &[usize]) {
    let r = out_shape.len();
    let (m, n, k) = (out_shape[r - 2], out_shape[r - 1], sa[sa.len() - 1]);
    let batch = &out_shape[..r - 2];
    let oa = slimc_ir::eval::batch_offsets(sa, batch, m * k);
    let ob = slimc_ir::eval::batch_offsets(sb, batch, k * n);
    let out = sized(out, out_shape.iter().product());
    if m * n == 0 {
        return;
    }
    for (i, dst) in out.chunks_mut(m * n).enumerate() {
        sgemm(m, n, k, &a[oa[i]..oa[i] + m * k], &b[ob[i]..ob[i] + k * n], dst, true);
    }
}
