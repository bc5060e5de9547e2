//! `rewrite-widths`: slice every weight and width attribute to the kept channels.

use crate::analysis::Analysis;
use crate::context::{PassContext, PruneReport};
use crate::group_channels::is_depthwise;
use crate::pass::Pass;
use crate::seed_policy::bn_name;
use rayon::prelude::*;
use slimc_ir::Split;
use slimc_ir::{IrError, Model, Op, Tensor, TensorType, ValueId};
use std::collections::{BTreeMap, HashMap};

/// Keeps, of `t`, the entries of axis 0 where `rows` is true and of axis 1 where `cols` is true
/// (None: all), in place: kept blocks move toward the front and the data is truncated, so no
/// large buffer is allocated or freed.
fn slice01(t: &mut Tensor, rows: Option<&[bool]>, cols: Option<&[bool]>) -> Result<(), IrError> {
    let n0 = t.shape[0];
    let n1 = t.shape.get(1).copied().unwrap_or(1);
    let inner: usize = t.shape.iter().skip(2).product();
    let keep = |m: Option<&[bool]>, n: usize| -> Vec<usize> {
        m.map_or_else(|| (0..n).collect(), |m| (0..n).filter(|&i| m[i]).collect())
    };
    let (r, c) = (keep(rows, n0), keep(cols, n1));
    // Kept columns as runs (first, count): one move per run rather than per column.
    let mut runs: Vec<(usize, usize)> = vec![];
    for &j in &c {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == j => *count += 1,
            _ => runs.push((j, 1)),
        }
    }
    let data = t.f32s_mut()?;
    // Moves `n` values from `from` down to `at` (at <= from, so a forward copy is safe); short
    // moves as a loop, which beats a memmove call for a 3x3 kernel's nine values.
    let mut move_down = |from: usize, at: usize, n: usize| {
        if n >= 64 {
            data.copy_within(from..from + n, at);
        } else {
            for e in 0..n {
                data[at + e] = data[from + e];
            }
        }
    };
    let mut at = 0;
    for &i in &r {
        for &(j, count) in &runs {
            let n = count * inner;
            move_down((i * n1 + j) * inner, at, n);
            at += n;
        }
    }
    data.truncate(at);
    t.shape[0] = r.len();
    if t.shape.len() > 1 {
        t.shape[1] = c.len();
    }
    Ok(())
}

/// Narrows the graph to the `propagate-masks` analysis: conv weights lose
/// the rows of removed output channels and the columns of removed input channels (depthwise
/// convs their groups), conv biases and BN tensors their entries, split sizes shrink; every type
/// is inferred again and the training state is dropped. Invariant: the rewritten graph computes
/// what the original computes with the removed channels' BN gamma and beta set to zero.
pub struct RewriteWidths;

