//! Which nodes a backend runs together: a convolution with the inference batch norm and SiLU
//! after it, and (where the backend has the kernel) with the concatenation before it.

use slimc_ir::{Axis, Unary};
use slimc_ir::{DType, Graph, Op, ValueDef, ValueId};
use std::collections::HashMap;

/// What a convolution does beyond itself: it may read the parts of the concatenation that
/// made its input (a pointwise convolution, the concatenation node skipped), and apply an
/// inference batch norm (the node, whose parameters it reads) and SiLU to its result, ending in
/// the value `out`.
#[derive(Clone, Copy, Debug)]
pub struct Fused {
    /// The concatenation node whose parts the convolution reads.
    pub concat: Option<usize>,
    /// The batch-norm node applied as the epilogue.
    pub bn: Option<usize>,
    /// Whether SiLU follows.
    pub silu: bool,
    /// The value the fused convolution produces.
    pub out: ValueId,
}

/// Finds the fusions of inference graphs, by convolution node:
/// - when `read_concat` (the backend has the kernel for it), a `concat` along channels whose result only a pointwise, ungrouped, unstrided `conv2d`
///   reads: the convolution multiplies each part by its columns of the weight and sums, and the
///   concatenation never runs;
/// - a `batch_norm` with parameter statistics as the only reader of a convolution's result, and
///   a `silu` as the only reader of that (or of the convolution's own result), none of them a
///   graph output: they run as the convolution's epilogue, in place on its result.
///
/// Also returns, for every node, whether another node does its work.
pub fn fusions(g: &Graph, read_concat: bool) -> (HashMap<usize, Fused>, Vec<bool>) {
    let users = g.users();
    let outputs: std::collections::HashSet<ValueId> = g.outputs.iter().copied().collect();
    // The single node reading `v`, if `v` is not returned and has exactly one reader.
    let only = |v: ValueId| match users[v.0].as_slice() {
        [u] if !outputs.contains(&v) && g.nodes[u.0].inputs.iter().filter(|&&x| x == v).count() == 1 => Some(u.0),
        _ => None,
    };
    let (mut fused, mut absorbed) = (HashMap::new(), vec![false; g.nodes.len()]);
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::Conv2d(c) = &n.op else { continue };
        let mut e = Fused { concat: None, bn: None, silu: false, out: n.outputs[0] };
        let kernel = g.ty(n.inputs[1]).fixed_shape().and_then(|s| Some([*s.get(2)?, *s.get(3)?]));
        let pointwise = kernel.is_some_and(|k| c.pointwise(k)) && c.groups == 1;
        if let ValueDef::Node(k, _) = g.value(n.inputs[0]).def {
            let cat = &g.nodes[k.0];
            let parts_f32 = cat.inputs.iter().all(|&v| g.ty(v).dtype == DType::F32 && g.ty(v).rank() == 4);
            if read_concat
                && pointwise
                && matches!(cat.op, Op::Concat(Axis { axis: 1 }))
                && parts_f32
                && only(n.inputs[0]) == Some(i)
            {
                e.concat = Some(k.0);
                absorbed[k.0] = true;
            }
        }
        if let Some(j) = only(e.out).filter(|&j| matches!(g.nodes[j].op, Op::BatchNorm(_))) {
            // Its statistics must exist when the convolution runs: parameters, not results of
            // nodes that may come later.
            let params = g.nodes[j].inputs[1..].iter().all(|v| matches!(g.value(*v).def, ValueDef::Param(_)));
            if g.nodes[j].inputs[0] == e.out && params {
                (e.bn, e.out) = (Some(j), g.nodes[j].outputs[0]);
                absorbed[j] = true;
            }
        }
        if let Some(k) = only(e.out).filter(|&k| matches!(g.nodes[k].op, Op::Unary(Unary::Silu))) {
            (e.silu, e.out) = (true, g.nodes[k].outputs[0]);
            absorbed[k] = true;
        }
        if e.concat.is_some() || e.bn.is_some() || e.silu {
            fused.insert(i, e);
        }
    }
    (fused, absorbed)
}
