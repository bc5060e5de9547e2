//! Data-movement kernels: copies (reshape), concatenation and split, strided gathers
//! (transpose, slice), nearest upsampling and its gradient, into the arena's buffers. Work is cut into pieces of about
//! [`PIECE`] elements, so one image's copies run in parallel too.

use super::buffers::sized;
use rayon::prelude::*;

/// Elements per parallel piece of a copy.
const PIECE: usize = 1 << 15;

/// A destination shared by parallel tasks that each write their own disjoint elements of it.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: every user writes only elements no other task touches (see its call sites).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// For `o` in `0..outer`: `dst[o·dst_row + dst_at ..][..w] = src[o·src_row + src_at ..][..w]`,
/// by pieces of at most [`PIECE`] elements in parallel.
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    dst: &mut [f32],
    (dst_row, dst_at): (usize, usize),
    src: &[f32],
    (src_row, src_at): (usize, usize),
    w: usize,
    outer: usize,
) {
    if w == 0 || outer == 0 {
        return;
    }
    assert!((outer - 1) * dst_row + dst_at + w <= dst.len() && (outer - 1) * src_row + src_at + w <= src.len());
    let per_row = w.div_ceil(PIECE);
    let out = Dst(dst.as_mut_ptr());
    (0..outer * per_row).into_par_iter().for_each(|task| {
        let (o, j0) = (task / per_row, (task % per_row) * PIECE);
        let n = PIECE.min(w - j0);
        let from = &src[o * src_row + src_at + j0..][..n];
        let out = out;
        // SAFETY: in bounds by the assertion; piece (o, j0) alone writes these elements.
        let to = unsafe { std::slice::from_raw_parts_mut(out.0.add(o * dst_row + dst_at + j0), n) };
        to.copy_from_slice(from);
    });
}

/// `out = x` (a reshape's data), by pieces in parallel.
pub fn copy(out: &mut Vec<f32>, x: &[f32]) {
    copy_rows(sized(out, x.len()), (0, 0), x, (0, 0), x.len(), 1);
}

/// Concatenation into `out`: each outer index (the axes before the concatenated one) takes, in
/// order, `widths[i]` contiguous elements of part `i`.
pub fn concat(out: &mut Vec<f32>, parts: &[&[f32]], widths: &[usize]) {
    let row: usize = widths.iter().sum();
    let outer =
        if row == 0 { 0 } else { parts.iter().zip(widths).map(|(p, &w)| p.len() / w.max(1)).max().unwrap_or(0) };
    let out = sized(out, outer * row);
    let mut at = 0;
    for (p, &w) in parts.iter().zip(widths) {
        copy_rows(out, (row, at), p, (w, 0), w, outer);
        at += w;
    }
}

/// The inverse of [`concat`]: `x`'s rows of `Σ widths` elements are cut into one buffer per
/// width.
pub fn split(outs: &mut [Vec<f32>], x: &[f32], widths: &[usize]) {
    let row: usize = widths.iter().sum();
    let outer = if row == 0 { 0 } else { x.len() / row };
    let mut at = 0;
    for (buf, &w) in outs.iter_mut().zip(widths) {
        copy_rows(sized(buf, outer * w), (w, 0), x, (row, at), w, outer);
        at += w;
    }
}

/// `out[idx] = src[offset + Σ idx[i]·strides[i]]` for every index of `shape` (a transpose or a
/// slice, as `slimc_ir::layout::strided_copy`), by runs of whole rows of the last axis in parallel.
pub fn gather(out: &mut Vec<f32>, src: &[f32], offset: isize, shape: &[usize], strides: &[isize]) {
    let n: usize = shape.iter().product();
    let out = sized(out, n);
    if n == 0 {
        return;
    }
    let last = shape.last().copied().unwrap_or(1);
    let step = strides.last().copied().unwrap_or(1);
    let rows_per_task = (PIECE / last).max(1);
    out.par_chunks_mut(rows_per_task * last).enumerate().for_each(|(t, dst)| {
        for (k, row) in dst.chunks_mut(last).enumerate() {
            let pos = offset + row_start(t * rows_per_task + k, shape, strides);
            if step == 1 {
                row.copy_from_slice(&src[pos as usize..pos as usize + last]);
            } else {
                for (j, o) in row.iter_mut().enumerate() {
                    *o = src[(pos + j as isize * step) as usize];
                }
            }
        }
    });
}

/// Where row `row` of a tensor of `shape` (rows: every index but the last axis's, row-major)
/// starts in a source read with `strides`: the row index decomposed over the leading axes.
pub(crate) fn row_start(row: usize, shape: &[usize], strides: &[isize]) -> isize {
    let (mut rest, mut pos) = (row, 0isize);
    for d in (0..shape.len().saturating_sub(1)).rev() {
        pos += (rest % shape[d]) as isize * strides[d];
        rest /= shape[d];
    }
    pos
}

