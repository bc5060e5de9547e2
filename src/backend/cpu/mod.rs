//! The CPU backend: runs any IR graph in f32, NCHW, at any batch size and at any image size the
//! graph's ops allow; the training program too (batch norm in training mode, the gradient ops,
//! the detection loss).
//!
//! Compiling keeps the graph and a copy of its parameters. Each run plans memory for its input
//! shapes once (`slimc_ir::memory::plan`, cached per shape) and keeps one buffer per arena slot
//! between runs, so the heavy kernels write into reused buffers rather than allocating.

mod buffers;
mod conv;
mod conv_grad;
mod direct;
mod epilogue;
mod gemm;
pub mod isa;
mod layout;
mod node;
mod norm;
mod pointwise;
mod pool;
mod simd;
#[cfg(test)]
mod tests;

use super::compiled::{Compiled, Planned};
use super::{collective, Backend, ByShape, Executable};
use crate::distributed::{Communicator, Solo};
use anyhow::{anyhow, bail, Result};
use slimc_ir::eval::optim;
use slimc_ir::memory::Plan;
use slimc_ir::{BatchNorm, Collective};
use slimc_ir::{DType, Model, Op, Tensor, TensorData, TensorType, ValueId};
use std::borrow::Cow;
use std::sync::Arc;

/// The CPU backend.
pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// One image per worker thread: each thread runs an image's convolutions alone, on
    /// activations that stay in its cache, and the arena stays small.
    fn inference_batch(&self) -> Option<usize> {
        Some(rayon::current_num_threads())
    }

    fn compile_in(&self, model: &Model, comm: Arc<dyn Communicator>) -> Result<Box<dyn Executable>> {
        let mut exe = CpuExecutable::new(model)?;
        exe.comm = comm;
        Ok(Box::new(exe))
    }
}

/// A graph compiled for the CPU: the graph and its parameters as host tensors, and the
/// arena's buffers.
pub struct CpuExecutable {
    core: Compiled<Tensor>,
    /// Plans for the input shapes met so far, most recent last.
    plans: ByShape<Planned>,
    /// One buffer per arena slot, grown to the largest value the slot has held.
    pool: Vec<Slot>,
    /// Kernels' working memory (the weight gradient's partial sums).
    scratch: Vec<f32>,
    /// What the collective ops run through.
    comm: Arc<dyn Communicator>,
}

impl CpuExecutable {
    /// Compiles `model`: every parameter must have its tensor.
    pub fn new(model: &Model) -> Result<CpuExecutable> {
        let core = Compiled::new(model, true, |_, t| Ok(t.clone()))?;
        Ok(CpuExecutable { core, plans: ByShape::default(), pool: vec![], scratch: vec![], comm: Arc::new(Solo) })
    }
}

/// The row of an op in the op profile: convolutions by kernel, stride and kind; with
/// `SLIMC_PROFILE_OPS=shapes`, every op by its operands' shapes too.
fn profile_key(op: &slimc_ir::Op, inputs: &[&TensorType]) -> String {
    use slimc_ir::Op;
    static SHAPES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *SHAPES.get_or_init(|| std::env::var("SLIMC_PROFILE_OPS").is_ok_and(|v| v == "shapes")) {
        let shapes: Vec<String> = inputs.iter().take(2).map(|t| t.to_string()).collect();
        return format!("{} {}", op.name(), shapes.join(" "));
    }
    match op {
        Op::Conv2d(c) | Op::Conv2dGradInput(c) | Op::Conv2dGradWeight(c) => {
            let w = match op {
                Op::Conv2dGradWeight(_) => inputs[2],
                // The forward op and the input gradient read the weight second.
                _ => inputs[1],
            };
            let k = w.shape.get(2).and_then(|d| d.fixed()).unwrap_or(0);
            let kind = if c.groups > 1 { "dw" } else { "" };
            format!("{} {k}x{k}/{}{kind}", op.name(), c.stride[0])
        }
        // Every other op is one row by its name.
        _ => op.name().to_string(),
    }
}

/// Takes the values `dead` out of `env`, giving the buffers of those computed here back to their
/// slots.
fn release(dead: &[usize], env: &mut [Option<Cow<Tensor>>], pool: &mut [Slot], plan: &Plan) {
    for &v in dead {
        if let (Some(Cow::Owned(t)), Some(s)) = (env[v].take(), plan.slot[v]) {
            recycle(pool, s, t);
        }
    }
}

/// Runs the collective node `n` through `comm`: its carried operands that die here (`dead`) and
/// were computed by the program move into its results (the accumulated gradients: no copy on a
/// micro-batch that does not step), the others are copied.
fn collective_node(
    n: &slimc_ir::Node,
    c: Collective,
    dead: &[usize],
    env: &mut [Option<Cow<Tensor>>],
    comm: &dyn Communicator,
) -> Result<Vec<Tensor>> {
    let k = collective::carried(c, n.inputs.len());
    let scalars = match n.inputs.get(k) {
        Some(v) => Some(env[v.0].as_deref().expect("topological order").f32s()?.to_vec()),
        None => None,
    };
    let mut carried = Vec::with_capacity(k);
    for (j, v) in n.inputs[..k].iter().enumerate() {
        let once = !n.inputs[..j].contains(v) && !n.inputs[j + 1..].contains(v);
        let t = match env[v.0].take().expect("topological order") {
            Cow::Owned(t) if once && dead.contains(&v.0) => t,
            other => {
                let t = other.as_ref().clone();
                env[v.0] = Some(other);
                t
            }
        };
        carried.push(t);
    }
    collective::run(c, carried, scalars.as_deref(), comm)
}

