//! Lowering data movement: concatenation, split, slice, transpose, reshape, upsampling, their
//! gradients and the anchor grid — strided copies of `layout.wgsl`.

use super::{At, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{self, contiguous, uniform, Strided, View};
use anyhow::Result;
use slimc_ir::layout::{slice_view, transpose_strides};
use slimc_ir::{Anchors, Slice};

impl Builder<'_> {
    /// A concatenation: one strided copy per part.
    pub(super) fn concat(&mut self, at: &At, axis: &usize) -> Result<()> {
        let (n, y, out) = (at.n, at.y, at.out.clone());
        let os = self.shape(y);
        let so = contiguous(&os);
        let mut at = 0;
        for &part in &n.inputs {
            let ps = self.shape(part);
            let view = View::copy(
                &ps,
                &Strided { offset: 0, strides: &contiguous(&ps) },
                &Strided { offset: at as isize * so[*axis], strides: &so },
            )?;
            self.copy(view, ps.iter().product(), part, &out)?;
            at += ps[*axis];
        }
        Ok(())
    }

    /// A split: one strided copy per piece.
    pub(super) fn split(&mut self, at: &At, axis: &usize) -> Result<()> {
        let (n, x, xs) = (at.n, at.x, at.xs.clone());
        let sx = contiguous(&xs);
        let mut at = 0;
        for &o in &n.outputs {
            let os = self.shape(o);
            let view = View::copy(
                &os,
                &Strided { offset: at as isize * sx[*axis], strides: &sx },
                &Strided { offset: 0, strides: &contiguous(&os) },
            )?;
            let dst = self.buf(o).clone();
            self.copy(view, os.iter().product(), x, &dst)?;
            at += os[*axis];
        }
        Ok(())
    }

    /// A strided slice as a copy.
    pub(super) fn slice(&mut self, at: &At, Slice { axes, starts, ends, steps }: &Slice) -> Result<()> {
        let (x, y, xs, out) = (at.x, at.y, at.xs.clone(), at.out.clone());
        let os = self.shape(y);
        let (offset, strides) = slice_view(&xs, axes, starts, ends, steps)?;
        let view =
            View::copy(&os, &Strided { offset, strides: &strides }, &Strided { offset: 0, strides: &contiguous(&os) })?;
        self.copy(view, os.iter().product(), x, &out)?;
        Ok(())
    }

    /// A transpose as a copy.
    pub(super) fn transpose(&mut self, at: &At, perm: &[usize]) -> Result<()> {
        let (x, y, xs, out) = (at.x, at.y, at.xs.clone(), at.out.clone());
        let os = self.shape(y);
        let view = View::copy(
            &os,
            &Strided { offset: 0, strides: &transpose_strides(&xs, perm) },
            &Strided { offset: 0, strides: &contiguous(&os) },
        )?;
        self.copy(view, os.iter().product(), x, &out)?;
        Ok(())
    }

    /// A reshape as a contiguous copy.
    pub(super) fn reshape(&mut self, at: &At) -> Result<()> {
        let (x, xs, out) = (at.x, at.xs.clone(), at.out.clone());
        let numel: usize = xs.iter().product();
        let view = View::copy(&[numel], &Strided { offset: 0, strides: &[1] }, &Strided { offset: 0, strides: &[1] })?;
        self.copy(view, numel, x, &out)?;
        Ok(())
    }

    /// Nearest-neighbour upsampling as a copy with zero strides.
    pub(super) fn upsample(&mut self, at: &At, scale: &[usize; 2]) -> Result<()> {
        let (x, xs, out) = (at.x, at.xs.clone(), at.out.clone());
        // The output [N, C, H·s, W·s] as [N·C, H, s, W, s], reading the input with zero
        // strides along the repeats.
        let (h, w) = (xs[2], xs[3]);
        let shape = [xs[0] * xs[1], h, scale[0], w, scale[1]];
        let src = [(h * w) as isize, w as isize, 0, 1, 0];
        let view = View::copy(
            &shape,
            &Strided { offset: 0, strides: &src },
            &Strided { offset: 0, strides: &contiguous(&shape) },
        )?;
        self.copy(view, shape.iter().product(), x, &out)?;
        Ok(())
    }

    /// The anchor grid, level by level.
    pub(super) fn anchors(&mut self, at: &At, Anchors { strides, offset }: &Anchors) -> Result<()> {
        let (n, y, out, limit) = (at.n, at.y, at.out.clone(), at.limit);
        let total = self.shape(y)[1];
        let st = self.buf(n.outputs[1]).clone();
        let mut first = 0;
        for (&level, &s) in n.inputs.iter().zip(strides) {
            let ls = self.shape(level);
            let p = uniforms::LevelParams {
                h: ls[2] as u32,
                w: ls[3] as u32,
                first: first as u32,
                total: total as u32,
                offset: *offset,
                stride: s,
                pad: [0; 2],
            };
            self.step(
                Entry::Anchors,
                &[uniform("L", &p)],
                &[("points", &out), ("strides", &st)],
                flat_grid(ls[2] * ls[3], limit)?,
            );
            first += ls[2] * ls[3];
        }
        Ok(())
    }

    /// Upsampling's gradient: block sums.
    pub(super) fn upsample_grad(&mut self, at: &At, scale: &[usize; 2]) -> Result<()> {
        let (x, y, out, limit) = (at.x, at.y, at.out.clone(), at.limit);
        let os = self.shape(y);
        let p = uniforms::BlockParams {
            n_planes: (os[0] * os[1]) as u32,
            h: os[2] as u32,
            w: os[3] as u32,
            sy: scale[0] as u32,
            sx: scale[1] as u32,
            pad: [0; 3],
        };
        let dy = self.buf(x).clone();
        let numel = os.iter().product();
        let grid = flat_grid(numel, limit)?;
        self.step(Entry::UpsampleNearestGrad, &[uniform("B", &p)], &[("bdy", &dy), ("bdx", &out)], grid);
        Ok(())
    }

    /// A slice's gradient: zeros, then the slice's elements copied in.
    pub(super) fn slice_grad(&mut self, at: &At, Slice { axes, starts, ends, steps }: &Slice) -> Result<()> {
        let (n, x, xs, out, limit) = (at.n, at.x, at.xs.clone(), at.out.clone(), at.limit);
        let full = self.shape(n.inputs[1]);
        let numel: usize = full.iter().product();
        let f = uniforms::FillParams { n: numel as u32, value: 0.0, pad: [0; 2] };
        self.step(Entry::Fill, &[uniform("F", &f)], &[("filled", &out)], flat_grid(numel, limit)?);
        let (offset, strides) = slice_view(&full, axes, starts, ends, steps)?;
        let view =
            View::copy(&xs, &Strided { offset: 0, strides: &contiguous(&xs) }, &Strided { offset, strides: &strides })?;
        self.copy(view, xs.iter().product(), x, &out)?;
        Ok(())
    }
}
