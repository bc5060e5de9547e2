//! `autodiff`: reverse-mode differentiation of a detector into its training program.

use crate::context::PassContext;
use crate::pass::Pass;
use slimc_ir::{Anchors, Axis, BatchNorm, Binary, DetectLoss, Reshape, Slice, Split, Transpose, Unary, UnaryGrad};
use slimc_ir::{Dim, Graph, IrError, Model, Op, ParamKind, ReshapeDim, Tensor, TensorType, ValueDef, ValueId};
use std::collections::HashMap;

/// Name of the training program's targets input: `[M, 6]` rows of batch index, class and
/// normalised cx, cy, w, h.
pub const TARGETS: &str = "targets";
/// Name of the loss components output `[3]` (box, cls, dfl after their gains).
pub const LOSS_ITEMS: &str = "loss.items";
/// Name of the scalar total loss output (the components' sum times the batch size).
pub const LOSS_TOTAL: &str = "loss.total";
/// Ultralytics' default loss gains (box, cls, dfl).
pub const LOSS_GAINS: [f32; 3] = [7.5, 0.5, 1.5];

/// The name of the output holding the gradient of trainable parameter `param`.
pub fn grad_name(param: &str) -> String {
    format!("{param}.grad")
}

/// The name of the output holding the next value of `buffer` (a state update: a BN running
/// statistic, an optimizer's state, a parameter).
pub fn next_name(buffer: &str) -> String {
    format!("{buffer}{}", slimc_ir::NEXT_SUFFIX)
}

/// Turns an inference graph into one training step's program. If the graph has no
/// `detect_loss`, Ultralytics' detection loss is attached to the Detect head's level maps (the
/// inputs of its `anchors` node) with a new `targets` input; every `batch_norm` of trained
/// parameters becomes `batch_norm_train` (a frozen teacher's stays in inference mode); then the
/// backward program is built with one vector-Jacobian rule per op, seeded by the gradient op of
/// each loss in the graph: `detect_loss_grad`, and `distill_loss_grad` on the student's maps
/// when the `distill` pass attached a teacher. The outputs become: the detection loss
/// components, the total (the detection loss's, plus the distillation loss's), the distillation
/// terms when there are any, the gradient of every trainable parameter (`<param>.grad`, in
/// parameter order) and the next BN running statistics (`<buffer>.next`). Invariant: the loss
/// equals the inference graph's losses with batch statistics, and each gradient output is the
/// derivative of the total with respect to its parameter.
pub struct Autodiff;