/// Nearest upsampling of `x [n, c, h, w]` by `scale` into `out`, plane by plane in parallel:
/// each source row is widened once and repeated `scale[0]` times.
pub fn upsample_nearest(out: &mut Vec<f32>, x: &[f32], xs: &[usize], scale: [usize; 2]) {
    let (planes, h, w) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (h * scale[0], w * scale[1]);
    let out = sized(out, planes * oh * ow);
    if out.is_empty() {
        return;
    }
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(p, dst)| {
        let src = &x[p * h * w..(p + 1) * h * w];
        for (iy, rows) in dst.chunks_mut(scale[0] * ow).enumerate() {
            let (first, rest) = rows.split_at_mut(ow);
            let row = &src[iy * w..(iy + 1) * w];
            for (ox, o) in first.iter_mut().enumerate() {
                *o = row[ox / scale[1]];
            }
            for copy in rest.chunks_mut(ow) {
                copy.copy_from_slice(first);
            }
        }
    });
}

/// The gradient of [`upsample_nearest`]: each `scale` block of `dy [n, c, oh, ow]` summed into
/// its source element of `dx`, plane by plane in parallel (rows in the reference's order).
pub fn upsample_nearest_grad(dx: &mut Vec<f32>, dy: &[f32], dys: &[usize], scale: [usize; 2]) {
    let (planes, oh, ow) = (dys[0] * dys[1], dys[2], dys[3]);
    let (h, w) = (oh / scale[0], ow / scale[1]);
    let dx = sized(dx, planes * h * w);
    if dx.is_empty() {
        return;
    }
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, dst)| {
        dst.fill(0.0);
        let src = &dy[p * oh * ow..(p + 1) * oh * ow];
        for (y, row) in src.chunks(ow).enumerate() {
            let out = &mut dst[(y / scale[0]) * w..(y / scale[0] + 1) * w];
            for (x, &g) in row.iter().enumerate() {
                out[x / scale[1]] += g;
            }
        }
    });
}

/// `o[j] = x[j·stride]`: a copy at stride 1, even elements by vector permutes at stride 2.
pub(crate) fn strided_copy(o: &mut [f32], x: &[f32], stride: usize) {
    match stride {
        1 => o.copy_from_slice(&x[..o.len()]),
        2 => even_elements(o, x),
        _ => o.iter_mut().zip(x.iter().step_by(stride)).for_each(|(o, &v)| *o = v),
    }
}

/// `o[j] = x[2j]`. The compiler turns this loop into gathers (slow on every x86 core), so the
/// AVX-512 and AVX2 levels pick the even elements of two loaded vectors with one permute.
pub(crate) fn even_elements(o: &mut [f32], x: &[f32]) {
    let Some(last) = (2 * o.len()).checked_sub(1) else { return };
    let x = &x[..last];
    #[cfg(target_arch = "x86_64")]
    {
        use super::isa::{self, Isa};
        let level = isa::active();
        isa::note(level);
        match level {
            // SAFETY: `active` only returns a level the CPU supports; the slices are checked.
            Isa::Avx512 => return unsafe { even_elements_avx512(o, x) },
            Isa::Avx2 => return unsafe { even_elements_avx2(o, x) },
            Isa::Baseline => {}
        }
    }
    for (j, o) in o.iter_mut().enumerate() {
        *o = x[2 * j];
    }
}

/// [`even_elements`] with AVX-512: 16 outputs from 32 inputs per step (`x.len() = 2·o.len() − 1`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn even_elements_avx512(o: &mut [f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    // Whole steps whose 32 inputs lie inside x.
    let steps = (x.len() / 32).min(o.len() / 16);
    for k in 0..steps {
        // SAFETY: inputs 32k..32k+32 ≤ x.len() and outputs 16k..16k+16 ≤ o.len() by `steps`.
        let (a, b) = (_mm512_loadu_ps(x.as_ptr().add(32 * k)), _mm512_loadu_ps(x.as_ptr().add(32 * k + 16)));
        _mm512_storeu_ps(o.as_mut_ptr().add(16 * k), _mm512_permutex2var_ps(a, idx, b));
    }
    for j in 16 * steps..o.len() {
        o[j] = x[2 * j];
    }
}

/// [`even_elements`] with AVX2: 8 outputs from 16 inputs per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn even_elements_avx2(o: &mut [f32], x: &[f32]) {
    use std::arch::x86_64::*;
    let steps = (x.len() / 16).min(o.len() / 8);
    for k in 0..steps {
        // SAFETY: as in the AVX-512 copy, at 16 inputs and 8 outputs per step.
        let (a, b) = (_mm256_loadu_ps(x.as_ptr().add(16 * k)), _mm256_loadu_ps(x.as_ptr().add(16 * k + 8)));
        // Evens of each 128-bit lane (a0 a2 b0 b2 | a4 a6 b4 b6), then the 64-bit pairs reordered.
        let e = _mm256_shuffle_ps(a, b, 0b10_00_10_00);
        let e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0b11_01_10_00));
        _mm256_storeu_ps(o.as_mut_ptr().add(8 * k), e);
    }
    for j in 8 * steps..o.len() {
        o[j] = x[2 * j];
    }
}
