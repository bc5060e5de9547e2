//! `optimizer`: appends one optimizer step to a training program, so that the whole step —
//! forward, backward, accumulation, the sparsity term, clipping, the update and the EMA — is one
//! IR program whose state lives with it.

use crate::autodiff::next_name;
use crate::context::PassContext;
use crate::options::{SrMode, UpdateRule};
use crate::pass::Pass;
use slimc_ir::{step_scalars, Graph, IrError, Model, Op, ParamKind, Tensor, TensorType, Update, ValueDef, ValueId};
use slimc_ir::{Binary, ParamGroup, Slice, Unary};
use std::collections::{BTreeMap, BTreeSet};

/// Name of the training step's per-step scalars input (see [`slimc_ir::step_scalars`]).
pub const SCALARS: &str = "optimizer.scalars";
/// Name of the output holding the global norm of the gradient the update uses (before
/// clipping).
pub const GRAD_NORM: &str = "optimizer.grad_norm";

/// The name of the gradient accumulator of `param`.
pub fn accumulator_name(param: &str) -> String {
    format!("{param}.grad_acc")
}

/// The name of the EMA of `tensor` (a trained parameter or a BN running statistic).
pub fn ema_name(tensor: &str) -> String {
    format!("ema.{tensor}")
}

/// The names of the optimizer state of `param` for `rule`: PyTorch's `momentum_buffer` for SGD,
/// `exp_avg` and `exp_avg_sq` for AdamW.
pub fn state_names(param: &str, rule: UpdateRule) -> Vec<String> {
    let keys: &[&str] = match rule {
        UpdateRule::Sgd => &["momentum_buffer"],
        UpdateRule::AdamW => &["exp_avg", "exp_avg_sq"],
    };
    keys.iter().map(|k| format!("{param}.{k}")).collect()
}

/// The group of every trainable parameter of `g`, by its role in the graph rather than its
/// name: the group the op reading it decides ([`Op::param_groups`]: the bias of a conv and the
/// shift of a BN are [`ParamGroup::Bias`], the scale of a BN is [`ParamGroup::Gamma`]), else
/// [`ParamGroup::Weight`].
pub fn param_groups(g: &Graph) -> BTreeMap<String, ParamGroup> {
    let mut out = BTreeMap::new();
    for &p in &g.params {
        if g.value(p).def == ValueDef::Param(ParamKind::Weight) {
            out.insert(g.value(p).name.clone(), ParamGroup::Weight);
        }
    }
    for n in &g.nodes {
        for &(slot, group) in n.op.param_groups() {
            if let Some(v) = n.inputs.get(slot) {
                if let Some(e) = out.get_mut(&g.value(*v).name) {
                    *e = group;
                }
            }
        }
    }
    out
}

/// The names of the BN gammas of `g` (the operands an op puts in [`ParamGroup::Gamma`]: the
/// scales of `batch_norm` and `batch_norm_train`), in graph order.
pub fn bn_gammas(g: &Graph) -> Vec<String> {
    let mut out = vec![];
    for n in &g.nodes {
        for &(slot, group) in n.op.param_groups() {
            if group == ParamGroup::Gamma {
                out.push(g.value(n.inputs[slot]).name.clone());
            }
        }
    }
    out
}

/// Declares a buffer parameter typed like `like`, holding `init`.
fn add_buffer(
    g: &mut Graph,
    tensors: &mut BTreeMap<String, Tensor>,
    name: &str,
    like: ValueId,
    init: Tensor,
) -> ValueId {
    tensors.insert(name.to_string(), init);
    g.add_param(name, g.ty(like).clone(), ParamKind::Buffer)
}

/// Appends one optimizer step to a training program (`autodiff`'s output), with the options of
/// the run's [`PassContext`]: each parameter's gradient is added to its accumulator; on several
/// ranks, the accumulated gradients are summed across them in one `all_reduce`; under the
/// subgradient L1 term, `sr·sign(γ)` is added for the chosen gammas; the global norm of those
/// gradients feeds the clipping of every update; each parameter is updated by SGD-Nesterov or
/// AdamW with its group's learning rate (with the proximal L1 step under the proximal term);
/// the EMA follows the updated parameters and the next BN statistics. Per-step values come from
/// the `optimizer.scalars` input; accumulators, moments and the EMA are new buffer parameters,
/// each written back through a `<name>.next` output (a state update), as are the parameters.
/// The outputs become the loss outputs, the gradient norm, then the state updates.
/// Invariant: with the step flag off, every parameter, moment and EMA keeps its value and only
/// the accumulators and BN statistics change; with it on, the result is the optimizer's update
/// from the accumulated gradient.
pub struct Optimizer;

