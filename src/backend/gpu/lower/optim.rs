//! Lowering the optimizer's ops: accumulation, the EMA, the global gradient norm and the
//! SGD and AdamW updates.

use super::storage;
use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, grid, Entry};
use crate::backend::gpu::uniforms::{self, uniform};
use anyhow::Result;
use slimc_ir::Update;

impl Builder<'_> {
    /// Gradient accumulation (two results) or the EMA update (one).
    pub(super) fn accumulate_or_ema(&mut self, at: &At, accumulate: bool) -> Result<()> {
        let (n, xs, limit) = (at.n, at.xs.clone(), at.limit);
        let numel: usize = xs.iter().product();
        let p = uniforms::CountParams { n: numel as u32, pad: [0; 3] };
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        let mut bindings = vec![("e_scalars", &b[2]), ("e_a", &b[0]), ("e_b", &b[1]), ("e_out", &b[3])];
        let entry = if accumulate {
            bindings.push(("e_out2", &b[4]));
            Entry::Accumulate
        } else {
            Entry::EmaUpdate
        };
        self.step(entry, &[uniform("C", &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }

    /// The global gradient norm: partial sums of squares per block, then their root.
    pub(super) fn global_norm(&mut self, at: &At) -> Result<()> {
        let (n, out, limit) = (at.n, at.out.clone(), at.limit);
        let sizes: Vec<usize> = n.inputs.iter().map(|&v| self.shape(v).iter().product()).collect();
        let blocks: Vec<usize> = sizes.iter().map(|s| s.div_ceil(4096).max(1)).collect();
        let total: usize = blocks.iter().sum();
        let partial = storage(self.ctx, total as u64 * 4, "squared-norm partial sums");
        let mut first = 0;
        for ((&v, &size), &count) in n.inputs.iter().zip(&sizes).zip(&blocks) {
            let q = uniforms::SquaresParams { n: size as u32, first: first as u32, total: total as u32, pad0: 0 };
            let t = self.buf(v).clone();
            let grid = grid(count as u64, limit)?;
            self.step(Entry::SumSquares, &[uniform("Q", &q)], &[("q_in", &t), ("q_partial", &partial)], grid);
            first += count;
        }
        let q = uniforms::SquaresParams { n: 0, first: 0, total: total as u32, pad0: 0 };
        let bindings = [("q_partial_in", &partial), ("q_norm", &out)];
        self.step(Entry::NormOfPartials, &[uniform("Q", &q)], &bindings, [1, 1, 1]);
        self.scratch.push(partial);
        Ok(())
    }

    /// An SGD or AdamW update.
    pub(super) fn update(&mut self, at: &At, u: &Update, adamw: bool) -> Result<()> {
        let (n, xs, limit) = (at.n, at.xs.clone(), at.limit);
        let numel: usize = xs.iter().product();
        let p = uniforms::UpdateParams {
            n: numel as u32,
            group: u.group as u32,
            weight_decay: u.weight_decay,
            max_norm: u.max_norm,
            prox: u.prox.is_some() as u32,
            keep: u.prox.unwrap_or(0) as u32,
            beta1: u.beta1,
            pad0: 0,
        };
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        // p g norm scalars s1 [s2] | p' s1' [s2']
        let mut bindings = vec![("scalars", &b[3]), ("p", &b[0]), ("g", &b[1]), ("norm", &b[2]), ("s1", &b[4])];
        let entry = if adamw {
            bindings.extend([("s2", &b[5]), ("p_next", &b[6]), ("s1_next", &b[7]), ("s2_next", &b[8])]);
            Entry::AdamWUpdate
        } else {
            bindings.extend([("p_next", &b[5]), ("s1_next", &b[6])]);
            Entry::SgdUpdate
        };
        self.step(entry, &[uniform("U", &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }
}
