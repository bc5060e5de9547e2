//! Direct convolution, without im2col: the input is padded once (at stride s, split into s×s
//! phase planes), and the output is computed at the planes' width, where every reduction index
//! (input channel, tap) reads the inputs of a run of consecutive output positions as one
//! contiguous stretch of the planes (the positions' offset plus the index's own). A
//! register-blocked kernel sums `ROWS` output channels × one panel of positions straight from
//! there: no unfolded copy of the input, no packing of it. The planes' extra columns are
//! computed and dropped on write-back.
//!
//! AVX-512 only, for outputs at least [`MIN_WIDTH`] wide with at least [`MIN_REDUCTION`]
//! products per output: measured one convolution at a time against im2col + GEMM on an AVX-512
//! EPYC (batch 1), stride 1 is 1.2-2.6x faster from 40x40 up, mixed at 20x20 and slower at
//! 10x10 (where the padded width's columns are a fifth of the work); stride 2 is 0.85-1.35x,
//! mostly faster; a 3-channel input (27 products) gains nothing. Other levels and shapes keep
//! im2col + GEMM.

use super::buffers::{each_image, scratch, with_scratch, Block};
use super::epilogue::Epilogue;
use super::isa::{self, Isa};
use super::layout::strided_copy;
use rayon::prelude::*;
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::Conv2d;

/// Output channels per kernel call.
const ROWS: usize = 6;

