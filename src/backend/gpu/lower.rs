//! Lowering a graph, for one set of input shapes, to a program of dispatches: every value in a
//! buffer of the liveness plan's arena (one buffer per slot), every node a few dispatches with
//! their uniforms and bind groups made once, so a run only uploads inputs, records the
//! dispatches into one pass and reads back the results.

mod packed;

pub use packed::ConvLowering;

use super::device::Context;
use super::kernels::{self, contiguous, flat_grid, grid, Strided, View};
use crate::backend::fusion::Fused;
use anyhow::{anyhow, bail, Result};
use bytemuck::Zeroable;
use slimc_ir::eval::nn::{window_out, ConvGeometry};
use slimc_ir::eval::{broadcast_strides, slice_view, transpose_strides};
use slimc_ir::memory::{value_bytes, Plan};
use slimc_ir::{DType, Graph, Op, TensorType, ValueDef, ValueId};
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The k-th graph input's buffer.
    Input(usize),
    /// A parameter's own buffer.
    Param(ValueId),
    /// An arena slot.
    Slot(usize),
}

/// One dispatch.
pub struct Step {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    grid: [u32; 3],
    /// The op and kernel, for the op profile.
    pub label: String,
}

/// A graph lowered for one set of input shapes.
pub struct Program {
    /// One buffer per graph input.
    pub inputs: Vec<wgpu::Buffer>,
    /// One buffer per arena slot.
    pub slots: Vec<wgpu::Buffer>,
    /// The dispatches in order.
    pub steps: Vec<Step>,
    /// Where each graph output is, its shape and its bytes.
    pub outputs: Vec<(Loc, Vec<usize>, u64)>,
    /// Where the readback lands.
    pub staging: wgpu::Buffer,
    /// Graph inputs that are detect-loss targets, with the batch and class count their rows
    /// must fit: checked on the host before upload, as the kernels cannot refuse a row.
    pub targets: Vec<(usize, usize, usize)>,
    /// Buffers only the dispatches use (epilogue coefficients), kept with the program.
    _scratch: Vec<wgpu::Buffer>,
}

impl Program {
    /// Records the dispatches `steps` into one compute pass.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder, steps: std::ops::Range<usize>) {
        let mut pass =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("slimc"), timestamp_writes: None });
        for s in &self.steps[steps] {
            pass.set_pipeline(&s.pipeline);
            pass.set_bind_group(0, &s.bind, &[]);
            pass.dispatch_workgroups(s.grid[0], s.grid[1], s.grid[2]);
        }
    }
}

/// A storage buffer of at least `bytes` (wgpu refuses empty bindings).
pub fn storage(ctx: &Context, bytes: u64, label: &str) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Refuses a tensor larger than the adapter can bind.
pub fn check_binding(ctx: &Context, name: &str, ty: &TensorType) -> Result<()> {
    let bytes = value_bytes(ty).ok_or_else(|| anyhow!("tensor %{name} ({ty}) is too large to address"))?;
    let limit = ctx.limits.max_storage_buffer_binding_size as u64;
    if bytes > limit {
        bail!(
            "tensor %{name} ({ty}) needs {}, more than {}'s largest storage binding ({}); use a smaller batch or \
             image size, or --device cpu",
            crate::backend::memory::human(bytes),
            ctx.adapter.name,
            crate::backend::memory::human(limit)
        );
    }
    if ty.dtype != DType::F32 {
        bail!("tensor %{name} is {}: the GPU backend computes in f32 only", ty.dtype.name());
    }
    Ok(())
}

/// What lowering reads: the graph, its parameters' buffers and the executable's fusions.
pub struct Graphs<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// Parameter buffers by value index.
    pub params: &'a [Option<wgpu::Buffer>],
    /// Convolutions' fusions by node.
    pub fused: &'a HashMap<usize, Fused>,
    /// Nodes done by a fused convolution.
    pub absorbed: &'a [bool],
    /// How convolutions are lowered.
    pub conv: ConvLowering,
}

