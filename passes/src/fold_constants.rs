//! `fold-constants`: evaluate nodes whose results are known before run time.

use crate::context::PassContext;
use crate::pass::Pass;
use slimc_ir::{
    eval::{eval, foldable},
    IrError, Model, Op, ParamKind, Tensor, ValueDef,
};

/// Replaces every node whose operands are all constants (or, for `anchors`, whose operands'
/// spatial sizes are known; the batch does not matter) by constant parameters holding its results, computed by the IR's
/// reference semantics ([`slimc_ir::eval`]). Weights and buffers are never folded, so training
/// still sees them. Invariant: every graph output is computed exactly as before.
pub struct FoldConstants;

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }
    fn summary(&self) -> &'static str {
        "evaluate nodes whose operands are constants (and shape-only ops on static shapes)"
    }
    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<bool, IrError> {
        let mut changed = false;
        let mut i = 0;
        while i < model.graph.nodes.len() {
            let node = &model.graph.nodes[i];
            let g = &model.graph;
            let inputs: Option<Vec<Tensor>> = if let Op::Anchors(_) = node.op {
                node.inputs
                    .iter()
                    .map(|&v| {
                        let t = g.ty(v);
                        let spatial_known = t.shape.iter().skip(1).all(|d| d.fixed().is_some());
                        spatial_known.then(|| Tensor::full(&t.with_symbols(1).fixed_shape().unwrap_or_default(), 0.0))
                    })
                    .collect()
            } else {
                node.inputs
                    .iter()
                    .map(|&v| {
                        let val = g.value(v);
                        (val.def == ValueDef::Param(ParamKind::Const)).then(|| model.tensors[&val.name].clone())
                    })
                    .collect()
            };
            let Some(inputs) = inputs else {
                i += 1;
                continue;
            };
            let refs: Vec<&Tensor> = inputs.iter().collect();
            if !foldable(&node.op) {
                i += 1;
                continue;
            }
            let results = eval(&node.op, &refs)?;
            let node = model.graph.nodes.remove(i);
            for (&o, t) in node.outputs.iter().zip(results) {
                let name = model.graph.value(o).name.clone();
                model.graph.values[o.0].def = ValueDef::Param(ParamKind::Const);
                model.graph.params.push(o);
                model.tensors.insert(name, t);
            }
            // Results of later nodes point at their node index: renumber.
            model.graph.compact();
            changed = true;
        }
        if changed {
            model.prune_tensors();
        }
        Ok(changed)
    }
}