impl Pass for Autodiff {
    fn name(&self) -> &'static str {
        "autodiff"
    }
    fn summary(&self) -> &'static str {
        "attach the detection loss, switch BN to training mode and build the backward program"
    }
    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<bool, IrError> {
        let training =
            |n: &slimc_ir::Node| matches!(n.op, Op::BatchNormTrain(_) | Op::DetectLossGrad(_) | Op::DistillLossGrad(_));
        if model.graph.nodes.iter().any(training) {
            return Err(IrError::Invalid("the graph is already a training program".into()));
        }
        let loss = attach_detect_loss(&mut model.graph)?;
        let running = train_mode_bn(&mut model.graph)?;
        let g = &mut model.graph;
        let node = g.nodes[loss.0].clone();
        let Op::DetectLoss(DetectLoss { strides, gains, reg_max }) = node.op else {
            unreachable!("attach_detect_loss")
        };
        let levels = &node.inputs[..strides.len()];
        let grad_names = |g: &Graph, vs: &[ValueId]| -> Vec<String> {
            vs.iter().map(|&v| g.fresh_name(&grad_name(&g.value(v).name))).collect()
        };
        let names = grad_names(g, levels);
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let dlevels =
            g.add_node(Op::DetectLossGrad(DetectLoss { strides, gains, reg_max }), &node.inputs, &refs, "loss")?;
        let mut seeds: Vec<(ValueId, ValueId)> = levels.iter().copied().zip(dlevels).collect();
        let mut outputs = node.outputs.clone();
        if let Some(k) = g.nodes.iter().position(|n| matches!(n.op, Op::DistillLoss(_))) {
            let dn = g.nodes[k].clone();
            let Op::DistillLoss(attrs) = dn.op else { unreachable!("matched") };
            let student = &dn.inputs[..dn.inputs.len() / 2];
            let names = grad_names(g, student);
            let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
            let ds = g.add_node(Op::DistillLossGrad(attrs), &dn.inputs, &refs, &dn.scope)?;
            seeds.extend(student.iter().copied().zip(ds));
            // The total differentiated is the sum of the two losses' totals.
            rename(g, outputs[1], &format!("{LOSS_TOTAL}.detect"));
            outputs[1] = g.add1(Op::Binary(Binary::Add), &[outputs[1], dn.outputs[1]], LOSS_TOTAL, "loss")?;
            outputs.push(dn.outputs[0]);
        }
        let wrt: Vec<ValueId> =
            g.params.iter().copied().filter(|&p| g.value(p).def == ValueDef::Param(ParamKind::Weight)).collect();
        let grads = differentiate(model, &seeds, &wrt)?;
        let g = &mut model.graph;
        for (&p, d) in wrt.iter().zip(grads) {
            let name = &g.value(p).name;
            let d = d.ok_or_else(|| IrError::Invalid(format!("parameter %{name} does not reach the loss")))?;
            let want = grad_name(name);
            rename(g, d, &want);
            outputs.push(d);
        }
        for (buffer, next) in running {
            let want = next_name(&g.value(buffer).name);
            rename(g, next, &want);
            outputs.push(next);
        }
        g.outputs = outputs;
        Ok(true)
    }
}

/// Gives value `v` the name `want`, moving a value that already holds it to a fresh name.
fn rename(g: &mut Graph, v: ValueId, want: &str) {
    if g.value(v).name == want {
        return;
    }
    if let Some(other) = g.find(want) {
        let fresh = g.fresh_name(&format!("{want}.0"));
        g.values[other.0].name = fresh;
    }
    g.values[v.0].name = want.to_string();
}

/// A graph's Detect head as the losses read it.
pub struct DetectHead {
    /// The raw level maps `[N, 4·reg_max + nc, h, w]`: the inputs of its `anchors` node.
    pub levels: Vec<ValueId>,
    /// Each level's stride.
    pub strides: Vec<f32>,
    /// DFL bins per box side.
    pub reg_max: usize,
}

/// The Detect head of `g`, found from its `anchors` node (the first, in graph order).
pub fn detect_levels(g: &Graph) -> Result<DetectHead, IrError> {
    let anchors = g.nodes.iter().find(|n| matches!(n.op, Op::Anchors(_))).ok_or_else(|| {
        IrError::Invalid(
            "no Detect head found (no `anchors` node); training needs a model from a YAML or a .slim file, \
             not an ONNX file whose anchors were folded to constants"
                .into(),
        )
    })?;
    let Op::Anchors(Anchors { strides, .. }) = &anchors.op else { unreachable!() };
    let (strides, levels) = (strides.clone(), anchors.inputs.clone());
    let ch = g.ty(levels[0]).shape[1].fixed().unwrap_or(0);
    let reg_max = head_reg_max(g, &levels)?;
    if ch <= 4 * reg_max {
        return Err(IrError::Invalid(format!("Detect level maps have {ch} channels, fewer than 4x{reg_max} + nc")));
    }
    Ok(DetectHead { levels, strides, reg_max })
}