/// An arena slot's buffer, and the allocation (address, capacity) and length it had when a value
/// took it, until it comes back.
#[derive(Default)]
struct Slot {
    buf: Vec<f32>,
    taken: Option<(usize, usize, usize)>,
}

impl Slot {
    /// The buffer, for a value to write into. While in the slot a buffer keeps the length of
    /// the largest value it has held, so a value after a smaller one reuses the elements already
    /// there instead of zero-filling them again (`sized`).
    fn take(&mut self) -> Vec<f32> {
        let b = std::mem::take(&mut self.buf);
        self.taken = Some((b.as_ptr() as usize, b.capacity(), b.len()));
        b
    }

    /// Gives a dead value's buffer back, unless the slot holds a larger one already.
    fn put(&mut self, mut v: Vec<f32>) {
        if let Some((ptr, cap, len)) = self.taken.take() {
            if (v.as_ptr() as usize, v.capacity()) == (ptr, cap) && len > v.len() {
                // SAFETY: the buffer is the allocation taken with `len` elements written (the
                // same address and capacity, and it has lived in a value since); kernels only
                // write or shorten a buffer of that capacity, so those elements are still
                // initialized f32s.
                unsafe { v.set_len(len) };
            }
        }
        if v.capacity() >= self.buf.capacity() {
            self.buf = v;
        }
    }
}

/// Gives a dead value's buffer back to its slot.
fn recycle(pool: &mut [Slot], slot: usize, t: Tensor) {
    if let TensorData::F32(v) = t.data {
        pool[slot].put(v);
    }
}

impl Executable for CpuExecutable {
    fn input_names(&self) -> Vec<String> {
        self.core.input_names()
    }

    fn output_names(&self) -> Vec<String> {
        self.core.output_names()
    }

    fn run(&mut self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        // On one of rayon's workers: each kernel's parallel loop then starts from that worker's
        // own queue, instead of waking the pool from outside once per op.
        if rayon::current_thread_index().is_some() {
            return self.run_here(inputs);
        }
        rayon::scope(|_| self.run_here(inputs))
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        Ok(self.core.param(name)?.1.clone())
    }

    fn write(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let (_, old) = self.core.param_mut(name)?;
        if old.shape != value.shape || old.dtype() != value.dtype() {
            bail!("{name} is {}, cannot write {}", old.ty(), value.ty());
        }
        old.data.clone_from(&value.data);
        Ok(())
    }
}

