//! Lowering Ultralytics' detection loss and its gradient to the passes of `detect_loss.wgsl`.

use super::{storage, Builder, Loc};
use crate::backend::gpu::kernels::{flat_grid, grid, Entry};
use crate::backend::gpu::uniforms::{self, uniform};
use anyhow::{anyhow, bail, Result};
use bytemuck::Zeroable;
use slimc_ir::DetectLoss;

impl Builder<'_> {
    /// The detect loss (or its gradient) of node `i`: the level maps gathered anchor-major, the
    /// passes of `detect_loss.wgsl`, and for the gradient the result scattered back per level.
    pub(super) fn detect_loss(&mut self, i: usize, d: &DetectLoss, grad: bool) -> Result<()> {
        let DetectLoss { strides, gains, reg_max } = d;
        let reg_max = *reg_max;
        let n = &self.g.graph.nodes[i];
        let (levels, targets) = n.inputs.split_at(n.inputs.len() - 1);
        let shapes: Vec<Vec<usize>> = levels.iter().map(|&v| self.shape(v)).collect();
        if levels.len() > 4 {
            bail!("{} levels (the GPU loss takes at most 4)", levels.len());
        }
        let (batch, no) = (shapes[0][0], shapes[0][1]);
        let nc = no - 4 * reg_max;
        let na: usize = shapes.iter().map(|s| s[2] * s[3]).sum();
        let rows = self.shape(targets[0])[0];
        if let Loc::Input(k) = self.loc(targets[0]) {
            if !self.targets.contains(&(k, batch, nc)) {
                self.targets.push((k, batch, nc));
            }
        }
        let mut p = uniforms::LossParams::zeroed();
        let mut at = 0usize;
        let mut region = |len: usize| -> Result<u32> {
            let start = at;
            at += len;
            u32::try_from(start).map_err(|_| anyhow!("the loss's working arrays exceed 32-bit indexing"))
        };
        (p.dec, p.ov, p.al, p.pos) =
            (region(batch * na * 8)?, region(rows * na)?, region(rows * na)?, region(rows * na)?);
        (p.asg, p.row_max, p.part, p.sums) =
            (region(batch * na * 2)?, region(rows * 2)?, region(batch * na * 4)?, region(4)?);
        (p.batch, p.na, p.nc, p.reg_max, p.rows, p.levels) =
            (batch as u32, na as u32, nc as u32, reg_max as u32, rows as u32, levels.len() as u32);
        (p.img_w, p.img_h) = (shapes[0][3] as f32 * strides[0], shapes[0][2] as f32 * strides[0]);
        p.gains[..3].copy_from_slice(&gains[..3]);
        let bytes = |floats: usize| floats as u64 * 4;
        let limit = self.ctx.limits.max_storage_buffer_binding_size as u64;
        if bytes(at) > limit || bytes(batch * na * no) > limit {
            bail!("the detect loss's working arrays for {rows} targets exceed the adapter's largest binding");
        }
        let work = storage(self.ctx, bytes(at), "detect-loss work");
        let mut first = 0;
        for (k, s) in shapes.iter().enumerate() {
            (p.level_first[k], p.level_w[k], p.level_stride[k]) = (first as u32, s[3] as u32, strides[k]);
            first += s[2] * s[3];
        }
        let (pred, views) = self.gather_levels(levels, "anchor-major predictions")?;
        let dummies: Vec<wgpu::Buffer> = (0..3).map(|_| storage(self.ctx, 4, "unused")).collect();
        let t = self.buf(targets[0]).clone();
        let outs: Vec<wgpu::Buffer> = n.outputs.iter().map(|&o| self.buf(o).clone()).collect();
        let gpred =
            if grad { storage(self.ctx, bytes(batch * na * no), "anchor-major gradient") } else { dummies[2].clone() };
        let (items, total) = if grad { (&dummies[0], &dummies[1]) } else { (&outs[0], &outs[1]) };
        let bindings =
            [("pred", &pred), ("targets", &t), ("work", &work), ("items", items), ("total", total), ("gpred", &gpred)];
        let loss = [uniform("L", &p)];
        let limit = self.limit();
        let (anchors, boxes) = (flat_grid(batch * na, limit)?, flat_grid(rows * na, limit)?);
        let per_box = grid((rows as u64).div_ceil(64), limit)?;
        for (entry, g) in [
            (Entry::DlDecode, anchors),
            (Entry::DlMetrics, boxes),
            (Entry::DlTopk, per_box),
            (Entry::DlResolve, anchors),
            (Entry::DlRowMax, per_box),
            (Entry::DlScore, anchors),
            (Entry::DlSum, [1, 1, 1]),
        ] {
            self.step(entry, &loss, &bindings, g);
        }
        if grad {
            self.step(Entry::DlGrad, &loss, &bindings, anchors);
            self.scatter_levels(&gpred, &views, &outs)?;
        }
        self.scratch.extend([work, pred, gpred]);
        self.scratch.extend(dummies);
        Ok(())
    }
}
