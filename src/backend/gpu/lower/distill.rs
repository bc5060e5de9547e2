//! Lowering knowledge distillation and its gradient to the passes of `distill.wgsl`.

use super::{storage, Builder};
use crate::backend::gpu::kernels::{flat_grid, Entry};
use crate::backend::gpu::uniforms::{uniform, DistillParams};
use anyhow::{anyhow, bail, Result};
use slimc_ir::Distill;

impl Builder<'_> {
    /// The distillation loss (or its gradient) of node `i`: the student's and the teacher's
    /// level maps gathered anchor-major, the passes of `distill.wgsl`, and for the gradient the
    /// result scattered back per student level.
    pub(super) fn distill_loss(&mut self, i: usize, d: &Distill, grad: bool) -> Result<()> {
        let n = &self.g.graph.nodes[i];
        let (student, teacher) = n.inputs.split_at(n.inputs.len() / 2);
        let (student, teacher) = (student.to_vec(), teacher.to_vec());
        let outs: Vec<wgpu::Buffer> = n.outputs.iter().map(|&o| self.buf(o).clone()).collect();
        let s0 = self.shape(student[0]);
        let (batch, no) = (s0[0], s0[1]);
        let na: usize = student.iter().map(|&v| self.shape(v)).map(|s| s[2] * s[3]).sum();
        let index =
            |what: &str, v: usize| u32::try_from(v).map_err(|_| anyhow!("distillation {what} exceed 32-bit indexing"));
        let [gain_cls, gain_box] = d.gains[..] else { bail!("distillation gains {:?} are not (class, box)", d.gains) };
        let p = DistillParams {
            batch: batch as u32,
            na: na as u32,
            nc: (no - 4 * d.reg_max) as u32,
            reg_max: d.reg_max as u32,
            temperature: d.temperature,
            gain_cls,
            gain_box,
            grad: u32::from(grad),
            part: 0,
            sums: index("working arrays", batch * na * 3)?,
            pad: [0; 2],
        };
        let limit = self.ctx.limits.max_storage_buffer_binding_size;
        if (batch * na * no * 4) as u64 > limit {
            bail!("the distillation maps ({batch}x{na}x{no}) exceed the adapter's largest binding");
        }
        let work = storage(self.ctx, (batch * na * 3 + 1) as u64 * 4, "distill work");
        let (ps, views) = self.gather_levels(&student, "anchor-major student maps")?;
        let (pt, _) = self.gather_levels(&teacher, "anchor-major teacher maps")?;
        let dummies: Vec<wgpu::Buffer> = (0..3).map(|_| storage(self.ctx, 4, "unused")).collect();
        let gpred = if grad {
            storage(self.ctx, (batch * na * no) as u64 * 4, "anchor-major gradient")
        } else {
            dummies[2].clone()
        };
        let (items, total) = if grad { (&dummies[0], &dummies[1]) } else { (&outs[0], &outs[1]) };
        let bindings =
            [("ps", &ps), ("pt", &pt), ("work", &work), ("items", items), ("total", total), ("gpred", &gpred)];
        let k = [uniform("K", &p)];
        let anchors = flat_grid(batch * na, self.limit())?;
        self.step(Entry::KdAnchor, &k, &bindings, anchors);
        self.step(Entry::KdSum, &k, &bindings, [1, 1, 1]);
        if grad {
            self.step(Entry::KdScale, &k, &bindings, flat_grid(batch * na * no, self.limit())?);
            self.scatter_levels(&gpred, &views, &outs)?;
        }
        self.scratch.extend([work, ps, pt, gpred]);
        self.scratch.extend(dummies);
        Ok(())
    }
}