impl CpuExecutable {
    /// [`Executable::run`] on the calling thread.
    fn run_here(&mut self, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        super::check_inputs(&self.core.graph, inputs)?;
        let core = &self.core;
        let planned = self.plans.get(inputs, |types| core.plan(types, &inputs[0].shape))?;
        let (plan, types) = (&planned.plan, &planned.types);
        let CpuExecutable { core, pool, scratch, comm, .. } = self;
        let Compiled { graph: g, params, profile, state, fused, absorbed, .. } = core;
        // A run whose arena grows faults in fresh memory: the profile keeps its time apart.
        let first = profile.is_some()
            && (pool.len() < plan.slot_bytes.len()
                || plan.slot_bytes.iter().zip(pool.iter()).any(|(&b, v)| (v.buf.capacity() as u64) * 4 < b));
        if pool.len() < plan.slot_bytes.len() {
            pool.resize_with(plan.slot_bytes.len(), Slot::default);
        }
        let mut env: Vec<Option<Cow<Tensor>>> = vec![None; g.values.len()];
        for (&v, t) in g.inputs.iter().zip(inputs) {
            env[v.0] = Some(Cow::Borrowed(*t));
        }
        for &p in &g.params {
            env[p.0] = params[p.0].as_ref().map(Cow::Borrowed);
        }
        for (i, n) in g.nodes.iter().enumerate() {
            if absorbed[i] {
                continue;
            }
            // An update that does not step hands its operands on (when they are the program's own
            // tensors, so nothing is copied).
            let idle = optim::idle_results(&n.op, |k| n.inputs.get(k).and_then(|v| env[v.0].as_deref()))
                .filter(|same| same.iter().all(|&k| matches!(env[n.inputs[k].0], Some(Cow::Borrowed(_)))));
            if let Some(same) = idle {
                for (&o, &k) in n.outputs.iter().zip(same) {
                    env[o.0] = env[n.inputs[k].0].clone();
                }
                release(&plan.frees[i], &mut env, pool, plan);
                continue;
            }
            if let Some(c) = n.op.collective() {
                let started = profile.as_ref().map(|_| std::time::Instant::now());
                let outs = collective_node(n, c, &plan.frees[i], &mut env, &**comm)
                    .map_err(|e| anyhow!("node {i} ({} @{}): {e}", n.op.name(), n.scope))?;
                if let (Some(p), Some(t)) = (profile.as_mut(), started) {
                    p.add(n.op.name(), t.elapsed(), first);
                }
                for (&o, t) in n.outputs.iter().zip(outs) {
                    env[o.0] = Some(Cow::Owned(t));
                }
                release(&plan.frees[i], &mut env, pool, plan);
                continue;
            }
            let slot = |o: ValueId| plan.slot[o.0].filter(|_| types[o.0].dtype == DType::F32);
            let mut bufs: Vec<Vec<f32>> =
                n.outputs.iter().map(|&o| slot(o).map(|s| pool[s].take()).unwrap_or_default()).collect();
            let shapes: Vec<Vec<usize>> =
                n.outputs.iter().map(|&o| types[o.0].fixed_shape().expect("inputs are concrete")).collect();
            let started = profile.as_ref().map(|_| std::time::Instant::now());
            // A convolution's batch norm and SiLU, applied by its kernel.
            let fusion = fused.get(&i).filter(|e| e.bn.is_some() || e.silu);
            let epi = match fusion {
                Some(e) => Some(epilogue::Epilogue {
                    coef: match e.bn {
                        Some(j) => {
                            let p: Vec<&Tensor> = g.nodes[j].inputs[1..]
                                .iter()
                                .map(|v| env[v.0].as_deref().expect("parameters"))
                                .collect();
                            let Op::BatchNorm(BatchNorm { eps, .. }) = g.nodes[j].op else { unreachable!("fusions") };
                            norm::bn_coefficients(p[0].f32s()?, p[1].f32s()?, p[2].f32s()?, p[3].f32s()?, eps)
                        }
                        None => vec![[1.0, 0.0]; shapes[0][1]],
                    },
                    silu: e.silu,
                }),
                None => None,
            };
            let outs = {
                let arg = |v: &ValueId| env[v.0].as_deref().expect("topological order");
                match fused.get(&i).and_then(|f| f.concat) {
                    Some(k) => {
                        // The concatenation never ran: its operands stand in for its result.
                        let parts: Vec<&Tensor> = g.nodes[k].inputs.iter().map(arg).collect();
                        let wb: Vec<&Tensor> = n.inputs[1..].iter().map(arg).collect();
                        node::conv_concatenated(&parts, &wb, &shapes[0], &mut bufs[0], epi)
                    }
                    None => {
                        let args: Vec<&Tensor> = n.inputs.iter().map(arg).collect();
                        node::compute(&n.op, &args, &shapes, &mut bufs, scratch, epi)
                    }
                }
                .map_err(|e| anyhow!("node {i} ({} @{}): {e}", n.op.name(), n.scope))?
            };
            if let (Some(p), Some(t)) = (profile.as_mut(), started) {
                let key = profile_key(&n.op, &n.inputs.iter().map(|v| &types[v.0]).collect::<Vec<_>>());
                p.add(&key, t.elapsed(), first);
            }
            // A result computed by the reference semantics brought its own allocation: the slot's
            // buffer it did not use goes back to the slot (a slot keeps its largest buffer, so the
            // next value there does not allocate and fault in fresh pages again).
            for (&o, b) in n.outputs.iter().zip(bufs) {
                if let Some(s) = slot(o).filter(|_| b.capacity() > 0) {
                    pool[s].put(b);
                }
            }
            // A fused convolution's result is its epilogue's value.
            let results = match fusion {
                Some(e) => vec![e.out],
                None => n.outputs.clone(),
            };
            for (o, t) in results.into_iter().zip(outs) {
                env[o.0] = Some(Cow::Owned(t));
            }
            release(&plan.frees[i], &mut env, pool, plan);
        }
        // State updates move into their parameters (whose old buffers go back to the arena);
        // the other outputs are copied out.
        let mut updates = vec![];
        let mut outs = vec![];
        for (i, &o) in g.outputs.iter().enumerate() {
            match state.iter().find(|s| s.0 == i) {
                Some(&(_, p)) => match env[o.0].take() {
                    Some(Cow::Owned(t)) => updates.push((o, p, t)),
                    // The update did not step: the tensor stays as it is.
                    Some(Cow::Borrowed(t)) if params[p.0].as_ref().is_some_and(|q| std::ptr::eq(t, q)) => {}
                    other => updates.push((o, p, other.expect("outputs are computed").into_owned())),
                },
                None => outs.push(env[o.0].as_deref().expect("outputs are computed").clone()),
            }
        }
        for &o in &g.outputs {
            if let (Some(Cow::Owned(t)), Some(s)) = (env[o.0].take(), plan.slot[o.0]) {
                recycle(pool, s, t);
            }
        }
        drop(env);
        for (o, p, t) in updates {
            let old = std::mem::replace(params[p.0].as_mut().expect("every parameter has its tensor"), t);
            if let Some(s) = plan.slot[o.0] {
                recycle(pool, s, old);
            }
        }
        Ok(outs)
    }
}
