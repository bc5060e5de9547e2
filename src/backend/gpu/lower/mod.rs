//! Lowering a graph, for one set of input shapes, to a program of dispatches: every value in a
//! buffer of the liveness plan's arena (one buffer per slot), every node a few dispatches with
//! their uniforms and bind groups made once, so a run only uploads inputs, records the
//! dispatches into one pass and reads back the results.

mod conv;
mod detect_loss;
mod distill;
mod layout;
mod levels;
mod norm;
mod optim;
mod packed;
mod pointwise;
mod pool;

use super::device::{AdapterSummary, Context};
use super::kernels::{self, flat_grid, Entry};
use super::uniforms::{uniform, View};
use crate::backend::fusion::Fused;
use anyhow::{anyhow, bail, Result};
use slimc_ir::memory::{value_bytes, Plan};
use slimc_ir::{Collective, DType, Graph, Op, TensorType, ValueDef, ValueId};
use slimc_ir::{Unary, UnaryGrad};
use std::collections::HashMap;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// How convolutions are lowered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvLowering {
    /// One implicit GEMM per group, tiled in workgroup memory (`conv.wgsl`): for GPUs.
    Tiled,
    /// im2col and a register-blocked GEMM on vec4 loads (`conv_packed.wgsl`): for CPU adapters.
    /// A packed matrix holds at most `matrix_floats` floats (fewer where the adapter binds
    /// less): a batch whose matrices would be larger runs in chunks of whole images.
    Packed {
        /// The most floats one packed matrix holds.
        matrix_floats: usize,
    },
}

impl ConvLowering {
    /// The lowering for `adapter`: packed on a CPU adapter (a software rasteriser), tiled
    /// elsewhere; `SLIMC_GPU_CONV=tiled|packed` overrides.
    pub fn for_adapter(adapter: &AdapterSummary) -> Result<ConvLowering> {
        match std::env::var("SLIMC_GPU_CONV").as_deref() {
            Ok("tiled") => Ok(ConvLowering::Tiled),
            Ok("packed") => Ok(ConvLowering::packed()),
            Ok(other) => bail!("SLIMC_GPU_CONV={other}: expected tiled or packed"),
            Err(_) if adapter.kind == "Cpu" => Ok(ConvLowering::packed()),
            Err(_) => Ok(ConvLowering::Tiled),
        }
    }

    /// The packed lowering with matrices of up to 64 MB.
    pub fn packed() -> ConvLowering {
        ConvLowering::Packed { matrix_floats: 16 << 20 }
    }

    /// The most floats one packed matrix may hold on `ctx`'s adapter (`None` when tiled).
    fn budget(self, ctx: &Context) -> Option<usize> {
        match self {
            ConvLowering::Tiled => None,
            ConvLowering::Packed { matrix_floats } => {
                Some(matrix_floats.min(ctx.limits.max_storage_buffer_binding_size as usize / 4))
            }
        }
    }
}

/// The packed matrices every packed convolution of a program shares (dispatches run in order).
pub struct Workspace {
    /// Windows (or their transpose, or the column gradient).
    cols: wgpu::Buffer,
    /// The output gradient's channels.
    dy: wgpu::Buffer,
    /// The weight (or its transpose).
    weight: wgpu::Buffer,
}

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

/// A collective op, run on the host between two dispatches: its operands are read back, passed
/// through the communicator in one bucket, and the results written to their buffers.
pub struct HostStep {
    /// It runs after this many dispatches.
    pub at: usize,
    /// The collective.
    pub collective: Collective,
    /// The graph input holding the all-reduce's step scalars (read on the host to know whether
    /// it communicates).
    pub scalars: Option<usize>,
    /// Each carried operand's place and bytes.
    pub operands: Vec<(Loc, u64)>,
    /// Each result's place.
    pub results: Vec<Loc>,
    /// Where the operands are read back, made with the program.
    pub staging: wgpu::Buffer,
}

