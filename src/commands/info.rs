//! Model statistics as Ultralytics' `model.info()` reports them: layers, parameters,
//! gradients and GFLOPs.

use anyhow::{anyhow, Result};
use serde::Serialize;
use slimc_ir::Unary;
use slimc_ir::{infer_all, Model, Op, ParamKind, TensorType, ValueDef};

/// Summary numbers of a model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// Graph name.
    pub name: String,
    /// Leaf modules as Ultralytics counts them (convs, BNs, identities, the shared SiLU, pools,
    /// upsamples and Concat layers).
    pub layers: usize,
    /// Parameters (trainable and frozen), BN running statistics excluded.
    pub parameters: usize,
    /// Trainable parameters.
    pub gradients: usize,
    /// GFLOPs at `imgsz` for batch 1, counted like thop (conv MACs plus BN, times two).
    pub gflops: f64,
    /// Image size (h, w) used for GFLOPs.
    pub imgsz: [usize; 2],
    /// Number of classes.
    pub nc: usize,
    /// IR nodes.
    pub nodes: usize,
    /// Count of nodes by op.
    pub ops: Vec<(String, usize)>,
    /// Facts about the imported file (an Ultralytics checkpoint's version, date, training
    /// arguments and metrics).
    pub origin: std::collections::BTreeMap<String, String>,
}

/// The types of `g`'s parameters of the given kinds.
fn param_types<'a>(g: &'a slimc_ir::Graph, kinds: &'a [ParamKind]) -> impl Iterator<Item = &'a TensorType> + 'a {
    g.params
        .iter()
        .map(|&p| g.value(p))
        .filter(move |v| matches!(v.def, ValueDef::Param(k) if kinds.contains(&k)))
        .map(|v| &v.ty)
}

/// Computes [`ModelInfo`] at image size `imgsz` (default: the model's own).
pub fn model_info(model: &Model, imgsz: Option<[usize; 2]>) -> Result<ModelInfo> {
    let g = &model.graph;
    let count = |kinds: &[ParamKind]| -> usize { param_types(g, kinds).map(|t| t.numel().unwrap_or(0)).sum() };
    let imgsz = imgsz.unwrap_or(model.meta.imgsz);
    let input_types = g.image_input_types(1, imgsz);
    let types =
        infer_all(g, &input_types).map_err(|e| anyhow!("cannot size the model at {}x{}: {e}", imgsz[0], imgsz[1]))?;
    let numel = |v: slimc_ir::ValueId| types[v.0].numel().unwrap_or(0) as f64;
    let mut macs = 0.0;
    let mut layers = 0;
    let mut pool_scopes = std::collections::HashSet::new();
    let users = g.users();
    let mut ops: std::collections::BTreeMap<String, usize> = Default::default();
    for n in &g.nodes {
        *ops.entry(n.op.name().to_string()).or_default() += 1;
        match &n.op {
            Op::Conv2d(_) => {
                let w = types[n.inputs[1].0].fixed_shape().unwrap_or_default();
                macs += numel(n.outputs[0]) * (w[1] * w[2] * w[3]) as f64;
                layers += 1;
            }
            Op::BatchNorm(_) => {
                macs += 4.0 * numel(n.outputs[0]);
                let activated = users[n.outputs[0].0].iter().any(|u| matches!(g.nodes[u.0].op, Op::Unary(Unary::Silu)));
                layers += if activated { 1 } else { 2 };
            }
            Op::MaxPool2d(_) => {
                if pool_scopes.insert(n.scope.clone()) {
                    layers += 1;
                }
            }
            Op::UpsampleNearest(_) => layers += 1,
            Op::Concat(_) if g.value(n.outputs[0]).name == n.scope => layers += 1,
            // Part of a layer counted above, and no FLOPs in Ultralytics' count (thop counts
            // modules, not the tensor functions attention and the head use).
            Op::Concat(_) | Op::Unary(_) | Op::Binary(_) | Op::Split(_) | Op::Slice(_) | Op::Reshape(_) => {}
            Op::Transpose(_) | Op::MatMul | Op::Softmax(_) | Op::Anchors(_) | Op::AllReduce | Op::Broadcast(_) => {}
            // Training ops: not in a model being described.
            Op::UnaryGrad(_) | Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) => {}
            Op::BatchNormGrad | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) => {}
            Op::SliceGrad(_) | Op::SumTo | Op::DetectLoss(_) | Op::DetectLossGrad(_) | Op::Accumulate => {}
            Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => {}
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => {}
        }
    }
    if ops.contains_key("silu") {
        layers += 1;
    }
    Ok(ModelInfo {
        name: g.name.clone(),
        layers,
        parameters: count(&[ParamKind::Weight, ParamKind::Frozen]),
        gradients: count(&[ParamKind::Weight]),
        gflops: 2.0 * macs / 1e9,
        imgsz,
        nc: model.meta.names.len(),
        nodes: g.nodes.len(),
        ops: ops.into_iter().collect(),
        origin: model.meta.origin.clone(),
    })
}