thread_local! {
    /// The calling thread's packed weights.
    static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Positions per panel: four 16-lane vectors.
const PANEL: usize = 64;

/// The narrowest output the direct kernel computes (see the module's note).
const MIN_WIDTH: usize = 32;

/// The fewest products per output the direct kernel sums (see the module's note).
const MIN_REDUCTION: usize = 32;

/// Whether the direct kernel runs convolution `d` (one stride both ways, no dilation, not
/// pointwise, at least [`MIN_WIDTH`] wide, at least [`MIN_REDUCTION`] products per output) at
/// the active level.
pub(crate) fn applies(d: &ConvGeometry, c: &Conv2d) -> bool {
    isa::active() == Isa::Avx512
        && c.stride[0] == c.stride[1]
        && c.dilation == [1, 1]
        && d.kh * d.kw > 1
        && d.cg * d.kh * d.kw >= MIN_REDUCTION
        && d.ow >= MIN_WIDTH
        && d.oh * Phases::new(d, c).wq >= PANEL
}

/// The padded input split into phase planes: at stride `s`, phase `(a, b)` holds the padded
/// input's rows `s·i + a` and columns `s·j + b`, so tap `(ky, kx)` of output `(oy, ox)` is
/// element `(oy + ky / s, ox + kx / s)` of phase `(ky mod s, kx mod s)`: at the phase planes'
/// width `wq`, one offset per reduction index (channel, tap; the weight's order) reaches every
/// output position's input. At stride 1 there is one phase, the padded input itself.
struct Phases {
    s: usize,
    hq: usize,
    wq: usize,
    offsets: Vec<usize>,
    /// Elements read or written: the phase planes, and the stretch the last panel reads past
    /// them.
    len: usize,
}

impl Phases {
    fn new(d: &ConvGeometry, c: &Conv2d) -> Phases {
        let s = c.stride[0].max(1);
        let (hq, wq) = ((c.pad[0] + d.h + c.pad[2]).div_ceil(s), (c.pad[1] + d.w + c.pad[3]).div_ceil(s));
        let plane = hq * wq;
        let offsets: Vec<usize> = (0..d.cg)
            .flat_map(|ci| {
                (0..d.kh).flat_map(move |ky| {
                    (0..d.kw)
                        .map(move |kx| ((ky % s) * s + kx % s) * d.cg * plane + ci * plane + (ky / s) * wq + kx / s)
                })
            })
            .collect();
        let reach = offsets.iter().max().map_or(0, |&o| o + d.oh * wq);
        Phases { s, hq, wq, offsets, len: reach.max(s * s * d.cg * plane) }
    }

    /// Writes the phase planes of `x [cg × h·w]` into `xp` (zero where they fall in the
    /// padding), and zeros past them; planes in parallel with `par`.
    fn fill(&self, x: &[f32], d: &ConvGeometry, c: &Conv2d, xp: &mut [f32], par: bool) {
        let (s, wq, plane) = (self.s, self.wq, self.hq * self.wq);
        let [pt, pl] = [c.pad[0], c.pad[1]];
        let (planes, tail) = xp[..self.len].split_at_mut(s * s * d.cg * plane);
        tail.fill(0.0);
        let one = |(p, dst): (usize, &mut [f32])| {
            let ((a, b), ci) = ((p / d.cg / s, p / d.cg % s), p % d.cg);
            let src = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
            // Columns j whose input column s·j + b − pl lies inside the row.
            let lo = pl.saturating_sub(b).div_ceil(s).min(wq);
            let hi = if d.w + pl > b { ((d.w + pl - b - 1) / s + 1).min(wq) } else { 0 }.max(lo);
            for (i, row) in dst.chunks_mut(wq).enumerate() {
                let iy = (s * i + a) as isize - pt as isize;
                if iy < 0 || iy >= d.h as isize {
                    row.fill(0.0);
                    continue;
                }
                let r = &src[iy as usize * d.w..(iy as usize + 1) * d.w];
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                if lo < hi {
                    strided_copy(&mut row[lo..hi], &r[s * lo + b - pl..], s);
                }
            }
        };
        if par {
            planes.par_chunks_mut(plane).enumerate().for_each(one);
        } else {
            planes.chunks_mut(plane).enumerate().for_each(one);
        }
    }
}

/// Each group's `w [og × kdim]` as panels of [`ROWS`] channels, reduction index outermost within
/// a panel (`packed[group][panel][k][row]`), rows past `og` zero.
fn pack(w: &[f32], d: &ConvGeometry, packed: &mut Vec<f32>) {
    let kdim = d.cg * d.kh * d.kw;
    let per_group = d.og.div_ceil(ROWS) * ROWS * kdim;
    packed.clear();
    packed.resize(d.g * per_group, 0.0);
    for (gi, group) in packed.chunks_mut(per_group).enumerate() {
        for (p, dst) in group.chunks_mut(ROWS * kdim).enumerate() {
            for r in 0..ROWS.min(d.og - p * ROWS) {
                let src = &w[(gi * d.og + p * ROWS + r) * kdim..][..kdim];
                for (k, &v) in src.iter().enumerate() {
                    dst[k * ROWS + r] = v;
                }
            }
        }
    }
}

/// Convolution `d` of `x [n × cin × h·w]` with `w [cout × cg × kh × kw]` into
/// `out [n × cout × oh·ow]`, then `epi`: image by image ([`each_image`]: several images in
/// parallel, or one image's panels in parallel), group by group.
pub(crate) fn conv_direct(x: &[f32], w: &[f32], c: &Conv2d, d: &ConvGeometry, out: &mut [f32], epi: Option<&Epilogue>) {
    let kdim = d.cg * d.kh * d.kw;
    let geo = Phases::new(d, c);
    let (hw, ohw) = (d.h * d.w, d.oh * d.ow);
    let total = d.oh * geo.wq;
    let panels = total.div_ceil(PANEL);
    assert!(total >= PANEL && out.len() >= d.n * d.cout * ohw, "conv_direct operand sizes");
    with_scratch(&PACKED, |packed| {
        pack(w, d, packed);
        let per_group = packed.len() / d.g;
        each_image(out, d.n, d.cout * ohw, |b, out, xp, par| {
            let block = Block(out.as_mut_ptr());
            for (gi, packed) in packed.chunks(per_group).enumerate() {
                let xp = scratch(xp, geo.len);
                geo.fill(&x[(b * d.cin + gi * d.cg) * hw..][..d.cg * hw], d, c, xp, par);
                let xp = &xp[..];
                let run = |t: usize| {
                    // The whole `Block` (Sync), not its raw pointer field, is what the closure captures.
                    let block = block;
                    // The last panel ends at `total`, overlapping the one before; it writes back
                    // only what that one did not.
                    let (n0, from) =
                        if (t + 1) * PANEL > total { (total - PANEL, t * PANEL) } else { (t * PANEL, t * PANEL) };
                    let mut tile = [0.0f32; ROWS * PANEL];
                    for (p, a) in packed.chunks(ROWS * kdim).enumerate() {
                        kernel(a, &xp[n0..], &geo.offsets, &mut tile);
                        for r in 0..ROWS.min(d.og - p * ROWS) {
                            let co = gi * d.og + p * ROWS + r;
                            let src = &mut tile[r * PANEL..(r + 1) * PANEL];
                            // On the whole panel, in full vectors (the padded width's columns
                            // included), not stretch by stretch.
                            if let Some(e) = epi {
                                e.apply(co, src);
                            }
                            // Row by row of the output, the positions of this panel it holds.
                            let mut q = from;
                            while q < n0 + PANEL {
                                let (oy, ox) = (q / geo.wq, q % geo.wq);
                                let end = (n0 + PANEL).min(oy * geo.wq + geo.wq);
                                if ox < d.ow {
                                    let len = (oy * geo.wq + d.ow).min(end) - q;
                                    // SAFETY: channel co, row oy, columns ox..ox + len of this
                                    // image's output (checked above): this panel's positions
                                    // alone, as panels write disjoint positions.
                                    let o = unsafe {
                                        std::slice::from_raw_parts_mut(block.0.add(co * ohw + oy * d.ow + ox), len)
                                    };
                                    o.copy_from_slice(&src[q - n0..q - n0 + len]);
                                }
                                q = end;
                            }
                        }
                    }
                };
                if par {
                    (0..panels).into_par_iter().for_each(run);
                } else {
                    (0..panels).for_each(run);
                }
            }
        });
    });
}

/// The input gradient of convolution `d` into `dx` when the direct kernel can compute it: for
/// stride 1 it is the convolution of the output gradient `dy` with each group's weights
/// transposed (input and output channels swapped) and flipped, padded `k − 1 − pad`. False (and
/// `dx` untouched) otherwise.
pub(crate) fn grad_input(dx: &mut [f32], dy: &[f32], w: &[f32], d: &ConvGeometry, c: &Conv2d) -> bool {
    let [pt, pl, pb, pr] = c.pad;
    let (kh, kw) = (d.kh, d.kw);
    if c.stride != [1, 1] || pt.max(pb) >= kh || pl.max(pr) >= kw {
        return false;
    }
    let ct = Conv2d { pad: [kh - 1 - pt, kw - 1 - pl, kh - 1 - pb, kw - 1 - pr], ..c.clone() };
    let dt = ConvGeometry::new(&[d.n, d.cout, d.oh, d.ow], &[d.cin, d.og, kh, kw], &ct);
    if !applies(&dt, &ct) || [dt.oh, dt.ow] != [d.h, d.w] {
        return false;
    }
    let kk = kh * kw;
    with_scratch(&FLIPPED, |wt| {
        wt.clear();
        wt.resize(d.cin * d.og * kk, 0.0);
        // wt[g·cg + ci][co][t] = w[g·og + co][ci][kk − 1 − t].
        for (i, dst) in wt.chunks_mut(kk).enumerate() {
            let (gci, co) = (i / d.og, i % d.og);
            let (gi, ci) = (gci / d.cg, gci % d.cg);
            let src = &w[((gi * d.og + co) * d.cg + ci) * kk..][..kk];
            dst.iter_mut().zip(src.iter().rev()).for_each(|(o, &v)| *o = v);
        }
        conv_direct(dy, wt, &ct, &dt, dx, None);
    });
    true
}

thread_local! {
    /// The calling thread's transposed and flipped weights of an input gradient.
    static FLIPPED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `tile[r][j] = Σ_k a[k][r] · x[offsets[k] + j]` for [`ROWS`] rows and [`PANEL`] positions.
fn kernel(a: &[f32], x: &[f32], offsets: &[usize], tile: &mut [f32; ROWS * PANEL]) {
    assert!(isa::active() == Isa::Avx512 && a.len() >= offsets.len() * ROWS, "direct kernel operands");
    // SAFETY: the CPU has AVX-512 (the active level is one it supports); `a` is checked above,
    // every read of `x` in the kernel, and the tile holds every write.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        kernel_avx512(a.as_ptr(), x, offsets, tile.as_mut_ptr())
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("AVX-512 on a CPU that is not x86-64 ({:?})", (a.len(), x.len(), offsets.len(), tile.len()))
}

/// [`kernel`] with AVX-512: 6 rows × 64 positions in 24 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn kernel_avx512(a: *const f32, x: &[f32], offsets: &[usize], tile: *mut f32) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
    for (k, &o) in offsets.iter().enumerate() {
        assert!(o + PANEL <= x.len(), "direct kernel reads past its input");
        let p = x.as_ptr().add(o);
        let b =
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p.add(32)), _mm512_loadu_ps(p.add(48))];
        let ak = a.add(k * ROWS);
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*ak.add(r));
            for j in 0..4 {
                acc[j] = _mm512_fmadd_ps(av, b[j], acc[j]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (j, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(tile.add(r * PANEL + j * 16), *v);
        }
    }
}
