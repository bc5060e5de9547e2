//! The seed recipe's policy (YOLOv11-Prune): the BNs it never penalises nor prunes, derived
//! from the graph's structure alone, so a graph with any names gets the same answer.

use crate::group_channels::is_depthwise;
use slimc_ir::{Binary, Unary};
use slimc_ir::{Graph, Node, NodeId, Op, ValueDef, ValueId};
use std::collections::BTreeSet;

/// The layer name of a BN node: its gamma's name without `.weight` (e.g. `model.2.cv1.bn`).
pub fn bn_name(g: &Graph, n: NodeId) -> String {
    let w = &g.value(g.nodes[n.0].inputs[1]).name;
    w.strip_suffix(".weight").unwrap_or(w).to_string()
}

fn is_bn(n: &Node) -> bool {
    matches!(n.op, Op::BatchNorm(_) | Op::BatchNormTrain(_))
}

/// An add of two computed feature maps of the same type: a residual connection.
fn is_residual_add(g: &Graph, n: &Node) -> bool {
    let computed = |v: ValueId| matches!(g.value(v).def, ValueDef::Node(..) | ValueDef::Input);
    matches!(n.op, Op::Binary(Binary::Add))
        && n.inputs.len() == 2
        && n.inputs.iter().all(|&v| computed(v) && g.ty(v).rank() == 4)
        && g.ty(n.inputs[0]) == g.ty(n.inputs[1])
}

/// The BN nodes whose output reaches `v` through ops for which `through` holds (the walk
/// stops at a BN, and at any other op).
fn bns_reaching(g: &Graph, v: ValueId, through: &dyn Fn(&Node) -> bool) -> Vec<NodeId> {
    let (mut out, mut stack, mut seen) = (vec![], vec![v], BTreeSet::new());
    while let Some(v) = stack.pop() {
        let Some(p) = g.producer(v) else { continue };
        if !seen.insert(p) {
            continue;
        }
        let n = &g.nodes[p.0];
        if is_bn(n) {
            out.push(p);
        } else if through(n) {
            stack.extend(n.inputs.iter().copied());
        }
    }
    out
}

/// The BNs the seed recipe (YOLOv11-Prune, its §1.3) never penalises nor prunes, by structure:
/// - **residual adds**: the BNs that reach either operand of a residual add through SiLU,
///   split and other residual adds: a bottleneck's last BN and the BN of the block input it
///   skips over (C3k2/C3k `cv1`; in C2PSA its `cv1`, `attn.proj` and `ffn.1`);
/// - **attention**: the BNs that reach a reshape, transpose, matmul or softmax through SiLU
///   (PSA's `qkv`);
/// - **depthwise convs**: the BN of a depthwise conv, the BNs whose output a depthwise conv
///   reads through SiLU (the necks' C3k2 outputs before Detect), and the BN of a pointwise conv
///   that reads a depthwise conv through its BN and SiLU (Detect's class branch).
pub fn seed_unprunable(g: &Graph) -> BTreeSet<String> {
    let silu = |n: &Node| matches!(n.op, Op::Unary(Unary::Silu));
    let residual_path = |n: &Node| matches!(n.op, Op::Unary(Unary::Silu) | Op::Split(_)) || is_residual_add(g, n);
    let users = g.users();
    let mut out = BTreeSet::new();
    for n in &g.nodes {
        let mut found = vec![];
        if is_residual_add(g, n) {
            for &x in &n.inputs {
                found.extend(bns_reaching(g, x, &residual_path));
            }
        }
        if matches!(n.op, Op::Reshape(_) | Op::Transpose(_) | Op::MatMul | Op::Softmax(_)) {
            for &x in &n.inputs {
                found.extend(bns_reaching(g, x, &silu));
            }
        }
        if is_depthwise(g, n) {
            found.extend(bns_reaching(g, n.inputs[0], &silu));
        }
        if is_bn(n) && g.producer(n.inputs[0]).is_some_and(|p| is_depthwise(g, &g.nodes[p.0])) {
            found.extend(g.producer(n.outputs[0]));
        }
        if matches!(n.op, Op::Conv2d(_)) && !is_depthwise(g, n) {
            let reads_depthwise = bns_reaching(g, n.inputs[0], &silu)
                .iter()
                .any(|b| g.producer(g.nodes[b.0].inputs[0]).is_some_and(|p| is_depthwise(g, &g.nodes[p.0])));
            if reads_depthwise {
                found.extend(users[n.outputs[0].0].iter().copied().filter(|u| is_bn(&g.nodes[u.0])));
            }
        }
        out.extend(found.into_iter().map(|b| bn_name(g, b)));
    }
    out
}