/// Finds the graph's `detect_loss`, or attaches one to the Detect head's level maps (adding the
/// `targets` input); the graph outputs become the loss components and total. Returns the loss
/// node.
pub fn attach_detect_loss(g: &mut Graph) -> Result<slimc_ir::NodeId, IrError> {
    if let Some(i) = g.nodes.iter().position(|n| matches!(n.op, Op::DetectLoss(_))) {
        g.outputs = g.nodes[i].outputs.clone();
        return Ok(slimc_ir::NodeId(i));
    }
    let DetectHead { levels, strides, reg_max } = detect_levels(g)?;
    let targets = g.add_input(
        TARGETS,
        TensorType { dtype: slimc_ir::DType::F32, shape: vec![Dim::Sym("M".into()), Dim::Fixed(6)] },
    );
    let mut inputs = levels;
    inputs.push(targets);
    let op = Op::DetectLoss(DetectLoss { strides, gains: LOSS_GAINS.to_vec(), reg_max });
    let outs = g.add_node(op, &inputs, &[LOSS_ITEMS, LOSS_TOTAL], "loss")?;
    g.outputs = outs;
    Ok(slimc_ir::NodeId(g.nodes.len() - 1))
}

/// The Detect head's `reg_max`, read off the graph: the head's level maps flow (through
/// reshapes and a concat) into a split of 4·reg_max box channels and the class channels.
fn head_reg_max(g: &Graph, levels: &[ValueId]) -> Result<usize, IrError> {
    let users = g.users();
    let mut stack: Vec<ValueId> = levels.to_vec();
    let mut seen = std::collections::BTreeSet::new();
    while let Some(v) = stack.pop() {
        for &u in &users[v.0] {
            if !seen.insert(u) {
                continue;
            }
            let n = &g.nodes[u.0];
            match &n.op {
                Op::Split(Split { axis: 1, sizes }) if sizes.len() == 2 && sizes[0] % 4 == 0 && sizes[0] > 0 => {
                    return Ok(sizes[0] / 4)
                }
                Op::Reshape(_) | Op::Concat(_) => stack.extend(n.outputs.iter().copied()),
                // A search along the head's reshapes and concats: every other op ends the path.
                _ => {}
            }
        }
    }
    Err(IrError::Invalid("the Detect head's box/class split (4·reg_max box channels) was not found".into()))
}

/// Rewrites every `batch_norm` whose scale is trained as `batch_norm_train` (one of frozen
/// parameters — a distillation teacher's — keeps normalising with its running statistics);
/// returns (running buffer, next value) pairs.
fn train_mode_bn(g: &mut Graph) -> Result<Vec<(ValueId, ValueId)>, IrError> {
    let mut running = vec![];
    for i in 0..g.nodes.len() {
        let Op::BatchNorm(BatchNorm { eps, momentum }) = g.nodes[i].op else { continue };
        if g.value(g.nodes[i].inputs[1]).def != ValueDef::Param(ParamKind::Weight) {
            continue;
        }
        let y = g.value(g.nodes[i].outputs[0]).name.clone();
        let names: Vec<String> =
            ["mean", "invstd", "running_mean.next", "running_var.next"].iter().map(|s| format!("{y}.{s}")).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs = g.replace_op(slimc_ir::NodeId(i), Op::BatchNormTrain(BatchNorm { eps, momentum }), &refs)?;
        let (rm, rv) = (g.nodes[i].inputs[3], g.nodes[i].inputs[4]);
        running.push((rm, outs[3]));
        running.push((rv, outs[4]));
    }
    Ok(running)
}

/// Adds the backward program of `g` to `model`: for each (value, gradient) seed pair, the
/// gradient of some scalar with respect to that value is given; returns the gradient of the same
/// scalar with respect to each of `wrt` (None where it does not depend on it).
pub fn differentiate(
    model: &mut Model,
    seeds: &[(ValueId, ValueId)],
    wrt: &[ValueId],
) -> Result<Vec<Option<ValueId>>, IrError> {
    let mut ad = Builder { model, grads: HashMap::new(), minus_one: None };
    let g = &ad.model.graph;
    let mut needs = vec![false; g.values.len()];
    for &w in wrt {
        needs[w.0] = true;
    }
    let forward = g.nodes.len();
    for n in &g.nodes {
        if n.inputs.iter().any(|v| needs[v.0]) {
            for &o in &n.outputs {
                needs[o.0] = true;
            }
        }
    }
    for &(v, d) in seeds {
        ad.accumulate(v, d)?;
    }
    for i in (0..forward).rev() {
        let node = ad.model.graph.nodes[i].clone();
        let dys: Vec<Option<ValueId>> = node.outputs.iter().map(|o| ad.grads.get(o).copied()).collect();
        if dys.iter().all(|d| d.is_none()) || !node.inputs.iter().any(|v| needs[v.0]) {
            continue;
        }
        let dxs = ad.vjp(&node, &dys, &needs)?;
        for (&x, dx) in node.inputs.iter().zip(dxs) {
            if let (true, Some(dx)) = (needs[x.0], dx) {
                ad.accumulate(x, dx)?;
            }
        }
    }
    Ok(wrt.iter().map(|w| ad.grads.get(w).copied()).collect())
}

