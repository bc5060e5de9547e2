//! The GPU backend: WGSL compute shaders (`shaders/`) through wgpu, on any Vulkan, Metal, DX12
//! or GL adapter (lavapipe without a GPU).
//!
//! Compiling uploads the parameters once; they stay on the device, and the graph's state
//! updates are copied into them on the device after each run. Each set of input shapes is
//! lowered once ([`lower`]) to buffers from the liveness plan and a list of dispatches; a run
//! uploads the inputs, records every dispatch into one compute pass, submits once and reads back
//! only the results.

mod device;
mod kernels;
mod lower;
mod uniforms;

pub use device::{adapters, hardware_present, show_driver_messages, use_adapter, AdapterSummary, Context};
pub use lower::ConvLowering;

use super::compiled::{Compiled, Planned};
use super::{check_inputs, Backend, ByShape, Executable};
use crate::backend::collective;
use crate::distributed::{Communicator, Solo};
use anyhow::{anyhow, bail, Result};
use lower::{Graphs, HostStep, Loc, Program};
use slimc_ir::{DType, Model, Tensor};
use std::sync::Arc;

/// The wgpu backend on the process's device.
#[derive(Clone)]
pub struct Gpu {
    ctx: Arc<Context>,
    conv: ConvLowering,
}

impl Gpu {
    /// The backend on the best adapter ([`Context::get`]), lowering convolutions as suits it
    /// ([`ConvLowering::for_adapter`]).
    pub fn new() -> Result<Gpu> {
        let ctx = Context::get()?;
        let conv = ConvLowering::for_adapter(&ctx.adapter)?;
        Ok(Gpu { ctx, conv })
    }

    /// The same backend lowering convolutions as `conv` says.
    pub fn with_conv(self, conv: ConvLowering) -> Gpu {
        Gpu { conv, ..self }
    }

    /// How it lowers convolutions.
    pub fn conv(&self) -> ConvLowering {
        self.conv
    }

    /// The adapter it runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.ctx.adapter
    }
}

impl Backend for Gpu {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn compile_in(&self, model: &Model, comm: Arc<dyn Communicator>) -> Result<Box<dyn Executable>> {
        let mut exe = GpuExecutable::new(self.ctx.clone(), model, self.conv)?;
        exe.comm = comm;
        Ok(Box::new(exe))
    }
}

/// A graph compiled for the GPU: its parameters in device buffers.
pub struct GpuExecutable {
    ctx: Arc<Context>,
    core: Compiled<wgpu::Buffer>,
    /// Programs for the input shapes met so far, most recent last.
    programs: ByShape<Program>,
    /// Bound where a kernel's optional operand is absent.
    dummy: wgpu::Buffer,
    conv: ConvLowering,
    /// What the collective ops run through.
    comm: Arc<dyn Communicator>,
}

