//! The Detect head's level maps `[N, no, h, w]` gathered into one anchor-major buffer
//! `[N, anchors, no]` (levels in order), as the losses read them, and gradients scattered back.

use super::{storage, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{contiguous, uniform, Strided, View};
use anyhow::Result;
use slimc_ir::ValueId;

/// Where one level's map sits in the anchor-major buffer.
pub(super) struct LevelView {
    shape: [usize; 3],
    offset: usize,
    strides: [isize; 3],
}

impl Builder<'_> {
    /// Copies `levels` (each `[N, no, h, w]`) into a new buffer `[N, anchors, no]`; returns it and
    /// where each level went.
    pub(super) fn gather_levels(&mut self, levels: &[ValueId], label: &str) -> Result<(wgpu::Buffer, Vec<LevelView>)> {
        let shapes: Vec<Vec<usize>> = levels.iter().map(|&v| self.shape(v)).collect();
        let (batch, no) = (shapes[0][0], shapes[0][1]);
        let na: usize = shapes.iter().map(|s| s[2] * s[3]).sum();
        let buf = storage(self.ctx, (batch * na * no) as u64 * 4, label);
        let mut first = 0;
        let mut views = vec![];
        for (&v, s) in levels.iter().zip(&shapes) {
            let hw = s[2] * s[3];
            let view =
                LevelView { shape: [batch, no, hw], offset: first * no, strides: [(na * no) as isize, 1, no as isize] };
            let copy = View::copy(
                &view.shape,
                &Strided { offset: 0, strides: &contiguous(&view.shape) },
                &Strided { offset: view.offset as isize, strides: &view.strides },
            )?;
            self.copy(copy, view.shape.iter().product(), v, &buf)?;
            views.push(view);
            first += hw;
        }
        Ok((buf, views))
    }

    /// Copies the anchor-major `src` back into one buffer per level, laid out as `views` say.
    pub(super) fn scatter_levels(
        &mut self,
        src: &wgpu::Buffer,
        views: &[LevelView],
        outs: &[wgpu::Buffer],
    ) -> Result<()> {
        for (v, out) in views.iter().zip(outs) {
            let copy = View::copy(
                &v.shape,
                &Strided { offset: v.offset as isize, strides: &v.strides },
                &Strided { offset: 0, strides: &contiguous(&v.shape) },
            )?;
            let grid = flat_grid(v.shape.iter().product(), self.limit())?;
            self.step(Entry::StridedCopy, &[uniform("V", &copy)], &[("src", src), ("dst", out)], grid);
        }
        Ok(())
    }
}
