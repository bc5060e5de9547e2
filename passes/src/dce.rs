//! `dce`: dead-code elimination.

use crate::context::PassContext;
use crate::pass::Pass;
use slimc_ir::{IrError, Model};

/// Removes nodes none of whose results reach a graph output, then drops parameters and tensors
/// nothing uses (renumbering the values densely). Invariant: the graph outputs are computed exactly as before.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn summary(&self) -> &'static str {
        "remove nodes whose results are never used, and unused parameters"
    }
    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<bool, IrError> {
        let g = &mut model.graph;
        let mut live = vec![false; g.values.len()];
        for &o in &g.outputs {
            live[o.0] = true;
        }
        let mut keep = vec![false; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| live[o.0]) {
                keep[i] = true;
                for &v in &n.inputs {
                    live[v.0] = true;
                }
            }
        }
        let before = (g.nodes.len(), model.tensors.len());
        let mut i = 0;
        g.nodes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        model.prune_tensors();
        Ok(before != (model.graph.nodes.len(), model.tensors.len()))
    }
}