impl Pass for RewriteWidths {
    fn name(&self) -> &'static str {
        "rewrite-widths"
    }
    fn summary(&self) -> &'static str {
        "slice weights, BN tensors and split sizes to the kept channels"
    }
    fn requires(&self) -> &'static [Analysis] {
        &[Analysis::Masks]
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool, IrError> {
        let masks = cx.masks.as_ref().expect("the manager computes required analyses");
        let selection = cx.selection.clone().expect("the manager computes required analyses");
        let g = &model.graph;
        let mut report = PruneReport { selection, ..Default::default() };
        for (i, n) in g.nodes.iter().enumerate() {
            if let (Op::BatchNorm(_), Some(m)) = (&n.op, masks.get(&n.outputs[0])) {
                let name = bn_name(g, slimc_ir::NodeId(i));
                let kept = m.iter().filter(|k| **k).count();
                report.layers.push((name.clone(), m.len(), kept));
                report.removed.extend(m.iter().enumerate().filter(|(_, k)| !**k).map(|(c, _)| (name.clone(), c)));
            }
        }
        if masks.values().all(|m| m.iter().all(|k| *k)) {
            cx.report = Some(report);
            return Ok(false);
        }
        let all = |v: ValueId| masks.get(&v).cloned();
        // (param, axis, mask) slices, checked for consistency when a tensor is used twice.
        let mut cuts: BTreeMap<String, Vec<(usize, Vec<bool>)>> = BTreeMap::new();
        let mut new_ops = vec![];
        for (i, n) in g.nodes.iter().enumerate() {
            let out = all(n.outputs[0]);
            match &n.op {
                Op::Conv2d(c) => {
                    let w = g.value(n.inputs[1]).name.clone();
                    let depthwise = is_depthwise(g, n);
                    let mut list = vec![];
                    if let Some(m) = &out {
                        list.push((0, m.clone()));
                        if let Some(&b) = n.inputs.get(2) {
                            cuts.entry(g.value(b).name.clone()).or_default().push((0, m.clone()));
                        }
                        if depthwise {
                            let mut c2 = c.clone();
                            c2.groups = m.iter().filter(|k| **k).count();
                            new_ops.push((i, Op::Conv2d(c2)));
                        }
                    }
                    if let (Some(m), false) = (all(n.inputs[0]), depthwise) {
                        if c.groups != 1 && m.iter().any(|k| !k) {
                            return Err(IrError::Invalid(format!(
                                "{}: cannot narrow the input of a grouped conv",
                                n.scope
                            )));
                        }
                        list.push((1, m));
                    }
                    cuts.entry(w).or_default().extend(list);
                }
                Op::BatchNorm(_) => {
                    if let Some(m) = &out {
                        for &p in &n.inputs[1..] {
                            cuts.entry(g.value(p).name.clone()).or_default().push((0, m.clone()));
                        }
                    }
                }
                Op::Split(Split { axis: 1, sizes }) => {
                    if let Some(m) = all(n.inputs[0]) {
                        let mut off = 0;
                        let sizes = sizes
                            .iter()
                            .map(|&k| {
                                off += k;
                                m[off - k..off].iter().filter(|x| **x).count()
                            })
                            .collect();
                        new_ops.push((i, Op::Split(Split { axis: 1, sizes })));
                    }
                }
                // A split along another axis keeps its sizes.
                Op::Split(_) => {}
                // No attribute carries a channel count: the widths come from the operands (a
                // slice, reshape or transpose over channels freezes them in group-channels).
                Op::Unary(_) | Op::Binary(_) | Op::Concat(_) | Op::Slice(_) | Op::MaxPool2d(_) => {}
                Op::UpsampleNearest(_) | Op::Reshape(_) | Op::Transpose(_) | Op::MatMul | Op::Softmax(_) => {}
                Op::Anchors(_) | Op::SumTo | Op::AllReduce | Op::Broadcast(_) => {}
                // Training programs are not pruned (group-channels refuses them).
                Op::UnaryGrad(_) | Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) => {}
                Op::BatchNormGrad | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) => {}
                Op::SliceGrad(_) | Op::DetectLoss(_) | Op::DetectLossGrad(_) | Op::Accumulate | Op::GlobalNorm => {}
                Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate | Op::DistillLoss(_) | Op::DistillLossGrad(_) => {
                }
            }
        }
        for (i, op) in new_ops {
            model.graph.nodes[i].op = op;
        }
        let mut plan: BTreeMap<String, [Option<Vec<bool>>; 2]> = BTreeMap::new();
        for (name, list) in cuts {
            if !model.tensors.contains_key(&name) {
                return Err(IrError::Invalid(format!("no tensor {name}")));
            }
            let by_axis = plan.entry(name.clone()).or_default();
            for (axis, m) in list {
                match &by_axis[axis] {
                    Some(prev) if *prev != m => {
                        return Err(IrError::Invalid(format!("{name} is shared by layers pruned differently")))
                    }
                    _ => by_axis[axis] = Some(m),
                }
            }
        }
        let jobs: Vec<(&String, &mut Tensor)> =
            model.tensors.iter_mut().filter(|(n, _)| plan.contains_key(*n)).collect();
        jobs.into_par_iter()
            .map(|(name, t)| {
                let [rows, cols] = &plan[name];
                slice01(t, rows.as_deref(), cols.as_deref())
            })
            .collect::<Result<(), IrError>>()?;
        let index: HashMap<&str, ValueId> =
            model.graph.params.iter().map(|&p| (model.graph.value(p).name.as_str(), p)).collect();
        let ids: Vec<ValueId> = plan.keys().map(|n| index[n.as_str()]).collect();
        for (name, v) in plan.keys().zip(ids) {
            model.graph.values[v.0].ty = model.tensors[name].ty();
        }
        let inputs: Vec<TensorType> = model.graph.inputs.iter().map(|&v| model.graph.ty(v).clone()).collect();
        model.graph.set_input_types(&inputs)?;
        model.training_state.clear();
        cx.report = Some(report);
        Ok(true)
    }
}
