//! The verifier: the structural invariants every pass must keep.

use crate::error::{invalid, Result};
use crate::graph::infer_node_types;
use crate::graph::{Graph, NodeId, ValueDef};
use std::collections::HashSet;

/// Checks that `g` is well formed: unique names, every value defined once and before use
/// (topological order), definitions consistent with the input/parameter lists, and every
/// node's attributes valid and its recorded output types equal to what shape inference (which
/// validates the attributes, [`crate::Op::validate`]) gives; every state update
/// ([`Graph::state_updates`]) typed as its parameter.
pub fn verify(g: &Graph) -> Result<()> {
    let n = g.values.len();
    let mut names = HashSet::new();
    for v in &g.values {
        if !names.insert(v.name.as_str()) {
            return invalid(format!("value name %{} is defined twice", v.name));
        }
        let dims: Vec<usize> = v.ty.shape.iter().map(|d| d.fixed().unwrap_or(1)).collect();
        if crate::tensor::checked_numel(&dims).is_none() {
            return invalid(format!("value %{} of type {} has too many elements", v.name, v.ty));
        }
    }
    let mut defined = vec![false; n];
    for &i in &g.inputs {
        if i.0 >= n || g.values[i.0].def != ValueDef::Input {
            return invalid(format!("graph input #{} is not an input value", i.0));
        }
        defined[i.0] = true;
    }
    for &p in &g.params {
        if p.0 >= n || !matches!(g.values[p.0].def, ValueDef::Param(_)) {
            return invalid(format!("parameter #{} is not a parameter value", p.0));
        }
        defined[p.0] = true;
    }
    for (i, node) in g.nodes.iter().enumerate() {
        let where_ = || {
            format!(
                "node {i} ({}{})",
                node.op.name(),
                if node.scope.is_empty() { String::new() } else { format!(" @{}", node.scope) }
            )
        };
        for &v in &node.inputs {
            if v.0 >= n || !defined[v.0] {
                return invalid(format!("{}: operand #{} is used before it is defined", where_(), v.0));
            }
        }
        if node.outputs.len() != node.op.num_outputs(node.inputs.len()) {
            return invalid(format!(
                "{}: has {} results, the op makes {}",
                where_(),
                node.outputs.len(),
                node.op.num_outputs(node.inputs.len())
            ));
        }
        let types = infer_node_types(g, &node.op, &node.inputs).or_else(|e| invalid(format!("{}: {e}", where_())))?;
        for (k, &o) in node.outputs.iter().enumerate() {
            if o.0 >= n || defined[o.0] {
                return invalid(format!("{}: result #{} is defined twice", where_(), o.0));
            }
            if g.values[o.0].def != ValueDef::Node(NodeId(i), k) {
                return invalid(format!("{}: result %{} does not point back to it", where_(), g.values[o.0].name));
            }
            if g.values[o.0].ty != types[k] {
                return invalid(format!(
                    "{}: result %{} is declared {} but infers to {}",
                    where_(),
                    g.values[o.0].name,
                    g.values[o.0].ty,
                    types[k]
                ));
            }
            defined[o.0] = true;
        }
    }
    if g.outputs.is_empty() {
        return invalid("graph has no outputs");
    }
    for &o in &g.outputs {
        if o.0 >= n || !defined[o.0] {
            return invalid(format!("graph output #{} is not defined", o.0));
        }
    }
    for (i, p) in g.state_updates() {
        let o = g.outputs[i];
        if g.ty(o) != g.ty(p) {
            return invalid(format!(
                "state update %{} is {} but its parameter %{} is {}",
                g.value(o).name,
                g.ty(o),
                g.value(p).name,
                g.ty(p)
            ));
        }
    }
    Ok(())
}
