//! Lowering convolutions: the fused epilogue's coefficients, the implicit GEMM of
//! `conv.wgsl` (or the packed lowering), and the two gradients.

use super::packed;
use super::storage;
use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, grid, Entry};
use crate::backend::gpu::uniforms::{self, uniform};
use anyhow::bail;
use anyhow::Result;
use slimc_ir::eval::nn::ConvGeometry;
use slimc_ir::{BatchNorm, Conv2d, Op};

impl Builder<'_> {
    /// A convolution's input gradient.
    pub(super) fn conv_grad_input(&mut self, at: &At, c: &Conv2d) -> Result<()> {
        let (n, x, out) = (at.n, at.x, at.out.clone());
        let geo = ConvGeometry::new(&self.shape(n.inputs[2]), &self.shape(n.inputs[1]), c);
        let (dy, w, dummy) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone(), self.dummy.clone());
        if !self.conv_packed(packed::Pass::GradInput, &geo, c, [&dy, &w, &dummy, &out])? {
            self.conv_gemm(1, &geo, c, false, [&dy, &w, &dummy, &out], 1)?;
        }
        Ok(())
    }

    /// A convolution's weight gradient: chunked partial sums, then their reduction.
    pub(super) fn conv_grad_weight(&mut self, at: &At, c: &Conv2d) -> Result<()> {
        let (n, x, out, limit) = (at.n, at.x, at.out.clone(), at.limit);
        let geo = ConvGeometry::new(&self.shape(n.inputs[1]), &self.shape(n.inputs[2]), c);
        let (dy, xv, dummy) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone(), self.dummy.clone());
        if self.conv_packed(packed::Pass::GradWeight, &geo, c, [&xv, &dy, &dummy, &out])? {
            return Ok(());
        }
        let numel = geo.cout * geo.cg * geo.kh * geo.kw;
        let k = geo.n * geo.oh * geo.ow;
        // Chunks of the reduction: enough to fill the device, their partial sums at most
        // 4M floats.
        let chunks = k.div_ceil(2048).clamp(1, (4 << 20) / numel.max(1)).clamp(1, 256);
        let partial = storage(self.ctx, (chunks * numel) as u64 * 4, "weight-gradient partial sums");
        self.conv_gemm(2, &geo, c, false, [&xv, &dy, &dummy, &partial], chunks)?;
        let p = uniforms::ChunkParams { numel: numel as u32, chunks: chunks as u32, pad: [0; 2] };
        self.step(
            Entry::ConvReduce,
            &[uniform("R", &p)],
            &[("partial", &partial), ("summed", &out)],
            flat_grid(numel, limit)?,
        );
        self.scratch.push(partial);
        Ok(())
    }

    /// A convolution node, with the batch norm and SiLU fused into it: the epilogue's
    /// coefficients, then the convolution.
    pub(super) fn conv(&mut self, i: usize, c: &slimc_ir::Conv2d) -> Result<()> {
        let graph = self.g.graph;
        let n = &graph.nodes[i];
        let fused = self.g.fused.get(&i).copied();
        let geo = ConvGeometry::new(&self.shape(n.inputs[0]), &self.shape(n.inputs[1]), c);
        let coef = storage(self.ctx, geo.cout as u64 * 8, "epilogue");
        let bn = fused.and_then(|f| f.bn).map(|j| &graph.nodes[j]);
        let fold = uniforms::FoldParams {
            cout: geo.cout as u32,
            has_bias: (n.inputs.len() > 2) as u32,
            has_bn: bn.is_some() as u32,
            eps: match bn.map(|b| &b.op) {
                Some(Op::BatchNorm(BatchNorm { eps, .. })) => *eps,
                // Not fused with a batch norm.
                _ => 0.0,
            },
        };
        let dummy = self.dummy.clone();
        let bias = n.inputs.get(2).map(|&v| self.buf(v).clone()).unwrap_or_else(|| dummy.clone());
        let stats: Vec<wgpu::Buffer> = match bn {
            Some(b) => b.inputs[1..5].iter().map(|&v| self.buf(v).clone()).collect(),
            None => vec![dummy; 4],
        };
        let mut bindings = vec![("bias", &bias)];
        bindings.extend(["gamma", "beta", "mean", "var_"].into_iter().zip(stats.iter()));
        bindings.push(("coef_out", &coef));
        let limit = self.limit();
        self.step(Entry::ConvCoefficients, &[uniform("F", &fold)], &bindings, flat_grid(geo.cout, limit)?);
        let out = fused.map_or(n.outputs[0], |f| f.out);
        let (x, w, y) = (self.buf(n.inputs[0]).clone(), self.buf(n.inputs[1]).clone(), self.buf(out).clone());
        let silu = fused.is_some_and(|f| f.silu);
        if !self.conv_packed(packed::Pass::Forward { silu }, &geo, c, [&x, &w, &coef, &y])? {
            self.conv_gemm(0, &geo, c, silu, [&x, &w, &coef, &y], 1)?;
        }
        self.scratch.push(coef);
        Ok(())
    }

    /// One implicit GEMM of `conv.wgsl` in `mode` (0 forward, 1 input gradient, 2 weight
    /// gradient in `chunks` partial sums) on buffers `[src, aux, coef, dst]`: tiled in workgroup
    /// memory, or one output per invocation when the GEMM has a single row (depthwise).
    fn conv_gemm(
        &mut self,
        mode: u32,
        geo: &ConvGeometry,
        c: &slimc_ir::Conv2d,
        silu: bool,
        [src, aux, coef, dst]: [&wgpu::Buffer; 4],
        chunks: usize,
    ) -> Result<()> {
        let taps = geo.kh * geo.kw;
        let (gm, gn, gk) = match mode {
            0 => (geo.og, geo.n * geo.oh * geo.ow, geo.cg * taps),
            1 => (geo.cg, geo.n * geo.h * geo.w, geo.og * taps),
            _ => (geo.og, geo.cg * taps, geo.n * geo.oh * geo.ow),
        };
        let u = uniforms::size32;
        let [n, cin, h, w, cout, cg, og, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw] = uniforms::conv_sizes(geo, c)?;
        let p = uniforms::ConvParams {
            n,
            cin,
            h,
            w,
            cout,
            cg,
            kh,
            kw,
            oh,
            ow,
            og,
            m_tiles: u(gm.div_ceil(64))?,
            sh,
            sw,
            ph,
            pw,
            dh,
            dw,
            act: silu as u32,
            pad0: 0,
            gm: u(gm)?,
            gn: u(gn)?,
            gk: u(gk)?,
            chunk: u(gk.div_ceil(chunks))?,
        };
        let chunks = gk.div_ceil(p.chunk.max(1) as usize).max(1);
        let limit = self.limit();
        let (entry, g) = if gm == 1 {
            (Entry::ConvDirect, flat_grid(chunks * geo.g * gn, limit)?)
        } else {
            let tiles = (gn as u64).div_ceil(64);
            let gy = geo.g as u64 * p.m_tiles as u64;
            if gy > limit as u64 || chunks > limit as usize {
                bail!("{gy} channel tiles or {chunks} chunks exceed the grid limit {limit}");
            }
            let g = match mode {
                2 => [u(tiles as usize)?, gy as u32, chunks as u32],
                _ => {
                    let [gx, gz, _] = grid(tiles, limit)?;
                    [gx, gy as u32, gz]
                }
            };
            (Entry::ConvTiled, g)
        };
        let bindings = [("src", src), ("aux", aux), ("coef", coef), ("dst", dst)];
        self.mode = mode;
        self.step(entry, &[uniform("P", &p)], &bindings, g);
        self.mode = 0;
        Ok(())
    }
}
