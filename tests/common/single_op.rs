//! One-op programs, for the kernel suite and the kernel benchmarks.

use slimc_ir::{Graph, Model, Op, TensorType};

/// A program of one `op` node whose operands are the graph's inputs (named `a0`, `a1`, ...)
/// typed like `args`, and whose results are its outputs: the unit kernels are tested and
/// measured on.
pub fn single_op(op: &Op, args: &[TensorType]) -> anyhow::Result<Model> {
    let mut g = Graph::new(op.name());
    let inputs: Vec<_> = args.iter().enumerate().map(|(k, t)| g.add_input(&format!("a{k}"), t.clone())).collect();
    let n = slimc_ir::infer_node_types(&g, op, &inputs)?.len();
    let names: Vec<String> = (0..n).map(|k| format!("r{k}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    g.outputs = g.add_node(op.clone(), &inputs, &names, op.name())?;
    Ok(Model { graph: g, tensors: Default::default(), meta: Default::default(), training_state: vec![] })
}
