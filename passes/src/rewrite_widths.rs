//! `rewrite-widths`: slice every weight and width attribute to the kept channels.

use crate::context::{PassContext, PruneReport};
use crate::select_channels::bn_name;
use crate::Pass;
use slimc_ir::{IrError, Model, Op, Tensor, TensorType, ValueId};
use std::collections::BTreeMap;

/// Keeps the rows of `t` along `axis` where `keep` is true.
fn slice_axis(t: &Tensor, axis: usize, keep: &[bool]) -> Result<Tensor, IrError> {
    let data = t.f32s()?;
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product();
    let n = t.shape[axis];
    let mut out = Vec::with_capacity(data.len());
    for o in 0..outer {
        for (c, &k) in keep.iter().enumerate().take(n) {
            if k {
                out.extend_from_slice(&data[(o * n + c) * inner..(o * n + c + 1) * inner]);
            }
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = keep.iter().filter(|k| **k).count();
    Tensor::from_f32(shape, out)
}

/// Narrows the graph to `propagate-masks`' masks (computed first if absent): conv weights lose
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
    fn run(&self, model: &mut Model) -> Result<bool, IrError> {
        self.run_in(model, &mut PassContext::default())
    }
    fn run_in(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool, IrError> {
        if cx.masks.is_none() {
            crate::PropagateMasks.run_in(model, cx)?;
        }
        let masks = cx.masks.take().expect("propagate-masks ran");
        if masks.values().all(|m| m.iter().all(|k| *k)) {
            cx.groups = None;
            cx.selection = None;
            return Ok(false);
        }
        let g = &model.graph;
        let mut report = PruneReport::default();
        for (i, n) in g.nodes.iter().enumerate() {
            if let (Op::BatchNorm { .. }, Some(m)) = (&n.op, masks.get(&n.outputs[0])) {
                let name = bn_name(g, slimc_ir::NodeId(i));
                let kept = m.iter().filter(|k| **k).count();
                report.layers.push((name.clone(), m.len(), kept));
                report.removed.extend(m.iter().enumerate().filter(|(_, k)| !**k).map(|(c, _)| (name.clone(), c)));
            }
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
                    let depthwise = c.groups > 1 && g.ty(n.inputs[1]).shape[1].fixed() == Some(1);
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
                Op::BatchNorm { .. } => {
                    if let Some(m) = &out {
                        for &p in &n.inputs[1..] {
                            cuts.entry(g.value(p).name.clone()).or_default().push((0, m.clone()));
                        }
                    }
                }
                Op::Split { axis: 1, sizes } => {
                    if let Some(m) = all(n.inputs[0]) {
                        let mut off = 0;
                        let sizes = sizes
                            .iter()
                            .map(|&k| {
                                off += k;
                                m[off - k..off].iter().filter(|x| **x).count()
                            })
                            .collect();
                        new_ops.push((i, Op::Split { axis: 1, sizes }));
                    }
                }
                _ => {}
            }
        }
        for (i, op) in new_ops {
            model.graph.nodes[i].op = op;
        }
        for (name, list) in cuts {
            let mut by_axis: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
            for (axis, m) in list {
                if let Some(prev) = by_axis.insert(axis, m.clone()) {
                    if prev != m {
                        return Err(IrError::Invalid(format!("{name} is shared by layers pruned differently")));
                    }
                }
            }
            let mut t = model.tensors.get(&name).ok_or_else(|| IrError::Invalid(format!("no tensor {name}")))?.clone();
            for (axis, m) in by_axis {
                t = slice_axis(&t, axis, &m)?;
            }
            let v = model.graph.find(&name).expect("a parameter of the graph");
            model.graph.values[v.0].ty = TensorType { dtype: t.dtype(), shape: t.ty().shape };
            model.tensors.insert(name, t);
        }
        let inputs: Vec<TensorType> = model.graph.inputs.iter().map(|&v| model.graph.ty(v).clone()).collect();
        model.graph.set_input_types(&inputs)?;
        model.training_state.clear();
        cx.groups = None;
        cx.selection = None;
        cx.report = Some(report);
        Ok(true)
    }
}
