//! The packed convolution lowering (`conv_packed.wgsl`): per group and chunk of whole images,
//! pack the operands zero-padded to multiples of 4 (im2col for the input), run a
//! register-blocked GEMM on vec4 loads, and for the input gradient gather the columns back
//! (col2im). It is the lowering for adapters that are CPUs (lavapipe), where the tiled implicit
//! GEMM's workgroup memory and barriers cost more than they save.

use super::{storage, Builder, ConvLowering, Workspace};
use crate::backend::gpu::device::Context;
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{conv_sizes, uniform, PackedParams};
use anyhow::Result;
use bytemuck::Zeroable;
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::{Conv2d, Graph, Op, TensorType};

/// The most pixels of one chunk: its GEMM's column workgroups (64 columns each) stay within one
/// grid dimension (65,535 workgroups).
const CHUNK_PIXELS: usize = 65_535 * 64;

/// How one convolution is packed.
#[derive(Clone, Copy, Debug)]
pub struct PackedConv {
    /// The reduction size per group (input channels × taps) and it padded to 4.
    k: usize,
    kp: usize,
    /// Output channels per group padded to 4.
    ogp: usize,
    /// Whole images per chunk.
    images: usize,
    /// Padded columns of a full chunk.
    np: usize,
}

impl PackedConv {
    /// The packing of `geo` with at most `budget` floats per matrix; `None` for depthwise
    /// convolutions (single-row GEMMs, left to the direct kernel) and where one image's window
    /// matrix exceeds the budget (left to the tiled kernel).
    pub fn new(geo: &ConvGeometry, budget: usize) -> Option<PackedConv> {
        if geo.og == 1 {
            return None;
        }
        let k = geo.cg * geo.kh * geo.kw;
        let (kp, ogp) = (k.next_multiple_of(4), geo.og.next_multiple_of(4));
        let pixels = geo.oh * geo.ow;
        let rows = kp.max(ogp);
        let fits = |images: usize| rows * (images * pixels).next_multiple_of(4) <= budget;
        let mut images = geo.n.min(budget / rows / pixels.max(1)).min(CHUNK_PIXELS / pixels.max(1));
        while images > 0 && !fits(images) {
            images -= 1;
        }
        (images > 0).then(|| PackedConv { k, kp, ogp, images, np: (images * pixels).next_multiple_of(4) })
    }

    /// Floats of the three matrices it needs: windows (or column gradient), output gradient,
    /// weight.
    pub fn needs(&self) -> [usize; 3] {
        [self.kp * self.np, self.ogp * self.np, self.ogp * self.kp]
    }

    /// The chunks of `geo`'s batch: (first output pixel, pixel count).
    fn chunks(&self, geo: &ConvGeometry) -> impl Iterator<Item = (usize, usize)> {
        let pixels = geo.oh * geo.ow;
        let (n, images) = (geo.n, self.images);
        (0..n.div_ceil(images)).map(move |c| (c * images * pixels, (images.min(n - c * images)) * pixels))
    }
}

/// A convolution node's geometry, from its operand types.
fn conv_of(graph: &Graph, types: &[TensorType], i: usize) -> Option<ConvGeometry> {
    let n = &graph.nodes[i];
    let shape = |k: usize| types[n.inputs[k].0].fixed_shape();
    let (x, w, c) = match &n.op {
        Op::Conv2d(c) => (shape(0)?, shape(1)?, c),
        Op::Conv2dGradInput(c) => (shape(2)?, shape(1)?, c),
        Op::Conv2dGradWeight(c) => (shape(1)?, shape(2)?, c),
        // Every other op is not a convolution.
        _ => return None,
    };
    Some(ConvGeometry::new(&x, &w, c))
}

impl Workspace {
    /// The workspace for the convolutions among `nodes` that `conv` packs (`None` when there
    /// are none).
    pub(super) fn new(
        ctx: &Context,
        conv: ConvLowering,
        graph: &Graph,
        types: &[TensorType],
        nodes: &[usize],
    ) -> Option<Workspace> {
        let budget = conv.budget(ctx)?;
        let need = nodes
            .iter()
            .filter_map(|&i| conv_of(graph, types, i))
            .filter_map(|geo| PackedConv::new(&geo, budget))
            .map(|p| p.needs())
            .reduce(|a, b| [a[0].max(b[0]), a[1].max(b[1]), a[2].max(b[2])])?;
        let buf = |floats: usize, label| storage(ctx, floats as u64 * 4, label);
        Some(Workspace {
            cols: buf(need[0], "packed windows"),
            dy: buf(need[1], "packed output gradient"),
            weight: buf(need[2], "packed weight"),
        })
    }
}

/// The parameters every dispatch of `geo`'s convolution shares.
fn base(geo: &ConvGeometry, c: &Conv2d, silu: bool) -> Result<PackedParams> {
    let [n, cin, h, w, cout, cg, og, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw] = conv_sizes(geo, c)?;
    let act = silu as u32;
    Ok(PackedParams {
        n,
        cin,
        h,
        w,
        cout,
        cg,
        og,
        kh,
        kw,
        oh,
        ow,
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        act,
        ..PackedParams::zeroed()
    })
}

/// What a packed convolution computes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The forward, with its epilogue (coefficients, SiLU).
    Forward { silu: bool },
    /// The input gradient.
    GradInput,
    /// The weight gradient.
    GradWeight,
}