impl GpuExecutable {
    /// Compiles `model`, its convolutions to be lowered as `conv` says: uploads the parameters.
    pub fn new(ctx: Arc<Context>, model: &Model, conv: ConvLowering) -> Result<GpuExecutable> {
        let core = ctx.checked("uploading the parameters", || {
            Compiled::new(model, false, |name, t| {
                lower::check_binding(&ctx, name, &t.ty())?;
                let buf = lower::storage(&ctx, t.numel() as u64 * 4, name);
                ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(t.f32s()?));
                Ok(buf)
            })
        })?;
        let dummy = lower::storage(&ctx, 16, "absent operand");
        Ok(GpuExecutable { ctx, core, programs: ByShape::default(), dummy, conv, comm: Arc::new(Solo) })
    }

    /// The program for inputs of these shapes, lowered on first use.
    fn program(&mut self, inputs: &[&Tensor]) -> Result<Arc<Program>> {
        let (ctx, dummy, core) = (&self.ctx, &self.dummy, &self.core);
        let graphs = Graphs {
            graph: &core.graph,
            params: &core.params,
            fused: &core.fused,
            absorbed: &core.absorbed,
            conv: self.conv,
        };
        self.programs.get(inputs, |types| {
            let Planned { plan, types } = core.plan(types, &inputs[0].shape)?;
            ctx.checked("building the GPU program", || lower::lower(ctx, &graphs, &types, &plan, dummy))
        })
    }

    fn buffer<'a>(&'a self, program: &'a Program, loc: Loc) -> &'a wgpu::Buffer {
        match loc {
            Loc::Input(k) => &program.inputs[k],
            Loc::Param(p) => self.core.params[p.0].as_ref().expect("every parameter has its buffer"),
            Loc::Slot(s) => &program.slots[s],
        }
    }

    /// Records the dispatches `steps` into `enc`; profiling, runs each alone, waited for and
    /// timed, and returns a fresh encoder.
    fn record(
        &mut self,
        program: &Program,
        mut enc: wgpu::CommandEncoder,
        steps: std::ops::Range<usize>,
    ) -> Result<wgpu::CommandEncoder> {
        let ctx = &self.ctx;
        match &mut self.core.profile {
            None => program.record(&mut enc, steps),
            Some(profile) => {
                ctx.queue.submit([enc.finish()]);
                for k in steps {
                    let t = std::time::Instant::now();
                    let mut one = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                    program.record(&mut one, k..k + 1);
                    ctx.queue.submit([one.finish()]);
                    ctx.device
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
                    // The device's buffers exist before the first dispatch: every run counts.
                    profile.add(&program.steps[k].label, t.elapsed(), false);
                }
                enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
            }
        }
        Ok(enc)
    }

    /// Runs a collective after the dispatches recorded in `enc`: when it communicates, the
    /// operands are read back in one bucket, exchanged and written to the results (the work so
    /// far is submitted, and a fresh encoder returned); otherwise each result is a copy of its
    /// operand on the device.
    fn host_step(
        &self,
        program: &Program,
        h: &HostStep,
        inputs: &[&Tensor],
        mut enc: wgpu::CommandEncoder,
    ) -> Result<wgpu::CommandEncoder> {
        let scalars = h.scalars.map(|k| inputs[k].f32s()).transpose()?;
        let pairs = h.operands.iter().zip(&h.results);
        if !collective::communicates(h.collective, scalars, &*self.comm) {
            for (&(from, bytes), &to) in pairs {
                if from != to && bytes > 0 {
                    enc.copy_buffer_to_buffer(self.buffer(program, from), 0, self.buffer(program, to), 0, bytes);
                }
            }
            return Ok(enc);
        }
        let mut total = 0;
        for &(from, bytes) in &h.operands {
            if bytes > 0 {
                enc.copy_buffer_to_buffer(self.buffer(program, from), 0, &h.staging, total, bytes);
            }
            total += bytes;
        }
        self.ctx.queue.submit([enc.finish()]);
        let mut bucket = self.download(&h.staging, total)?;
        collective::exchange(h.collective, &mut bucket, &*self.comm)?;
        let mut at = 0;
        for (&(_, bytes), &to) in pairs {
            let n = bytes as usize / 4;
            self.ctx.queue.write_buffer(self.buffer(program, to), 0, bytemuck::cast_slice(&bucket[at..at + n]));
            at += n;
        }
        Ok(self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") }))
    }

    /// Copies `bytes` of `buf` back to the host.
    fn download(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>> {
        if bytes == 0 {
            return Ok(vec![]);
        }
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        self.ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        rx.recv()?.map_err(|e| anyhow!("reading back from the GPU: {e}"))?;
        let data = bytemuck::pod_collect_to_vec::<u8, f32>(&slice.get_mapped_range()?);
        staging.unmap();
        Ok(data)
    }
}

impl Executable for GpuExecutable {
    fn input_names(&self) -> Vec<String> {
        self.core.input_names()
    }

    fn output_names(&self) -> Vec<String> {
        self.core.output_names()
    }

    fn run(&mut self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        check_inputs(&self.core.graph, inputs)?;
        if let Some(t) = inputs.iter().find(|t| t.dtype() != DType::F32) {
            bail!("the GPU backend takes f32 inputs, given {}", t.ty());
        }
        let program = self.program(inputs)?;
        for &(k, batch, nc) in &program.targets {
            slimc_ir::eval::detect_loss::check_targets(inputs[k], batch, nc)?;
        }
        let ctx = self.ctx.clone();
        ctx.checked("running the graph", || {
            for (buf, t) in program.inputs.iter().zip(inputs) {
                if t.numel() > 0 {
                    ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(t.f32s()?));
                }
            }
            let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
            let mut done = 0;
            for h in &program.hosts {
                enc = self.record(&program, enc, done..h.at)?;
                done = h.at;
                enc = self.host_step(&program, h, inputs, enc)?;
            }
            enc = self.record(&program, enc, done..program.steps.len())?;
            // Results first (a result that is also a parameter is read before its update), then
            // the state updates into their parameters.
            let mut at = 0;
            let mut results = vec![];
            for (k, (loc, shape, bytes)) in program.outputs.iter().enumerate() {
                if self.core.state.iter().any(|s| s.0 == k) {
                    continue;
                }
                if *bytes > 0 {
                    enc.copy_buffer_to_buffer(self.buffer(&program, *loc), 0, &program.staging, at, *bytes);
                }
                results.push((shape.clone(), at, *bytes));
                at += bytes;
            }
            for &(k, p) in &self.core.state {
                let (loc, _, bytes) = &program.outputs[k];
                if *loc != Loc::Param(p) && *bytes > 0 {
                    let dst = self.core.params[p.0].as_ref().expect("every parameter has its buffer");
                    enc.copy_buffer_to_buffer(self.buffer(&program, *loc), 0, dst, 0, *bytes);
                }
            }
            ctx.queue.submit([enc.finish()]);
            let data = self.download(&program.staging, at)?;
            results
                .into_iter()
                .map(|(shape, at, bytes)| {
                    let (a, b) = (at as usize / 4, (at + bytes) as usize / 4);
                    Ok(Tensor::from_f32(shape, data[a..b].to_vec())?)
                })
                .collect()
        })
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let (v, buf) = self.core.param(name)?;
        let shape = self.core.graph.ty(v).fixed_shape().ok_or_else(|| anyhow!("%{name} has no fixed shape"))?;
        let bytes = shape.iter().product::<usize>() as u64 * 4;
        self.ctx.checked(&format!("reading %{name}"), || {
            let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read"),
                size: bytes.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc =
                self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read") });
            if bytes > 0 {
                enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes);
            }
            self.ctx.queue.submit([enc.finish()]);
            Ok(Tensor::from_f32(shape, self.download(&staging, bytes)?)?)
        })
    }

    fn write(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let (v, buf) = self.core.param(name)?;
        let ty = self.core.graph.ty(v);
        if ty.fixed_shape().as_deref() != Some(&value.shape[..]) || value.dtype() != DType::F32 {
            bail!("{name} is {ty}, cannot write {}", value.ty());
        }
        self.ctx.checked(&format!("writing %{name}"), || {
            self.ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(value.f32s()?));
            Ok(())
        })
    }
}