/// The planned memory of running a model at one batch and image size (bytes).
#[derive(Clone, Debug, Serialize)]
pub struct MemoryInfo {
    /// Batch size planned for.
    pub batch: usize,
    /// Image size (h, w) planned for.
    pub imgsz: [usize; 2],
    /// Every tensor of the model: weights, BN statistics, constants.
    pub parameters: u64,
    /// The inference arena: the sum of its slots.
    pub inference_arena: u64,
    /// The most bytes of inference values alive at once.
    pub inference_live_peak: u64,
    /// The whole training step's arena (forward, backward, every gradient, and the optimizer
    /// step's results: SGD, as `train-step` builds it by default).
    pub train_arena: u64,
    /// The most bytes of training-step values alive at once.
    pub train_live_peak: u64,
    /// Slots of the training step's arena.
    pub train_slots: usize,
    /// Optimizer state: one momentum buffer per trainable element (SGD).
    pub sgd_state: u64,
    /// Optimizer state: two moments per trainable element (AdamW).
    pub adamw_state: u64,
    /// The EMA copy of the trainable tensors and BN buffers.
    pub ema: u64,
}

/// Plans inference and one training step of `model` at `batch` × `imgsz` ([`slimc_ir::memory::plan`]).
pub fn memory_info(model: &Model, batch: usize, imgsz: [usize; 2]) -> Result<MemoryInfo> {
    use slimc_ir::memory::{plan, value_bytes};
    let planned = |g: &slimc_ir::Graph| -> Result<slimc_ir::memory::Plan> {
        let types = infer_all(g, &g.image_input_types(batch, imgsz))
            .map_err(|e| anyhow!("cannot size the model at batch {batch}, {}x{}: {e}", imgsz[0], imgsz[1]))?;
        plan(g, &types).ok_or_else(|| anyhow!("batch {batch} at {}x{} is too large to address", imgsz[0], imgsz[1]))
    };
    let g = &model.graph;
    let bytes_of = |kinds: &[ParamKind]| -> u64 { param_types(g, kinds).map(|t| value_bytes(t).unwrap_or(0)).sum() };
    let inference = planned(g)?;
    let mut train = model.clone();
    slimc_passes::sequences::TRAIN_STEP.manager().run(&mut train).map_err(|e| anyhow!("training program: {e}"))?;
    let training = planned(&train.graph)?;
    let trainable = bytes_of(&[ParamKind::Weight]);
    Ok(MemoryInfo {
        batch,
        imgsz,
        parameters: bytes_of(&[ParamKind::Weight, ParamKind::Frozen, ParamKind::Buffer, ParamKind::Const]),
        inference_arena: inference.arena_bytes(),
        inference_live_peak: inference.live_peak,
        train_arena: training.arena_bytes(),
        train_live_peak: training.live_peak,
        train_slots: training.slot_bytes.len(),
        sgd_state: trainable,
        adamw_state: 2 * trainable,
        ema: bytes_of(&[ParamKind::Weight, ParamKind::Buffer]),
    })
}