impl Builder<'_> {
    /// Lowers `pass` of the convolution `geo`/`c` packed, when it packs (see [`PackedConv::new`]);
    /// returns false, having added nothing, when it does not. Operands: forward `[x, w, coef,
    /// y]`, input gradient `[dy, w, -, dx]`, weight gradient `[x, dy, -, dw]`.
    pub(super) fn conv_packed(
        &mut self,
        pass: Pass,
        geo: &ConvGeometry,
        c: &Conv2d,
        [src, aux, coef, dst]: [&wgpu::Buffer; 4],
    ) -> Result<bool> {
        let Some(budget) = self.g.conv.budget(self.ctx) else { return Ok(false) };
        let Some(work) = self.work.take() else { return Ok(false) };
        let packed = PackedConv::new(geo, budget);
        let r = match packed {
            Some(p) => self.packed_steps(pass, geo, c, &p, &work, [src, aux, coef, dst]).map(|()| true),
            None => Ok(false),
        };
        self.work = Some(work);
        r
    }

    fn packed_steps(
        &mut self,
        pass: Pass,
        geo: &ConvGeometry,
        c: &Conv2d,
        p: &PackedConv,
        work: &Workspace,
        [src, aux, coef, dst]: [&wgpu::Buffer; 4],
    ) -> Result<()> {
        let base = base(geo, c, matches!(pass, Pass::Forward { silu: true }))?;
        let u = |v: usize| v as u32;
        let (k, kp, og, ogp) = (u(p.k), u(p.kp), u(geo.og), u(p.ogp));
        let limit = self.limit();
        for group in 0..geo.g {
            let gb = PackedParams { group: u(group), ..base };
            // The weight, as A of the forward ([og × k]) or transposed for the input gradient.
            let weight_rows = match pass {
                Pass::Forward { .. } => Some((og, k, ogp, kp, k, 1)),
                Pass::GradInput => Some((k, og, kp, ogp, 1, k)),
                Pass::GradWeight => None,
            };
            if let Some((rows, valid_cols, rows_p, cols_p, rs, cs)) = weight_rows {
                let wp = PackedParams { rows, valid_cols, rows_p, cols_p, off: u(group) * og * k, rs, cs, ..gb };
                self.pack(Entry::PackedMatrix, &wp, aux, &work.weight)?;
            }
            for (chunk, (n0, cols)) in p.chunks(geo).enumerate() {
                let cols_p = u(cols.next_multiple_of(4));
                let cb = PackedParams { n0: u(n0), cols: u(cols), cols_p, ..gb };
                let dy = if pass == Pass::GradInput { src } else { aux };
                let windows = PackedParams { rows: k, rows_p: kp, ..cb };
                let channels =
                    PackedParams { rows: og, valid_cols: u(cols), rows_p: ogp, source: 1, off: u(group) * og, ..cb };
                match pass {
                    Pass::Forward { .. } => {
                        self.pack(Entry::PackedIm2col, &windows, src, &work.cols)?;
                        let mm = PackedParams { rows: og, gm: ogp, gn: cols_p, gk: kp, ..cb };
                        self.gemm(0, &mm, [&work.weight, &work.cols, coef, dst]);
                    }
                    Pass::GradInput => {
                        self.pack(Entry::PackedMatrix, &channels, dy, &work.dy)?;
                        let mm = PackedParams { gm: kp, gn: cols_p, gk: ogp, ..cb };
                        let dummy = self.dummy.clone();
                        self.gemm(1, &mm, [&work.weight, &work.dy, &dummy, &work.cols]);
                        let back = PackedParams { gn: cols_p, ..cb };
                        let grid = flat_grid(cols / (geo.oh * geo.ow) * geo.cg * geo.h * geo.w, limit)?;
                        self.step(
                            Entry::PackedCol2im,
                            &[uniform("P", &back)],
                            &[("colgrad", &work.cols), ("dx", dst)],
                            grid,
                        );
                    }
                    Pass::GradWeight => {
                        self.pack(Entry::PackedMatrix, &channels, dy, &work.dy)?;
                        let rows = PackedParams { transposed: 1, ..windows };
                        self.pack(Entry::PackedIm2col, &rows, src, &work.cols)?;
                        let mm = PackedParams {
                            rows: og,
                            valid_cols: k,
                            gm: ogp,
                            gn: kp,
                            gk: cols_p,
                            accumulate: (chunk > 0) as u32,
                            ..cb
                        };
                        let dummy = self.dummy.clone();
                        self.gemm(2, &mm, [&work.dy, &work.cols, &dummy, dst]);
                    }
                }
            }
        }
        Ok(())
    }

    /// A packing dispatch `entry` from `src` into the padded `rows_p × cols_p` matrix `dst`.
    fn pack(&mut self, entry: Entry, p: &PackedParams, src: &wgpu::Buffer, dst: &wgpu::Buffer) -> Result<()> {
        let grid = flat_grid(p.rows_p as usize * p.cols_p as usize, self.limit())?;
        self.step(entry, &[uniform("P", p)], &[("src", src), ("packed", dst)], grid);
        Ok(())
    }

    /// The GEMM with store `mode` on `[a, b, coef, out]`.
    fn gemm(&mut self, mode: u32, p: &PackedParams, [a, b, coef, out]: [&wgpu::Buffer; 4]) {
        // 16×16 invocations of 4×4 results: 64 columns by 64 rows per workgroup.
        let grid = [p.gn.div_ceil(64), p.gm.div_ceil(64), 1];
        self.mode = mode;
        self.step(Entry::PackedGemm, &[uniform("P", p)], &[("a", a), ("b", b), ("coef", coef), ("out", out)], grid);
        self.mode = 0;
    }
}