/// A graph lowered for one set of input shapes.
pub struct Program {
    /// One buffer per graph input.
    pub inputs: Vec<wgpu::Buffer>,
    /// One buffer per arena slot.
    pub slots: Vec<wgpu::Buffer>,
    /// The dispatches in order.
    pub steps: Vec<Step>,
    /// The collectives, in order, each between two dispatches.
    pub hosts: Vec<HostStep>,
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
            crate::backend::budget::human(bytes),
            ctx.adapter.name,
            crate::backend::budget::human(limit)
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
    hosts: Vec<HostStep>,
    scratch: Vec<wgpu::Buffer>,
    targets: Vec<(usize, usize, usize)>,
    /// The op being lowered.
    op: &'static str,
    /// The `MODE` override constant of the next pipelines (the convolution's GEMM mode).
    mode: u32,
    /// The packed convolutions' shared matrices (packed lowering only).
    work: Option<Workspace>,
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
        hosts: vec![],
        scratch: vec![],
        targets: vec![],
        op: "",
        mode: 0,
        work: None,
    };
    let nodes: Vec<usize> = (0..graph.nodes.len()).filter(|&i| !g.absorbed[i]).collect();
    b.work = Workspace::new(ctx, g.conv, graph, types, &nodes);
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
    let Builder { steps, hosts, scratch, targets, .. } = b;
    Ok(Program { inputs, slots, steps, hosts, outputs, staging, targets, _scratch: scratch })
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

    /// Adds a dispatch of kernel `entry` over `grid` with the uniforms and the buffers at the
    /// bindings their names have in its file.
    fn step(&mut self, entry: Entry, uniforms: &[(&str, &[u8])], buffers: &[(&str, &wgpu::Buffer)], grid: [u32; 3]) {
        if grid.contains(&0) {
            return;
        }
        let pipeline = self.ctx.pipeline(entry, self.mode);
        let (file, label) = (entry.file(), entry.name());
        let made: Vec<(&str, wgpu::Buffer)> = uniforms
            .iter()
            .map(|&(name, bytes)| {
                let u = self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                (name, u)
            })
            .collect();
        // Each operand is bound by its variable's name in the shader; the number comes from there.
        let entries: Vec<wgpu::BindGroupEntry> = made
            .iter()
            .map(|(name, u)| (*name, u))
            .chain(buffers.iter().copied())
            .map(|(name, buf)| wgpu::BindGroupEntry {
                binding: kernels::binding(file, name)
                    .unwrap_or_else(|| panic!("{file}.wgsl declares no binding `{name}` (a lowering bug)")),
                resource: buf.as_entire_binding(),
            })
            .collect();
        let bind = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let label = format!("{} ({label})", self.op);
        self.steps.push(Step { pipeline, bind, grid, label });
    }

    fn limit(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// A strided copy of `view` from `src` into `dst`.
    fn copy(&mut self, view: View, numel: usize, src: ValueId, dst: &wgpu::Buffer) -> Result<()> {
        let grid = flat_grid(numel, self.limit())?;
        let src = self.buf(src).clone();
        self.step(Entry::StridedCopy, &[uniform("V", &view)], &[("src", &src), ("dst", dst)], grid);
        Ok(())
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let n = &self.g.graph.nodes[i];
        let (x, y) = (n.inputs[0], n.outputs[0]);
        let at = At { n, x, y, xs: self.shape(x), out: self.buf(y).clone(), limit: self.limit() };
        let at = &at;
        match &n.op {
            Op::Conv2d(c) => self.conv(i, c),
            Op::Conv2dGradInput(c) => self.conv_grad_input(at, c),
            Op::Conv2dGradWeight(c) => self.conv_grad_weight(at, c),
            Op::BatchNorm(b) => self.batch_norm(at, b),
            Op::BatchNormTrain(b) => self.batch_norm_train(at, b),
            Op::BatchNormGrad => self.batch_norm_grad(at),
            Op::Unary(u) => self.activation(
                at,
                match u {
                    Unary::Silu => Entry::Silu,
                    Unary::Sigmoid => Entry::Sigmoid,
                    Unary::Sign => Entry::Sign,
                },
            ),
            Op::UnaryGrad(g) => self.activation(
                at,
                match g {
                    UnaryGrad::Silu => Entry::SiluGrad,
                    UnaryGrad::Sigmoid => Entry::SigmoidGrad,
                },
            ),
            Op::Binary(b) => self.binary(at, *b),
            Op::Softmax(a) => self.softmax(at, &a.axis),
            Op::SoftmaxGrad(a) => self.softmax_grad(at, &a.axis),
            Op::SumTo => self.sum_to(at),
            Op::MatMul => self.matmul(at),
            Op::Concat(a) => self.concat(at, &a.axis),
            Op::Split(s) => self.split(at, &s.axis),
            Op::Slice(s) => self.slice(at, s),
            Op::SliceGrad(s) => self.slice_grad(at, s),
            Op::Transpose(t) => self.transpose(at, &t.perm),
            Op::Reshape(_) => self.reshape(at),
            Op::UpsampleNearest(u) => self.upsample(at, &u.scale),
            Op::UpsampleNearestGrad(u) => self.upsample_grad(at, &u.scale),
            Op::Anchors(a) => self.anchors(at, a),
            Op::MaxPool2d(p) => self.max_pool(at, p),
            Op::MaxPool2dGrad(p) => self.max_pool_grad(at, p),
            Op::Accumulate => self.accumulate_or_ema(at, true),
            Op::EmaUpdate => self.accumulate_or_ema(at, false),
            Op::GlobalNorm => self.global_norm(at),
            Op::SgdUpdate(u) => self.update(at, u, false),
            Op::AdamWUpdate(u) => self.update(at, u, true),
            Op::DetectLoss(d) => self.detect_loss(i, d, false),
            Op::DetectLossGrad(d) => self.detect_loss(i, d, true),
            Op::DistillLoss(d) => self.distill_loss(i, d, false),
            Op::DistillLossGrad(d) => self.distill_loss(i, d, true),
            Op::AllReduce | Op::Broadcast(_) => self.collective(n),
        }
    }

    /// A collective ([`Op::collective`]): a host step between the dispatches before and after it.
    fn collective(&mut self, n: &slimc_ir::Node) -> Result<()> {
        let c = n.op.collective().ok_or_else(|| anyhow!("{} is not a collective", n.op.name()))?;
        let carried = crate::backend::collective::carried(c, n.inputs.len());
        let scalars = match c {
            Collective::AllReduce => match self.loc(n.inputs[carried]) {
                Loc::Input(k) => Some(k),
                _ => bail!("the GPU backend reads the all-reduce's step scalars from a graph input"),
            },
            Collective::Broadcast { .. } => None,
        };
        let bytes = |v: ValueId| value_bytes(&self.types[v.0]).expect("checked");
        let operands: Vec<(Loc, u64)> = n.inputs[..carried].iter().map(|&v| (self.loc(v), bytes(v))).collect();
        let results = n.outputs.iter().map(|&v| self.loc(v)).collect();
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("collective"),
            size: operands.iter().map(|o| o.1).sum::<u64>().max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.hosts.push(HostStep { at: self.steps.len(), collective: c, scalars, operands, results, staging });
        Ok(())
    }
}

/// The node being lowered, with what most lowerings read first: its first input and output,
/// the input's shape, the output's buffer and the grid limit.
struct At<'n> {
    n: &'n slimc_ir::Node,
    x: ValueId,
    y: ValueId,
    xs: Vec<usize>,
    out: wgpu::Buffer,
    limit: u32,
}
