//! Lowering batch normalisation: inference, training statistics and the gradient.

use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{self, uniform};
use anyhow::Result;
use slimc_ir::eval::nn::unbiased_factor;
use slimc_ir::BatchNorm;

impl Builder<'_> {
    /// Inference-mode batch norm.
    pub(super) fn batch_norm(&mut self, at: &At, BatchNorm { eps, .. }: &BatchNorm) -> Result<()> {
        let (n, xs, out, limit) = (at.n, at.xs.clone(), at.out.clone(), at.limit);
        let numel: usize = xs.iter().product();
        let p = uniforms::NormParams {
            numel: numel as u32,
            channels: xs[1] as u32,
            plane: xs[2..].iter().product::<usize>() as u32,
            eps: *eps,
        };
        let bufs: Vec<wgpu::Buffer> = n.inputs.iter().map(|&v| self.buf(v).clone()).collect();
        let bindings: Vec<(&str, &wgpu::Buffer)> =
            ["x", "gamma", "beta", "mean", "var_"].into_iter().zip(bufs.iter()).chain([("y", &out)]).collect();
        self.step(Entry::BatchNorm, &[uniform("P", &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }

    /// Training-mode batch norm: statistics, then the normalisation.
    pub(super) fn batch_norm_train(&mut self, at: &At, BatchNorm { eps, momentum }: &BatchNorm) -> Result<()> {
        let (n, xs, limit) = (at.n, at.xs.clone(), at.limit);
        let count = xs[0] * xs[2..].iter().product::<usize>();
        let p = self.train_params(&xs, *eps, *momentum, count);
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        // x γ β rm rv | y mean invstd rm' rv'
        let stats = [
            ("tx", &b[0]),
            ("run_mean", &b[3]),
            ("run_var", &b[4]),
            ("batch_mean", &b[6]),
            ("batch_invstd", &b[7]),
            ("next_mean", &b[8]),
            ("next_var", &b[9]),
        ];
        self.step(Entry::BnStats, &[uniform("T", &p)], &stats, [xs[1] as u32, 1, 1]);
        let apply = [
            ("ax", &b[0]),
            ("a_gamma", &b[1]),
            ("a_beta", &b[2]),
            ("a_mean", &b[6]),
            ("a_invstd", &b[7]),
            ("ay", &b[5]),
        ];
        let numel = xs.iter().product();
        self.step(Entry::BnTrainApply, &[uniform("A", &p)], &apply, flat_grid(numel, limit)?);
        Ok(())
    }

    /// Batch norm's gradient: channel sums, then the input gradient.
    pub(super) fn batch_norm_grad(&mut self, at: &At) -> Result<()> {
        let (n, limit) = (at.n, at.limit);
        let xs = self.shape(n.inputs[1]);
        let p = self.train_params(&xs, 0.0, 0.0, 0);
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        // dy x γ mean invstd | dx dγ dβ
        let sums = [
            ("gdy", &b[0]),
            ("gx", &b[1]),
            ("g_mean", &b[3]),
            ("g_invstd", &b[4]),
            ("dgamma", &b[6]),
            ("dbeta", &b[7]),
        ];
        self.step(Entry::BnGradStats, &[uniform("G", &p)], &sums, [xs[1] as u32, 1, 1]);
        let apply = [
            ("ddy", &b[0]),
            ("dx_in", &b[1]),
            ("d_gamma", &b[2]),
            ("d_mean", &b[3]),
            ("d_invstd", &b[4]),
            ("d_dgamma", &b[6]),
            ("d_dbeta", &b[7]),
            ("ddx", &b[5]),
        ];
        let numel = xs.iter().product();
        self.step(Entry::BnGradApply, &[uniform("D", &p)], &apply, flat_grid(numel, limit)?);
        Ok(())
    }

    /// The uniform of the training-mode kernels for an input of shape `xs` over `count` values
    /// per channel.
    pub(super) fn train_params(&self, xs: &[usize], eps: f32, momentum: f32, count: usize) -> uniforms::TrainParams {
        uniforms::TrainParams {
            n: xs[0] as u32,
            channels: xs[1] as u32,
            plane: xs[2..].iter().product::<usize>() as u32,
            eps,
            momentum,
            unbias: unbiased_factor(count) as f32,
            pad: [0; 2],
        }
    }
}
