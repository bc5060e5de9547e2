//! Lowering the elementwise ops, softmax, the sum over broadcast axes and batched matmul.

use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{self, contiguous, uniform, Strided, View};
use anyhow::Result;
use slimc_ir::layout::broadcast_strides;
use slimc_ir::Binary;

impl Builder<'_> {
    /// An activation or its gradient: the kernel `entry` of `activation.wgsl` on the node's
    /// one or two inputs.
    pub(super) fn activation(&mut self, at: &At, entry: Entry) -> Result<()> {
        let (n, x, out, limit) = (at.n, at.x, at.out.clone(), at.limit);
        let numel: usize = at.xs.iter().product();
        let p = uniforms::CountParams { n: numel as u32, pad: [0; 3] };
        let a = self.buf(x).clone();
        let mut bindings = vec![("a", &a), ("out", &out)];
        let b = n.inputs.get(1).map(|&v| self.buf(v).clone());
        if let Some(b) = &b {
            bindings.push(("b", b));
        }
        self.step(entry, &[uniform("C", &p)], &bindings, flat_grid(numel, limit)?);
        Ok(())
    }

    /// Broadcast arithmetic.
    pub(super) fn binary(&mut self, at: &At, op: Binary) -> Result<()> {
        let (n, x, y, xs, out, limit) = (at.n, at.x, at.y, at.xs.clone(), at.out.clone(), at.limit);
        let os = self.shape(y);
        let ys = self.shape(n.inputs[1]);
        let (sa, sb, so) = (broadcast_strides(&xs, &os), broadcast_strides(&ys, &os), contiguous(&os));
        let mut view = View::new(
            &os,
            &Strided { offset: 0, strides: &sa },
            Some(&Strided { offset: 0, strides: &sb }),
            &Strided { offset: 0, strides: &so },
        )?;
        view.code = match op {
            Binary::Add => 0,
            Binary::Sub => 1,
            Binary::Mul => 2,
            Binary::Div => 3,
        };
        let (a, b) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
        let numel = os.iter().product();
        self.step(
            Entry::Binary,
            &[uniform("V", &view)],
            &[("a", &a), ("b", &b), ("out", &out)],
            flat_grid(numel, limit)?,
        );
        Ok(())
    }

    /// A batched matmul.
    pub(super) fn matmul(&mut self, at: &At) -> Result<()> {
        let (n, x, y, xs, out, limit) = (at.n, at.x, at.y, at.xs.clone(), at.out.clone(), at.limit);
        let os = self.shape(y);
        let bs = self.shape(n.inputs[1]);
        let r = os.len();
        let (m, k, nn) = (xs[xs.len() - 2], xs[xs.len() - 1], bs[bs.len() - 1]);
        let batch = &os[..r - 2];
        let scaled = |shape: &[usize], mat: usize| -> Vec<isize> {
            broadcast_strides(&shape[..shape.len() - 2], batch).into_iter().map(|s| s * mat as isize).collect()
        };
        let (sa, sb) = (scaled(&xs, m * k), scaled(&bs, k * nn));
        let so = vec![0; batch.len()];
        let view = View::new(
            batch,
            &Strided { offset: 0, strides: &sa },
            Some(&Strided { offset: 0, strides: &sb }),
            &Strided { offset: 0, strides: &so },
        )?;
        let batches: usize = batch.iter().product();
        let p = uniforms::MatMulParams { m: m as u32, n: nn as u32, k: k as u32, batches: batches as u32 };
        let (a, b) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
        self.step(
            Entry::MatMul,
            &[uniform("V", &view), uniform("M", &p)],
            &[("a", &a), ("b", &b), ("out", &out)],
            flat_grid(batches * m * nn, limit)?,
        );
        Ok(())
    }

    /// Softmax along an axis.
    pub(super) fn softmax(&mut self, at: &At, axis: &usize) -> Result<()> {
        let (x, xs, out, limit) = (at.x, at.xs.clone(), at.out.clone(), at.limit);
        let p = lines(&xs, *axis);
        let a = self.buf(x).clone();
        let count = (p.outer * p.inner) as usize;
        self.step(Entry::Softmax, &[uniform("L", &p)], &[("x", &a), ("y", &out)], flat_grid(count, limit)?);
        Ok(())
    }

    /// Softmax's gradient.
    pub(super) fn softmax_grad(&mut self, at: &At, axis: &usize) -> Result<()> {
        let (n, x, xs, out, limit) = (at.n, at.x, at.xs.clone(), at.out.clone(), at.limit);
        let p = lines(&xs, *axis);
        let y = self.buf(n.inputs[1]).clone();
        let dy = self.buf(x).clone();
        let count = (p.outer * p.inner) as usize;
        let bindings = [("gdy", &dy), ("gy", &y), ("gdx", &out)];
        self.step(Entry::SoftmaxGrad, &[uniform("LG", &p)], &bindings, flat_grid(count, limit)?);
        Ok(())
    }

    /// The sum over broadcast axes.
    pub(super) fn sum_to(&mut self, at: &At) -> Result<()> {
        let (x, y, xs, out, limit) = (at.x, at.y, at.xs.clone(), at.out.clone(), at.limit);
        let os = self.shape(y);
        let r = xs.len();
        let mut padded = vec![1; r - os.len()];
        padded.extend(&os);
        let sx = contiguous(&xs);
        let kept: Vec<isize> = (0..r).map(|d| if padded[d] == xs[d] { sx[d] } else { 0 }).collect();
        let reduced: Vec<usize> = (0..r).map(|d| if padded[d] == xs[d] { 1 } else { xs[d] }).collect();
        let zero = vec![0; r];
        let kv =
            View::new(&padded, &Strided { offset: 0, strides: &kept }, None, &Strided { offset: 0, strides: &zero })?;
        let rv =
            View::new(&reduced, &Strided { offset: 0, strides: &sx }, None, &Strided { offset: 0, strides: &zero })?;
        let a = self.buf(x).clone();
        let numel = os.iter().product();
        self.step(
            Entry::SumTo,
            &[uniform("KEPT", &kv), uniform("REDUCED", &rv)],
            &[("sx", &a), ("sy", &out)],
            flat_grid(numel, limit)?,
        );
        Ok(())
    }
}

/// A softmax's lines along `axis` of a tensor of `shape`.
fn lines(shape: &[usize], axis: usize) -> uniforms::LineParams {
    uniforms::LineParams {
        outer: shape[..axis].iter().product::<usize>() as u32,
        n: shape[axis] as u32,
        inner: shape[axis + 1..].iter().product::<usize>() as u32,
        pad0: 0,
    }
}
