//! The training programs, compiled once on a backend: the gradient program (the `autodiff`
//! pass's output: loss, every parameter gradient, the next BN running statistics), and the
//! whole training step (`autodiff` then `optimizer`: the update, accumulation, clipping, the
//! sparsity term and the EMA in the program, its state held by the executable).

use crate::backend::{cpu::Cpu, Backend, Executable};
use crate::distributed::{Communicator, Solo, World};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use slimc_ir::{Graph, Model, Op, ParamKind, Root, Tensor, ValueDef, ValueId};
use slimc_passes::{grad_name, sequences, OptimizerOptions, PassContext, GRAD_NORM, LOSS_ITEMS, LOSS_TOTAL};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// `tensors` as rank 0 holds them, on every rank of `world`: one `broadcast` op run on the host
/// through the world's communicator.
pub fn broadcast(tensors: Vec<Tensor>, world: &World) -> Result<Vec<Tensor>> {
    let mut g = Graph::new("broadcast");
    let inputs: Vec<ValueId> = tensors.iter().enumerate().map(|(k, t)| g.add_input(&format!("x{k}"), t.ty())).collect();
    let names: Vec<String> = (0..tensors.len()).map(|k| format!("y{k}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    g.outputs = g.add_node(Op::Broadcast(Root { root: 0 }), &inputs, &refs, "")?;
    let model = Model { graph: g, tensors: BTreeMap::new(), meta: Default::default(), training_state: vec![] };
    Cpu.compile_in(&model, world.comm.clone())?.run_in_order(&tensors)
}

/// A model's training program compiled on a backend, and the names of what it trains.
pub struct Program {
    /// The program: graph and initial tensors.
    pub model: Model,
    /// The program compiled on its backend, holding the current tensors.
    exe: Box<dyn Executable>,
    /// Trainable parameters, in graph order.
    pub params: Vec<String>,
    /// BN running statistics, in graph order.
    pub buffers: Vec<String>,
    /// The BN gammas (`batch_norm` scale parameters) of the inference graph, in graph order.
    pub gammas: Vec<String>,
}

/// The trainable parameters and the BN running statistics of an inference model, in graph
/// order.
fn trained_and_buffers(model: &Model) -> (Vec<String>, Vec<String>) {
    let g = &model.graph;
    let params = g
        .params
        .iter()
        .filter(|&&p| g.value(p).def == ValueDef::Param(ParamKind::Weight))
        .map(|&p| g.value(p).name.clone())
        .collect();
    let buffers = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .flat_map(|n| [n.inputs[3], n.inputs[4]])
        .map(|v| g.value(v).name.clone())
        .collect();
    (params, buffers)
}

impl Program {
    /// Runs the pass sequence `pipeline` on an inference model (YAML-built or a `.slim` file) with `cx` and
    /// compiles the result on `backend`.
    fn build(
        model: &Model,
        backend: &dyn Backend,
        pipeline: sequences::PassSequence,
        cx: &mut PassContext,
        comm: Arc<dyn Communicator>,
    ) -> Result<Program> {
        let gammas = slimc_passes::bn_gammas(&model.graph);
        let (params, buffers) = trained_and_buffers(model);
        let mut m = model.clone();
        pipeline.manager().run_with(&mut m, cx)?;
        let exe = backend.compile_in(&m, comm)?;
        Ok(Program { model: m, exe, params, buffers, gammas })
    }

    /// The gradient program: one forward and backward pass per run ([`Program::gradients`]).
    pub fn new(model: &Model, backend: &dyn Backend) -> Result<Program> {
        Program::build(model, backend, sequences::TRAIN, &mut PassContext::default(), Arc::new(Solo))
    }

    /// The whole training step with the optimizer `opts` describes ([`Program::train_step`]).
    pub fn with_optimizer(model: &Model, backend: &dyn Backend, opts: OptimizerOptions) -> Result<Program> {
        Program::with_optimizer_in(model, backend, opts, Arc::new(Solo))
    }

    /// [`Program::with_optimizer`] as one rank of a data-parallel run: its all-reduce runs
    /// through `comm`.
    pub fn with_optimizer_in(
        model: &Model,
        backend: &dyn Backend,
        opts: OptimizerOptions,
        comm: Arc<dyn Communicator>,
    ) -> Result<Program> {
        let mut cx = PassContext { optimizer: opts, ..Default::default() };
        Program::build(model, backend, sequences::TRAIN_STEP, &mut cx, comm)
    }

    /// Replaces every tensor the program holds (weights, BN statistics, accumulators, optimizer
    /// state, the EMA) with rank 0's, in one broadcast.
    pub fn sync_from_root(&mut self, world: &World) -> Result<()> {
        if world.size() == 1 {
            return Ok(());
        }
        let g = &self.model.graph;
        let names: Vec<String> = g.params.iter().map(|&p| g.value(p).name.clone()).collect();
        let values = names.iter().map(|n| self.exe.read(n)).collect::<Result<Vec<_>>>()?;
        for (n, t) in names.iter().zip(broadcast(values, world)?) {
            self.exe.write(n, &t)?;
        }
        Ok(())
    }

    /// A copy of one of the program's tensors (a parameter, a BN statistic, optimizer state,
    /// an EMA).
    pub fn read(&self, name: &str) -> Result<Tensor> {
        self.exe.read(name)
    }

    /// Replaces one of the program's tensors (same shape).
    pub fn write(&mut self, name: &str, t: &Tensor) -> Result<()> {
        self.exe.write(name, t)
    }

    /// Runs `inputs` and returns the results by name with the loss components and total taken
    /// out.
    fn run(&mut self, inputs: &[&Tensor]) -> Result<([f32; 3], f32, BTreeMap<String, Tensor>)> {
        let outs = self.exe.run(inputs)?;
        let mut by_name: BTreeMap<String, Tensor> = self.exe.output_names().into_iter().zip(outs).collect();
        let items = by_name.remove(LOSS_ITEMS).ok_or_else(|| anyhow!("training program lacks {LOSS_ITEMS}"))?;
        let total = by_name.remove(LOSS_TOTAL).ok_or_else(|| anyhow!("training program lacks {LOSS_TOTAL}"))?;
        let items = items.f32s()?;
        Ok(([items[0], items[1], items[2]], total.f32s()?[0], by_name))
    }

    /// Runs one forward and backward pass of the gradient program; the BN running statistics
    /// advance in the program.
    pub fn gradients(&mut self, images: &Tensor, targets: &Tensor) -> Result<StepResult> {
        // The training program takes the model's image input, then the targets `autodiff` added.
        let (items, total, mut by_name) = self.run(&[images, targets])?;
        let mut grads = BTreeMap::new();
        for p in &self.params {
            let g = by_name.remove(&grad_name(p)).ok_or_else(|| anyhow!("the program has no gradient of {p}"))?;
            grads.insert(p.clone(), g);
        }
        let running = self.buffers.iter().map(|b| Ok((b.clone(), self.exe.read(b)?))).collect::<Result<_>>()?;
        Ok(StepResult { items, total, grads, running })
    }

    /// Runs one micro-batch of the whole training step with this step's scalars
    /// ([`slimc_ir::step_scalars`]); returns the loss components and total and the gradient norm.
    pub fn train_step(&mut self, images: &Tensor, targets: &Tensor, scalars: &Tensor) -> Result<StepLoss> {
        let (items, total, by_name) = self.run(&[images, targets, scalars])?;
        let norm = by_name.get(GRAD_NORM).ok_or_else(|| anyhow!("training program lacks {GRAD_NORM}"))?;
        Ok(StepLoss { items, total, grad_norm: norm.f32s()?[0] })
    }
}

/// What one run of the gradient program produces.
pub struct StepResult {
    /// Loss components: box, cls, dfl (after gains, per target-score sum).
    pub items: [f32; 3],
    /// The total that is differentiated: the components' sum times the batch size.
    pub total: f32,
    /// Gradient of the total for every trainable parameter.
    pub grads: BTreeMap<String, Tensor>,
    /// Next BN running statistics.
    pub running: BTreeMap<String, Tensor>,
}

/// What one micro-batch of the training step reports to the host.
pub struct StepLoss {
    /// Loss components: box, cls, dfl.
    pub items: [f32; 3],
    /// The differentiated total.
    pub total: f32,
    /// The global norm of the gradient the update would use (accumulated, with the L1
    /// subgradient, before clipping).
    pub grad_norm: f32,
}

#[derive(Deserialize)]
struct TargetLists {
    batch_idx: Vec<f32>,
    cls: Vec<f32>,
    #[serde(alias = "bboxes_xywhn")]
    bboxes: Vec<[f32; 4]>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetsFile {
    Nested { targets: TargetLists },
    Flat(TargetLists),
}

/// Reads `targets.json`: `batch_idx`, `cls` and `bboxes` (or `bboxes_xywhn`: normalised cx, cy,
/// w, h) lists, at the top level or under `targets` (as in a fixture's report.json). Returns the
/// `[M, 6]` targets tensor.
pub fn read_targets(path: &Path) -> Result<Tensor> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let t = match serde_json::from_str::<TargetsFile>(&text) {
        Ok(TargetsFile::Nested { targets }) | Ok(TargetsFile::Flat(targets)) => targets,
        Err(e) => bail!("{}: expected batch_idx, cls and bboxes lists ({e})", path.display()),
    };
    if t.batch_idx.len() != t.cls.len() || t.cls.len() != t.bboxes.len() {
        bail!(
            "{}: batch_idx, cls and bboxes have {}, {} and {} entries",
            path.display(),
            t.batch_idx.len(),
            t.cls.len(),
            t.bboxes.len()
        );
    }
    let mut rows = Vec::with_capacity(t.cls.len() * 6);
    for i in 0..t.cls.len() {
        rows.extend([t.batch_idx[i], t.cls[i]]);
        rows.extend(t.bboxes[i]);
    }
    Ok(Tensor::from_f32(vec![t.cls.len(), 6], rows)?)
}