struct Builder<'a> {
    model: &'a mut Model,
    grads: HashMap<ValueId, ValueId>,
    minus_one: Option<ValueId>,
}

impl Builder<'_> {
    fn g(&mut self) -> &mut Graph {
        &mut self.model.graph
    }

    /// Adds a one-result node named after the value whose gradient it contributes to.
    fn node(&mut self, op: Op, inputs: &[ValueId], of: ValueId, scope: &str) -> Result<ValueId, IrError> {
        let name = self.model.graph.fresh_name(&grad_name(&self.model.graph.value(of).name));
        self.g().add1(op, inputs, &name, scope)
    }

    fn accumulate(&mut self, v: ValueId, d: ValueId) -> Result<(), IrError> {
        let sum = match self.grads.get(&v) {
            None => d,
            Some(&prev) => {
                let scope = self.scope_of(v);
                self.node(Op::Binary(Binary::Add), &[prev, d], v, &scope)?
            }
        };
        self.grads.insert(v, sum);
        Ok(())
    }

    fn scope_of(&self, v: ValueId) -> String {
        let g = &self.model.graph;
        match g.value(v).def {
            ValueDef::Node(n, _) => g.nodes[n.0].scope.clone(),
            _ => String::new(),
        }
    }

    /// `d` summed to the shape of `like` (identity when the shapes already agree).
    fn sum_to(&mut self, d: ValueId, like: ValueId, scope: &str) -> Result<ValueId, IrError> {
        if self.model.graph.ty(d) == self.model.graph.ty(like) {
            return Ok(d);
        }
        self.node(Op::SumTo, &[d, like], like, scope)
    }

    fn negate(&mut self, d: ValueId, of: ValueId, scope: &str) -> Result<ValueId, IrError> {
        let m = match self.minus_one {
            Some(m) => m,
            None => {
                let name = self.g().fresh_name("autodiff.minus_one");
                self.model.tensors.insert(name.clone(), Tensor::scalar(-1.0));
                let m = self.g().add_param(&name, TensorType::f32(&[]), ParamKind::Const);
                self.minus_one = Some(m);
                m
            }
        };
        self.node(Op::Binary(Binary::Mul), &[d, m], of, scope)
    }

    /// The vector-Jacobian product of one node: the gradient of each input given the gradients of
    /// its outputs (None for outputs nothing differentiable reads).
    fn vjp(
        &mut self,
        n: &slimc_ir::Node,
        dys: &[Option<ValueId>],
        needs: &[bool],
    ) -> Result<Vec<Option<ValueId>>, IrError> {
        let s = n.scope.as_str();
        let x = n.inputs[0];
        let dy = || dys[0].expect("single-result ops have their gradient");
        let want = |i: usize| n.inputs.get(i).is_some_and(|v| needs[v.0]);
        let mut out = vec![None; n.inputs.len()];
        match &n.op {
            Op::Conv2d(c) => {
                let w = n.inputs[1];
                if want(0) {
                    out[0] = Some(self.node(Op::Conv2dGradInput(c.clone()), &[dy(), w, x], x, s)?);
                }
                if want(1) {
                    out[1] = Some(self.node(Op::Conv2dGradWeight(c.clone()), &[dy(), x, w], w, s)?);
                }
                if want(2) {
                    let b = n.inputs[2];
                    let c = self.model.graph.ty(b).shape[0].clone();
                    let cc = match c {
                        Dim::Fixed(c) => c,
                        Dim::Sym(_) => return Err(IrError::Invalid("conv2d bias with unknown size".into())),
                    };
                    let col = Op::Reshape(Reshape {
                        shape: vec![ReshapeDim::Fixed(cc), ReshapeDim::Fixed(1), ReshapeDim::Fixed(1)],
                    });
                    let bcol = self.node(col, &[b], b, s)?;
                    let summed = self.node(Op::SumTo, &[dy(), bcol], b, s)?;
                    out[2] = Some(self.node(
                        Op::Reshape(Reshape { shape: vec![ReshapeDim::Fixed(cc)] }),
                        &[summed],
                        b,
                        s,
                    )?);
                }
            }
            Op::BatchNormTrain(_) => {
                let (gamma, beta) = (n.inputs[1], n.inputs[2]);
                let names: Vec<String> = [x, gamma, beta]
                    .iter()
                    .map(|&v| self.model.graph.fresh_name(&grad_name(&self.model.graph.value(v).name)))
                    .collect();
                let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                let r =
                    self.g().add_node(Op::BatchNormGrad, &[dy(), x, gamma, n.outputs[1], n.outputs[2]], &refs, s)?;
                out[0] = Some(r[0]);
                out[1] = Some(r[1]);
                out[2] = Some(r[2]);
            }
            Op::Unary(Unary::Silu) => out[0] = Some(self.node(Op::UnaryGrad(UnaryGrad::Silu), &[dy(), x], x, s)?),
            Op::Unary(Unary::Sigmoid) => {
                out[0] = Some(self.node(Op::UnaryGrad(UnaryGrad::Sigmoid), &[dy(), n.outputs[0]], x, s)?)
            }
            Op::Softmax(a) => out[0] = Some(self.node(Op::SoftmaxGrad(a.clone()), &[dy(), n.outputs[0]], x, s)?),
            Op::Binary(op @ (Binary::Add | Binary::Sub)) => {
                let b = n.inputs[1];
                if want(0) {
                    out[0] = Some(self.sum_to(dy(), x, s)?);
                }
                if want(1) {
                    let d = self.sum_to(dy(), b, s)?;
                    out[1] = Some(if *op == Binary::Sub { self.negate(d, b, s)? } else { d });
                }
            }
            Op::Binary(Binary::Mul) => {
                let b = n.inputs[1];
                if want(0) {
                    let p = self.node(Op::Binary(Binary::Mul), &[dy(), b], x, s)?;
                    out[0] = Some(self.sum_to(p, x, s)?);
                }
                if want(1) {
                    let p = self.node(Op::Binary(Binary::Mul), &[dy(), x], b, s)?;
                    out[1] = Some(self.sum_to(p, b, s)?);
                }
            }
            Op::Binary(Binary::Div) => {
                let b = n.inputs[1];
                let q = self.node(Op::Binary(Binary::Div), &[dy(), b], x, s)?;
                if want(0) {
                    out[0] = Some(self.sum_to(q, x, s)?);
                }
                if want(1) {
                    let p = self.node(Op::Binary(Binary::Mul), &[q, n.outputs[0]], b, s)?;
                    let p = self.sum_to(p, b, s)?;
                    out[1] = Some(self.negate(p, b, s)?);
                }
            }
            Op::Concat(Axis { axis }) => {
                let sizes: Vec<usize> = n
                    .inputs
                    .iter()
                    .map(|&v| self.model.graph.ty(v).shape[*axis].fixed().expect("concat axes are fixed"))
                    .collect();
                let names: Vec<String> = n
                    .inputs
                    .iter()
                    .map(|&v| self.model.graph.fresh_name(&grad_name(&self.model.graph.value(v).name)))
                    .collect();
                let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                let parts = self.g().add_node(Op::Split(Split { axis: *axis, sizes }), &[dy()], &refs, s)?;
                out = parts.into_iter().map(Some).collect();
            }
            Op::Split(Split { axis, sizes }) => {
                if dys.iter().all(|d| d.is_some()) {
                    let parts: Vec<ValueId> = dys.iter().map(|d| d.expect("checked")).collect();
                    out[0] = Some(self.node(Op::Concat(Axis { axis: *axis }), &parts, x, s)?);
                } else {
                    let mut start = 0;
                    for (d, &k) in dys.iter().zip(sizes) {
                        if let Some(d) = *d {
                            let op = Op::SliceGrad(Slice {
                                axes: vec![*axis],
                                starts: vec![start as i64],
                                ends: vec![(start + k) as i64],
                                steps: vec![1],
                            });
                            let piece = self.node(op, &[d, x], x, s)?;
                            out[0] = Some(match out[0] {
                                None => piece,
                                Some(prev) => self.node(Op::Binary(Binary::Add), &[prev, piece], x, s)?,
                            });
                        }
                        start += k;
                    }
                }
            }
            Op::Slice(a) => out[0] = Some(self.node(Op::SliceGrad(a.clone()), &[dy(), x], x, s)?),
            Op::MaxPool2d(p) => out[0] = Some(self.node(Op::MaxPool2dGrad(p.clone()), &[dy(), x], x, s)?),
            Op::UpsampleNearest(u) => out[0] = Some(self.node(Op::UpsampleNearestGrad(u.clone()), &[dy()], x, s)?),
            Op::Reshape(_) => {
                let rank = self.model.graph.ty(x).rank();
                let shape = (0..rank).map(|axis| ReshapeDim::Of { input: 1, axis }).collect();
                out[0] = Some(self.node(Op::Reshape(Reshape { shape }), &[dy(), x], x, s)?);
            }
            Op::Transpose(Transpose { perm }) => {
                let mut inv = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                out[0] = Some(self.node(Op::Transpose(Transpose { perm: inv }), &[dy()], x, s)?);
            }
            Op::MatMul => {
                let b = n.inputs[1];
                let swap = |r: usize| {
                    let mut p: Vec<usize> = (0..r).collect();
                    p.swap(r - 2, r - 1);
                    Op::Transpose(Transpose { perm: p })
                };
                if want(0) {
                    let bt = self.node(swap(self.model.graph.ty(b).rank()), &[b], b, s)?;
                    let p = self.node(Op::MatMul, &[dy(), bt], x, s)?;
                    out[0] = Some(self.sum_to(p, x, s)?);
                }
                if want(1) {
                    let at = self.node(swap(self.model.graph.ty(x).rank()), &[x], x, s)?;
                    let p = self.node(Op::MatMul, &[at, dy()], b, s)?;
                    out[1] = Some(self.sum_to(p, b, s)?);
                }
            }
            // Anchor positions depend only on the maps' shapes.
            Op::Anchors(_) => {}
            // Inference-mode batch norm is rewritten to its training form before this pass runs;
            // the sign, the gradients, the loss and the optimizer's ops are not differentiated.
            Op::BatchNorm(_) | Op::Unary(Unary::Sign) | Op::UnaryGrad(UnaryGrad::Silu | UnaryGrad::Sigmoid) => {
                return Err(no_rule(&n.op, s))
            }
            Op::Conv2dGradInput(_) => return Err(no_rule(&n.op, s)),
            Op::Conv2dGradWeight(_) | Op::BatchNormGrad | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) => {
                return Err(no_rule(&n.op, s))
            }
            Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) | Op::SumTo | Op::DetectLoss(_) | Op::DetectLossGrad(_) => {
                return Err(no_rule(&n.op, s))
            }
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => return Err(no_rule(&n.op, s)),
            Op::Accumulate | Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => {
                return Err(no_rule(&n.op, s))
            }
            Op::AllReduce | Op::Broadcast(_) => return Err(no_rule(&n.op, s)),
        }
        Ok(out)
    }
}

/// The error for an op the pass meets but does not differentiate.
fn no_rule(op: &Op, scope: &str) -> IrError {
    IrError::Invalid(format!(
        "{} @{scope} has no gradient rule (batch_norm must be in training mode; gradients are not differentiated again)",
        op.name()
    ))
}
