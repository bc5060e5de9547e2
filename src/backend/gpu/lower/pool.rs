//! Lowering max pooling and its gradient.

use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{self, uniform};
use anyhow::Result;
use slimc_ir::eval::nn::window_out;
use slimc_ir::Pool;

impl Builder<'_> {
    /// Max pooling.
    pub(super) fn max_pool(&mut self, at: &At, Pool { kernel, stride, pad }: &Pool) -> Result<()> {
        let (x, xs, out, limit) = (at.x, at.xs.clone(), at.out.clone(), at.limit);
        let p = pool_params(&xs, *kernel, *stride, *pad);
        let a = self.buf(x).clone();
        let numel = (p.n_planes * p.oh * p.ow) as usize;
        self.step(Entry::MaxPool2d, &[uniform("P", &p)], &[("x", &a), ("y", &out)], flat_grid(numel, limit)?);
        Ok(())
    }

    /// Max pooling's gradient.
    pub(super) fn max_pool_grad(&mut self, at: &At, Pool { kernel, stride, pad }: &Pool) -> Result<()> {
        let (n, x, out, limit) = (at.n, at.x, at.out.clone(), at.limit);
        let xs = self.shape(n.inputs[1]);
        let p = pool_params(&xs, *kernel, *stride, *pad);
        let (dy, xv) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
        let numel = xs.iter().product();
        let bindings = [("gdy", &dy), ("gx", &xv), ("gdx", &out)];
        self.step(Entry::MaxPool2dGrad, &[uniform("PG", &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }
}

/// A max pool's geometry on an input of shape `xs`.
fn pool_params(xs: &[usize], kernel: [usize; 2], stride: [usize; 2], pad: [usize; 4]) -> uniforms::PoolParams {
    uniforms::PoolParams {
        n_planes: (xs[0] * xs[1]) as u32,
        h: xs[2] as u32,
        w: xs[3] as u32,
        oh: window_out(xs[2], kernel[0], stride[0], 1, pad[0], pad[2]) as u32,
        ow: window_out(xs[3], kernel[1], stride[1], 1, pad[1], pad[3]) as u32,
        kh: kernel[0] as u32,
        kw: kernel[1] as u32,
        sh: stride[0] as u32,
        sw: stride[1] as u32,
        ph: pad[0] as u32,
        pw: pad[1] as u32,
        pad0: 0,
    }
}