impl Pass for Optimizer {
    fn name(&self) -> &'static str {
        "optimizer"
    }
    fn summary(&self) -> &'static str {
        "append accumulation, the L1 term, clipping, the SGD/AdamW update and the EMA to a training program"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool, IrError> {
        let opts = cx.optimizer.clone();
        let g = &model.graph;
        if g.find(SCALARS).is_some() {
            return Err(IrError::Invalid("the training program already has an optimizer step".into()));
        }
        let (mut grads, mut buffers, mut kept) = (vec![], vec![], vec![]);
        let param = |name: Option<&str>, kind: Option<ParamKind>| {
            let v = g.find(name?)?;
            match g.value(v).def {
                ValueDef::Param(k) if kind.is_none_or(|want| want == k) => Some(v),
                _ => None,
            }
        };
        for &o in &g.outputs {
            let name = &g.value(o).name;
            if let Some(p) = param(name.strip_suffix(".grad"), Some(ParamKind::Weight)) {
                grads.push((p, o));
            } else if let Some(b) = param(name.strip_suffix(slimc_ir::NEXT_SUFFIX), None) {
                buffers.push((b, o));
            } else {
                kept.push(o);
            }
        }
        if grads.is_empty() {
            return Err(IrError::Invalid("no parameter gradients among the outputs: run `autodiff` first".into()));
        }
        let groups = param_groups(g);
        let sparse: BTreeSet<String> = match &opts.sparsity {
            None => BTreeSet::new(),
            Some(sp) => sp.gammas.clone().unwrap_or_else(|| bn_gammas(g)).into_iter().collect(),
        };
        let trained: BTreeSet<&str> = grads.iter().map(|(p, _)| g.value(*p).name.as_str()).collect();
        if let Some(missing) = sparse.iter().find(|n| !trained.contains(n.as_str())) {
            return Err(IrError::Invalid(format!("sparsity: %{missing} is not a trained parameter")));
        }
        let g = &mut model.graph;
        let tensors = &mut model.tensors;
        let scalars = g.add_input(SCALARS, TensorType::f32(&[step_scalars::LEN]));
        let mut state = vec![];
        let zeros = |g: &Graph, v: ValueId| Tensor::full(&g.ty(v).fixed_shape().unwrap_or_default(), 0.0);
        let scope = "optimizer";
        let mut sums = vec![];
        for &(p, d) in &grads {
            let name = g.value(p).name.clone();
            let acc = add_buffer(g, tensors, &accumulator_name(&name), p, zeros(g, p));
            let next = next_name(&accumulator_name(&name));
            let outs = g.add_node(Op::Accumulate, &[acc, d, scalars], &[&format!("{name}.grad_sum"), &next], scope)?;
            sums.push(outs[0]);
            state.push(outs[1]);
        }
        if opts.world_size > 1 {
            // One bucket: every accumulated gradient summed across the ranks when the optimizer
            // steps, so what follows sees the global batch's gradient, as one process would.
            let names: Vec<String> = grads.iter().map(|&(p, _)| format!("{}.grad_global", g.value(p).name)).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let inputs: Vec<ValueId> = sums.iter().copied().chain([scalars]).collect();
            sums = g.add_node(Op::AllReduce, &inputs, &refs, scope)?;
        }
        if opts.sparsity.as_ref().is_some_and(|s| s.mode == SrMode::Subgradient) {
            let at = step_scalars::SR as i64;
            let slice = Op::Slice(Slice { axes: vec![0], starts: vec![at], ends: vec![at + 1], steps: vec![1] });
            let sr = g.add1(slice, &[scalars], "optimizer.sr", scope)?;
            for (k, &(p, _)) in grads.iter().enumerate() {
                let name = g.value(p).name.clone();
                if sparse.contains(&name) {
                    let sign = g.add1(Op::Unary(Unary::Sign), &[p], &format!("{name}.sign"), scope)?;
                    let term = g.add1(Op::Binary(Binary::Mul), &[sign, sr], &format!("{name}.l1"), scope)?;
                    sums[k] = g.add1(Op::Binary(Binary::Add), &[sums[k], term], &format!("{name}.grad_l1"), scope)?;
                }
            }
        }
        let norm = g.add1(Op::GlobalNorm, &sums, GRAD_NORM, scope)?;
        let mut averaged = vec![];
        for (k, &(p, _)) in grads.iter().enumerate() {
            let name = g.value(p).name.clone();
            let group = groups.get(&name).copied().unwrap_or(ParamGroup::Weight);
            let prox =
                opts.sparsity.as_ref().filter(|s| s.mode == SrMode::Proximal && sparse.contains(&name)).map(|s| s.keep);
            let (op, beta1) = match opts.rule {
                UpdateRule::Sgd => (Op::SgdUpdate as fn(Update) -> Op, 0.0),
                UpdateRule::AdamW => (Op::AdamWUpdate as fn(Update) -> Op, opts.beta1),
            };
            let weight_decay = if group == ParamGroup::Weight { opts.weight_decay } else { 0.0 };
            let u = Update { group: group.index(), weight_decay, max_norm: opts.max_norm, prox, beta1 };
            let mut inputs = vec![p, sums[k], norm, scalars];
            let mut names = vec![next_name(&name)];
            for s in state_names(&name, opts.rule) {
                inputs.push(add_buffer(g, tensors, &s, p, zeros(g, p)));
                names.push(next_name(&s));
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let outs = g.add_node(op(u), &inputs, &refs, scope)?;
            averaged.push((p, outs[0]));
            state.extend(outs);
        }
        averaged.extend(buffers.iter().copied());
        if opts.ema {
            for (x, next) in averaged {
                let name = ema_name(&g.value(x).name);
                let init = tensors
                    .get(&g.value(x).name)
                    .cloned()
                    .ok_or_else(|| IrError::Invalid(format!("parameter %{} has no tensor", g.value(x).name)))?;
                let e = add_buffer(g, tensors, &name, x, init);
                state.push(g.add1(Op::EmaUpdate, &[e, next, scalars], &next_name(&name), scope)?);
            }
        }
        g.outputs = kept.into_iter().chain([norm]).chain(buffers.iter().map(|b| b.1)).chain(state).collect();
        Ok(true)
    }
}