struct Builder<'a> {
    ctx: &'a Context,
    g: &'a Graphs<'a>,
    types: &'a [TensorType],
    plan: &'a Plan,
    inputs: &'a [wgpu::Buffer],
    slots: &'a [wgpu::Buffer],
    dummy: &'a wgpu::Buffer,
    steps: Vec<Step>,
    scratch: Vec<wgpu::Buffer>,
    targets: Vec<(usize, usize, usize)>,
    /// The op being lowered.
    op: &'static str,
    /// The `MODE` override constant of the next pipelines (the convolution's GEMM mode).
    mode: u32,
    /// The packed convolutions' shared matrices (packed lowering only).
    work: Option<packed::Workspace>,
}

/// Lowers `g` for values of `types` placed by `plan`.
pub fn lower(ctx: &Context, g: &Graphs, types: &[TensorType], plan: &Plan, dummy: &wgpu::Buffer) -> Result<Program> {
    let graph = g.graph;
    for (v, ty) in types.iter().enumerate() {
        if plan.slot[v].is_some() || graph.inputs.contains(&ValueId(v)) {
            check_binding(ctx, &graph.values[v].name, ty)?;
        }
    }
    let bytes = |v: ValueId| value_bytes(&types[v.0]).expect("checked");
    let inputs: Vec<wgpu::Buffer> =
        graph.inputs.iter().map(|&v| storage(ctx, bytes(v), &graph.value(v).name)).collect();
    let slots: Vec<wgpu::Buffer> =
        plan.slot_bytes.iter().enumerate().map(|(s, &b)| storage(ctx, b, &format!("slot {s}"))).collect();
    let mut b = Builder {
        ctx,
        g,
        types,
        plan,
        inputs: &inputs,
        slots: &slots,
        dummy,
        steps: vec![],
        scratch: vec![],
        targets: vec![],
        op: "",
        mode: 0,
        work: None,
    };
    let nodes: Vec<usize> = (0..graph.nodes.len()).filter(|&i| !g.absorbed[i]).collect();
    b.work = packed::workspace(ctx, g.conv, graph, types, &nodes);
    for (i, n) in graph.nodes.iter().enumerate() {
        if g.absorbed[i] {
            continue;
        }
        b.op = n.op.name();
        b.node(i).map_err(|e| anyhow!("node {i} ({} @{}): {e}", n.op.name(), n.scope))?;
    }
    let outputs: Vec<(Loc, Vec<usize>, u64)> =
        graph.outputs.iter().map(|&o| (b.loc(o), types[o.0].fixed_shape().expect("concrete"), bytes(o))).collect();
    let total: u64 = outputs.iter().map(|o| o.2).sum();
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: total.max(4).next_multiple_of(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let Builder { steps, scratch, targets, .. } = b;
    Ok(Program { inputs, slots, steps, outputs, staging, targets, _scratch: scratch })
}

impl Builder<'_> {
    fn loc(&self, v: ValueId) -> Loc {
        match self.g.graph.value(v).def {
            ValueDef::Input => Loc::Input(self.g.graph.inputs.iter().position(|&x| x == v).expect("an input")),
            ValueDef::Param(_) => Loc::Param(v),
            ValueDef::Node(..) => Loc::Slot(self.plan.slot[v.0].expect("computed values have slots")),
        }
    }

    fn buf(&self, v: ValueId) -> &wgpu::Buffer {
        match self.loc(v) {
            Loc::Input(k) => &self.inputs[k],
            Loc::Param(p) => self.g.params[p.0].as_ref().expect("every parameter has its buffer"),
            Loc::Slot(s) => &self.slots[s],
        }
    }

    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.types[v.0].fixed_shape().expect("inputs are concrete")
    }

    /// Adds a dispatch of `entry` in `file` over `grid` with `uniform` at binding 0 (when given)
    /// and the buffers at their bindings.
    fn step(
        &mut self,
        (file, entry): (&'static str, &'static str),
        uniforms: &[(u32, &[u8])],
        buffers: &[(u32, &wgpu::Buffer)],
        grid: [u32; 3],
    ) {
        if grid.contains(&0) {
            return;
        }
        let pipeline = self.ctx.pipeline(file, entry, self.mode);
        let made: Vec<(u32, wgpu::Buffer)> = uniforms
            .iter()
            .map(|&(k, bytes)| {
                let u = self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(entry),
                    contents: bytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                (k, u)
            })
            .collect();
        let entries: Vec<wgpu::BindGroupEntry> = made
            .iter()
            .map(|(k, u)| (*k, u))
            .chain(buffers.iter().copied())
            .map(|(binding, buf)| wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() })
            .collect();
        let bind = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let label = format!("{} ({entry})", self.op);
        self.steps.push(Step { pipeline, bind, grid, label });
    }

    fn limit(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// A strided copy of `view` from `src` into `dst`.
    fn copy(&mut self, view: View, numel: usize, src: ValueId, dst: &wgpu::Buffer) -> Result<()> {
        let grid = flat_grid(numel, self.limit())?;
        let src = self.buf(src).clone();
        self.step(("layout", "strided_copy"), &[(0, bytemuck::bytes_of(&view))], &[(1, &src), (2, dst)], grid);
        Ok(())
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let graph = self.g.graph;
        let n = &graph.nodes[i];
        let (x, y) = (n.inputs[0], n.outputs[0]);
        let xs = self.shape(x);
        let out = self.buf(y).clone();
        let limit = self.limit();
        match &n.op {
            Op::Conv2d(c) => self.conv(i, c)?,
            Op::BatchNorm { eps, .. } => {
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
                self.step(
                    ("batch_norm", "batch_norm"),
                    &[(0, bytemuck::bytes_of(&p))],
                    &bindings,
                    flat_grid(numel, limit)?,
                );
            }
            Op::Silu | Op::Sigmoid | Op::SiluGrad | Op::SigmoidGrad | Op::Sign => {
                let numel: usize = xs.iter().product();
                let entry = match n.op {
                    Op::Silu => "silu",
                    Op::Sigmoid => "sigmoid",
                    Op::SiluGrad => "silu_grad",
                    Op::Sign => "sign_",
                    _ => "sigmoid_grad",
                };
                let p = kernels::CountParams { n: numel as u32, pad: [0; 3] };
                let a = self.buf(x).clone();
                let mut bindings = vec![(1, &a), (3, &out)];
                let b = n.inputs.get(1).map(|&v| self.buf(v).clone());
                if let Some(b) = &b {
                    bindings.push((2, b));
                }
                self.step(("activation", entry), &[(0, bytemuck::bytes_of(&p))], &bindings, flat_grid(numel, limit)?);
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div => {
                let os = self.shape(y);
                let ys = self.shape(n.inputs[1]);
                let (sa, sb, so) = (broadcast_strides(&xs, &os), broadcast_strides(&ys, &os), contiguous(&os));
                let mut view = View::new(
                    &os,
                    &Strided { offset: 0, strides: &sa },
                    Some(&Strided { offset: 0, strides: &sb }),
                    &Strided { offset: 0, strides: &so },
                )?;
                view.code = match n.op {
                    Op::Add => 0,
                    Op::Sub => 1,
                    Op::Mul => 2,
                    _ => 3,
                };
                let (a, b) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
                let numel = os.iter().product();
                self.step(
                    ("elementwise", "binary"),
                    &[(0, bytemuck::bytes_of(&view))],
                    &[(1, &a), (2, &b), (3, &out)],
                    flat_grid(numel, limit)?,
                );
            }
            Op::Concat { axis } => {
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
            }
            Op::Split { axis, .. } => {
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
            }
            Op::Slice { axes, starts, ends, steps } => {
                let os = self.shape(y);
                let (offset, strides) = slice_view(&xs, axes, starts, ends, steps)?;
                let view = View::copy(
                    &os,
                    &Strided { offset, strides: &strides },
                    &Strided { offset: 0, strides: &contiguous(&os) },
                )?;
                self.copy(view, os.iter().product(), x, &out)?;
            }
            Op::Transpose { perm } => {
                let os = self.shape(y);
                let view = View::copy(
                    &os,
                    &Strided { offset: 0, strides: &transpose_strides(&xs, perm) },
                    &Strided { offset: 0, strides: &contiguous(&os) },
                )?;
                self.copy(view, os.iter().product(), x, &out)?;
            }
            Op::Reshape { .. } => {
                let numel: usize = xs.iter().product();
                let view =
                    View::copy(&[numel], &Strided { offset: 0, strides: &[1] }, &Strided { offset: 0, strides: &[1] })?;
                self.copy(view, numel, x, &out)?;
            }
            Op::UpsampleNearest { scale } => {
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
            }
            Op::MaxPool2d { kernel, stride, pad } => {
                let p = pool_params(&xs, *kernel, *stride, *pad);
                let a = self.buf(x).clone();
                let numel = (p.n_planes * p.oh * p.ow) as usize;
                self.step(
                    ("pooling", "max_pool2d"),
                    &[(0, bytemuck::bytes_of(&p))],
                    &[(1, &a), (2, &out)],
                    flat_grid(numel, limit)?,
                );
            }
            Op::MatMul => {
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
                let p = kernels::MatMulParams { m: m as u32, n: nn as u32, k: k as u32, batches: batches as u32 };
                let (a, b) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
                self.step(
                    ("matmul", "matmul"),
                    &[(0, bytemuck::bytes_of(&view)), (1, bytemuck::bytes_of(&p))],
                    &[(2, &a), (3, &b), (4, &out)],
                    flat_grid(batches * m * nn, limit)?,
                );
            }
            Op::Softmax { axis } => {
                let p = lines(&xs, *axis);
                let a = self.buf(x).clone();
                let count = (p.outer * p.inner) as usize;
                self.step(
                    ("softmax", "softmax"),
                    &[(0, bytemuck::bytes_of(&p))],
                    &[(1, &a), (2, &out)],
                    flat_grid(count, limit)?,
                );
            }
            Op::Anchors { strides, offset } => {
                let total = self.shape(y)[1];
                let st = self.buf(n.outputs[1]).clone();
                let mut first = 0;
                for (&level, &s) in n.inputs.iter().zip(strides) {
                    let ls = self.shape(level);
                    let p = kernels::LevelParams {
                        h: ls[2] as u32,
                        w: ls[3] as u32,
                        first: first as u32,
                        total: total as u32,
                        offset: *offset,
                        stride: s,
                        pad: [0; 2],
                    };
                    self.step(
                        ("anchors", "anchors"),
                        &[(0, bytemuck::bytes_of(&p))],
                        &[(1, &out), (2, &st)],
                        flat_grid(ls[2] * ls[3], limit)?,
                    );
                    first += ls[2] * ls[3];
                }
            }
            Op::Conv2dGradInput(c) => {
                let geo = ConvGeometry::new(&self.shape(n.inputs[2]), &self.shape(n.inputs[1]), c);
                let (dy, w, dummy) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone(), self.dummy.clone());
                if !self.conv_packed(packed::Pass::GradInput, &geo, c, [&dy, &w, &dummy, &out])? {
                    self.conv_gemm(1, &geo, c, false, [&dy, &w, &dummy, &out], 1)?;
                }
            }
            Op::Conv2dGradWeight(c) => {
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
                let p = kernels::ChunkParams { numel: numel as u32, chunks: chunks as u32, pad: [0; 2] };
                self.step(
                    ("conv", "conv_reduce"),
                    &[(20, bytemuck::bytes_of(&p))],
                    &[(21, &partial), (22, &out)],
                    flat_grid(numel, limit)?,
                );
                self.scratch.push(partial);
            }
            Op::BatchNormTrain { eps, momentum } => {
                let count = xs[0] * xs[2..].iter().product::<usize>();
                let p = self.train_params(&xs, *eps, *momentum, count);
                let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
                // x γ β rm rv | y mean invstd rm' rv'
                let stats = [(11, &b[0]), (12, &b[3]), (13, &b[4]), (14, &b[6]), (15, &b[7]), (16, &b[8]), (17, &b[9])];
                self.step(("batch_norm", "bn_stats"), &[(10, bytemuck::bytes_of(&p))], &stats, [xs[1] as u32, 1, 1]);
                let apply = [(21, &b[0]), (22, &b[1]), (23, &b[2]), (24, &b[6]), (25, &b[7]), (26, &b[5])];
                let numel = xs.iter().product();
                self.step(
                    ("batch_norm", "bn_train_apply"),
                    &[(20, bytemuck::bytes_of(&p))],
                    &apply,
                    flat_grid(numel, limit)?,
                );
            }
            Op::BatchNormGrad => {
                let xs = self.shape(n.inputs[1]);
                let p = self.train_params(&xs, 0.0, 0.0, 0);
                let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
                // dy x γ mean invstd | dx dγ dβ
                let sums = [(31, &b[0]), (32, &b[1]), (33, &b[3]), (34, &b[4]), (35, &b[6]), (36, &b[7])];
                self.step(
                    ("batch_norm", "bn_grad_stats"),
                    &[(30, bytemuck::bytes_of(&p))],
                    &sums,
                    [xs[1] as u32, 1, 1],
                );
                let apply = [
                    (41, &b[0]),
                    (42, &b[1]),
                    (43, &b[2]),
                    (44, &b[3]),
                    (45, &b[4]),
                    (46, &b[6]),
                    (47, &b[7]),
                    (48, &b[5]),
                ];
                let numel = xs.iter().product();
                self.step(
                    ("batch_norm", "bn_grad_apply"),
                    &[(40, bytemuck::bytes_of(&p))],
                    &apply,
                    flat_grid(numel, limit)?,
                );
            }
            Op::SoftmaxGrad { axis } => {
                let p = lines(&xs, *axis);
                let y = self.buf(n.inputs[1]).clone();
                let dy = self.buf(x).clone();
                let count = (p.outer * p.inner) as usize;
                let bindings = [(11, &dy), (12, &y), (13, &out)];
                self.step(
                    ("softmax", "softmax_grad"),
                    &[(10, bytemuck::bytes_of(&p))],
                    &bindings,
                    flat_grid(count, limit)?,
                );
            }
            Op::MaxPool2dGrad { kernel, stride, pad } => {
                let xs = self.shape(n.inputs[1]);
                let p = pool_params(&xs, *kernel, *stride, *pad);
                let (dy, xv) = (self.buf(x).clone(), self.buf(n.inputs[1]).clone());
                let numel = xs.iter().product();
                let bindings = [(11, &dy), (12, &xv), (13, &out)];
                self.step(
                    ("pooling", "max_pool2d_grad"),
                    &[(10, bytemuck::bytes_of(&p))],
                    &bindings,
                    flat_grid(numel, limit)?,
                );
            }
            Op::UpsampleNearestGrad { scale } => {
                let os = self.shape(y);
                let p = kernels::BlockParams {
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
                self.step(
                    ("layout", "upsample_nearest_grad"),
                    &[(20, bytemuck::bytes_of(&p))],
                    &[(21, &dy), (22, &out)],
                    grid,
                );
            }
            Op::SliceGrad { axes, starts, ends, steps } => {
                let full = self.shape(n.inputs[1]);
                let numel: usize = full.iter().product();
                let f = kernels::FillParams { n: numel as u32, value: 0.0, pad: [0; 2] };
                self.step(("layout", "fill"), &[(10, bytemuck::bytes_of(&f))], &[(11, &out)], flat_grid(numel, limit)?);
                let (offset, strides) = slice_view(&full, axes, starts, ends, steps)?;
                let view = View::copy(
                    &xs,
                    &Strided { offset: 0, strides: &contiguous(&xs) },
                    &Strided { offset, strides: &strides },
                )?;
                self.copy(view, xs.iter().product(), x, &out)?;
            }
            Op::SumTo => {
                let os = self.shape(y);
                let r = xs.len();
                let mut padded = vec![1; r - os.len()];
                padded.extend(&os);
                let sx = contiguous(&xs);
                let kept: Vec<isize> = (0..r).map(|d| if padded[d] == xs[d] { sx[d] } else { 0 }).collect();
                let reduced: Vec<usize> = (0..r).map(|d| if padded[d] == xs[d] { 1 } else { xs[d] }).collect();
                let zero = vec![0; r];
                let kv = View::new(
                    &padded,
                    &Strided { offset: 0, strides: &kept },
                    None,
                    &Strided { offset: 0, strides: &zero },
                )?;
                let rv = View::new(
                    &reduced,
                    &Strided { offset: 0, strides: &sx },
                    None,
                    &Strided { offset: 0, strides: &zero },
                )?;
                let a = self.buf(x).clone();
                let numel = os.iter().product();
                self.step(
                    ("elementwise", "sum_to"),
                    &[(10, bytemuck::bytes_of(&kv)), (11, bytemuck::bytes_of(&rv))],
                    &[(12, &a), (13, &out)],
                    flat_grid(numel, limit)?,
                );
            }
            Op::Accumulate | Op::EmaUpdate => {
                let numel: usize = xs.iter().product();
                let p = kernels::CountParams { n: numel as u32, pad: [0; 3] };
                let b: Vec<wgpu::Buffer> = n.inputs.iter().chain(&n.outputs).map(|&v| self.buf(v).clone()).collect();
                let mut bindings = vec![(11, &b[2]), (12, &b[0]), (13, &b[1]), (14, &b[3])];
                let entry = if matches!(n.op, Op::Accumulate) {
                    bindings.push((15, &b[4]));
                    "accumulate"
                } else {
                    "ema_update"
                };
                self.step(("optimizer", entry), &[(10, bytemuck::bytes_of(&p))], &bindings, flat_grid(numel, limit)?);
            }
            Op::GlobalNorm => {
                let sizes: Vec<usize> = n.inputs.iter().map(|&v| self.shape(v).iter().product()).collect();
                let blocks: Vec<usize> = sizes.iter().map(|s| s.div_ceil(4096).max(1)).collect();
                let total: usize = blocks.iter().sum();
                let partial = storage(self.ctx, total as u64 * 4, "squared-norm partial sums");
                let mut first = 0;
                for ((&v, &size), &count) in n.inputs.iter().zip(&sizes).zip(&blocks) {
                    let q =
                        kernels::SquaresParams { n: size as u32, first: first as u32, total: total as u32, pad0: 0 };
                    let t = self.buf(v).clone();
                    let grid = grid(count as u64, limit)?;
                    self.step(
                        ("optimizer", "sum_squares"),
                        &[(20, bytemuck::bytes_of(&q))],
                        &[(21, &t), (22, &partial)],
                        grid,
                    );
                    first += count;
                }
                let q = kernels::SquaresParams { n: 0, first: 0, total: total as u32, pad0: 0 };
                let bindings = [(23, &partial), (24, &out)];
                self.step(("optimizer", "norm_of_partials"), &[(20, bytemuck::bytes_of(&q))], &bindings, [1, 1, 1]);
                self.scratch.push(partial);
            }
            Op::SgdUpdate(u) | Op::AdamWUpdate(u) => {
                let numel: usize = xs.iter().product();
                let p = kernels::UpdateParams {
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
                let (entry, bindings) = match n.op {
                    Op::SgdUpdate(_) => (
                        "sgd_update",
                        vec![(1, &b[3]), (2, &b[0]), (3, &b[1]), (4, &b[2]), (5, &b[4]), (7, &b[5]), (8, &b[6])],
                    ),
                    _ => (
                        "adamw_update",
                        vec![
                            (1, &b[3]),
                            (2, &b[0]),
                            (3, &b[1]),
                            (4, &b[2]),
                            (5, &b[4]),
                            (6, &b[5]),
                            (7, &b[6]),
                            (8, &b[7]),
                            (9, &b[8]),
                        ],
                    ),
                };
                self.step(("optimizer", entry), &[(0, bytemuck::bytes_of(&p))], &bindings, flat_grid(numel, limit)?);
            }
            Op::DetectLoss { strides, gains, reg_max } | Op::DetectLossGrad { strides, gains, reg_max } => {
                self.detect_loss(i, strides, gains, *reg_max)?
            }
        }
        Ok(())
    }

    /// A convolution node, with the batch norm and SiLU fused into it: the epilogue's
    /// coefficients, then the convolution.
    fn conv(&mut self, i: usize, c: &slimc_ir::Conv2d) -> Result<()> {
        let graph = self.g.graph;
        let n = &graph.nodes[i];
        let fused = self.g.fused.get(&i).copied();
        let geo = ConvGeometry::new(&self.shape(n.inputs[0]), &self.shape(n.inputs[1]), c);
        let coef = storage(self.ctx, geo.cout as u64 * 8, "epilogue");
        let bn = fused.and_then(|f| f.bn).map(|j| &graph.nodes[j]);
        let fold = kernels::FoldParams {
            cout: geo.cout as u32,
            has_bias: (n.inputs.len() > 2) as u32,
            has_bn: bn.is_some() as u32,
            eps: match bn.map(|b| &b.op) {
                Some(Op::BatchNorm { eps, .. }) => *eps,
                _ => 0.0,
            },
        };
        let dummy = self.dummy.clone();
        let bias = n.inputs.get(2).map(|&v| self.buf(v).clone()).unwrap_or_else(|| dummy.clone());
        let stats: Vec<wgpu::Buffer> = match bn {
            Some(b) => b.inputs[1..5].iter().map(|&v| self.buf(v).clone()).collect(),
            None => vec![dummy; 4],
        };
        let mut bindings = vec![(11, &bias)];
        bindings.extend(stats.iter().enumerate().map(|(k, s)| (12 + k as u32, s)));
        bindings.push((16, &coef));
        let limit = self.limit();
        self.step(
            ("conv", "conv_coefficients"),
            &[(10, bytemuck::bytes_of(&fold))],
            &bindings,
            flat_grid(geo.cout, limit)?,
        );
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
        let u = kernels::size32;
        let [n, cin, h, w, cout, cg, og, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw] = kernels::conv_sizes(geo, c)?;
        let p = kernels::ConvParams {
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
            ("conv_direct", flat_grid(chunks * geo.g * gn, limit)?)
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
            ("conv_tiled", g)
        };
        let bindings = [(1, src), (2, aux), (3, coef), (4, dst)];
        self.mode = mode;
        self.step(("conv", entry), &[(0, bytemuck::bytes_of(&p))], &bindings, g);
        self.mode = 0;
        Ok(())
    }

    /// The detect loss (or its gradient) of node `i`: the level maps gathered anchor-major, the
    /// passes of `detect_loss.wgsl`, and for the gradient the result scattered back per level.
    fn detect_loss(&mut self, i: usize, strides: &[f32], gains: &[f32], reg_max: usize) -> Result<()> {
        let n = &self.g.graph.nodes[i];
        let grad = matches!(n.op, Op::DetectLossGrad { .. });
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
        let mut p = kernels::LossParams::zeroed();
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
        let pred = storage(self.ctx, bytes(batch * na * no), "anchor-major predictions");
        // Each level [N, no, h·w] into pred [N, A, no] at its first anchor.
        let mut first = 0;
        let mut views = vec![];
        for (k, (&v, s)) in levels.iter().zip(&shapes).enumerate() {
            let hw = s[2] * s[3];
            (p.level_first[k], p.level_w[k], p.level_stride[k]) = (first as u32, s[3] as u32, strides[k]);
            let shape = [batch, no, hw];
            let anchor_major = [(na * no) as isize, 1, no as isize];
            views.push((v, shape, first * no, anchor_major));
            first += hw;
        }
        for (v, shape, offset, strides) in &views {
            let view = View::copy(
                shape,
                &Strided { offset: 0, strides: &contiguous(shape) },
                &Strided { offset: *offset as isize, strides },
            )?;
            self.copy(view, shape.iter().product(), *v, &pred)?;
        }
        let dummies: Vec<wgpu::Buffer> = (0..3).map(|_| storage(self.ctx, 4, "unused")).collect();
        let t = self.buf(targets[0]).clone();
        let outs: Vec<wgpu::Buffer> = n.outputs.iter().map(|&o| self.buf(o).clone()).collect();
        let gpred =
            if grad { storage(self.ctx, bytes(batch * na * no), "anchor-major gradient") } else { dummies[2].clone() };
        let (items, total) = if grad { (&dummies[0], &dummies[1]) } else { (&outs[0], &outs[1]) };
        let bindings = [(1, &pred), (2, &t), (3, &work), (4, items), (5, total), (6, &gpred)];
        let uniform = [(0, bytemuck::bytes_of(&p))];
        let limit = self.limit();
        let (anchors, boxes) = (flat_grid(batch * na, limit)?, flat_grid(rows * na, limit)?);
        let per_box = grid((rows as u64).div_ceil(64), limit)?;
        for (entry, g) in [
            ("dl_decode", anchors),
            ("dl_metrics", boxes),
            ("dl_topk", per_box),
            ("dl_resolve", anchors),
            ("dl_row_max", per_box),
            ("dl_score", anchors),
            ("dl_sum", [1, 1, 1]),
        ] {
            self.step(("detect_loss", entry), &uniform, &bindings, g);
        }
        if grad {
            self.step(("detect_loss", "dl_grad"), &uniform, &bindings, anchors);
            for ((_, shape, offset, strides), out) in views.iter().zip(&outs) {
                let view = View::copy(
                    shape,
                    &Strided { offset: *offset as isize, strides },
                    &Strided { offset: 0, strides: &contiguous(shape) },
                )?;
                let grid = flat_grid(shape.iter().product(), limit)?;
                let src = gpred.clone();
                self.step(("layout", "strided_copy"), &[(0, bytemuck::bytes_of(&view))], &[(1, &src), (2, out)], grid);
            }
        }
        self.scratch.extend([work, pred, gpred]);
        self.scratch.extend(dummies);
        Ok(())
    }

    fn train_params(&self, xs: &[usize], eps: f32, momentum: f32, count: usize) -> kernels::TrainParams {
        kernels::TrainParams {
            n: xs[0] as u32,
            channels: xs[1] as u32,
            plane: xs[2..].iter().product::<usize>() as u32,
            eps,
            momentum,
            unbias: (count as f64 / (count.max(2) - 1) as f64) as f32,
            pad: [0; 2],
        }
    }
}

/// A softmax's lines along `axis` of a tensor of `shape`.
fn lines(shape: &[usize], axis: usize) -> kernels::LineParams {
    kernels::LineParams {
        outer: shape[..axis].iter().product::<usize>() as u32,
        n: shape[axis] as u32,
        inner: shape[axis + 1..].iter().product::<usize>() as u32,
        pad0: 0,
    }
}

/// A max pool's geometry on an input of shape `xs`.
fn pool_params(xs: &[usize], kernel: [usize; 2], stride: [usize; 2], pad: [usize; 4]) -> kernels::PoolParams {
    kernels::PoolParams {
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
