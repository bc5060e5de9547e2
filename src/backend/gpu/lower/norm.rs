//! Lowering batch normalisation: inference, training statistics and the gradient.

use super::{At, Builder};
use crate::backend::gpu::kernels::{self, flat_grid, uniform};
use anyhow::Result;
use slimc_ir::eval::nn::unbiased_factor;
use slimc_ir::BatchNorm;

impl Builder<'_> {
    /// Inference-mode batch norm.
    pub(super) fn batch_norm(&mut self, at: &At, BatchNorm { eps, .. }: &BatchNorm) -> Result<()> {
        let (n, xs, out, limit) = (at.n, at.xs.clone(), at.out.clone(), at.limit);
        let numel: usize = xs.iter().product();
        let p = kernels::NormParams {
            numel: numel as u32,
            channels: xs[1] as u32,
            plane: xs[2..].iter().product::<usize>() as u32,
            eps: *eps,
        };
        let bufs: Vec<wgpu::Buffer> = n.inputs.iter().map(|&v| self.buf(v).clone()).collect();
        let bindings: Vec<(u32, &wgpu::Buffer)> =
            bufs.iter().enumerate().map(|(k, b)| (k as u32 + 1, b)).chain([(6, &out)]).collect();
        self.step(("batch_norm", "batch_norm"), &[uniform(0, &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }

    /// Training-mode batch norm: statistics, then the normalisation.
    pub(super) fn batch_norm_train(&mut self, at: &At, BatchNorm { eps, momentum }: &BatchNorm) -> Result<()> {
        let (n, xs, limit) = (at.n, at.xs.clone(), at.limit);
        let count = xs[0] * xs[2..].iter().product::<usize>();
        let p = self.train_params(&xs, *eps, *momentum, count);
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        // x γ β rm rv | y mean invstd rm' rv'
        let stats = [(11, &b[0]), (12, &b[3]), (13, &b[4]), (14, &b[6]), (15, &b[7]), (16, &b[8]), (17, &b[9])];
        self.step(("batch_norm", "bn_stats"), &[uniform(10, &p)], &stats, [xs[1] as u32, 1, 1]);
        let apply = [(21, &b[0]), (22, &b[1]), (23, &b[2]), (24, &b[6]), (25, &b[7]), (26, &b[5])];
        let numel = xs.iter().product();
        self.step(("batch_norm", "bn_train_apply"), &[uniform(20, &p)], &apply, flat_grid(numel, limit)?);
        Ok(())
    }

    /// Batch norm's gradient: channel sums, then the input gradient.
    pub(super) fn batch_norm_grad(&mut self, at: &At) -> Result<()> {
        let (n, limit) = (at.n, at.limit);
        let xs = self.shape(n.inputs[1]);
        let p = self.train_params(&xs, 0.0, 0.0, 0);
        let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
        // dy x γ mean invstd | dx dγ dβ
        let sums = [(31, &b[0]), (32, &b[1]), (33, &b[3]), (34, &b[4]), (35, &b[6]), (36, &b[7])];
        self.step(("batch_norm", "bn_grad_stats"), &[uniform(30, &p)], &sums, [xs[1] as u32, 1, 1]);
        let apply =
            [(41, &b[0]), (42, &b[1]), (43, &b[2]), (44, &b[3]), (45, &b[4]), (46, &b[6]), (47, &b[7]), (48, &b[5])];
        let numel = xs.iter().product();
        self.step(("batch_norm", "bn_grad_apply"), &[uniform(40, &p)], &apply, flat_grid(numel, limit)?);
        Ok(())
    }

    /// The uniform of the training-mode kernels for an input of shape `xs` over `count` values
    /// per channel.
    pub(super) fn train_params(&self, xs: &[usize], eps: f32, momentum: f32, count: usize) -> kernels::TrainParams {
        kernels::TrainParams {
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
