//! What running a graph in node order needs: the peak bytes of the values it computes, from
//! their liveness (a result lives from its node to its last reader; graph outputs to the end).

use crate::graph::{Graph, ValueDef};
use crate::tensor::{checked_numel, DType, TensorType};

/// For each value, the index of the last node that reads it (None: no node does).
pub fn last_uses(g: &Graph) -> Vec<Option<usize>> {
    let mut last = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            last[v.0] = Some(i);
        }
    }
    last
}

/// Peak bytes of the node results alive at once when `g` runs in order with every value typed
/// by `types` (from [`crate::infer_all`]); inputs and parameters, which exist beforehand, are not
/// counted. None when a size overflows.
pub fn peak_bytes(g: &Graph, types: &[TensorType]) -> Option<u64> {
    let bytes = |t: &TensorType| -> Option<u64> {
        let dims: Vec<usize> = t.shape.iter().map(|d| d.fixed().unwrap_or(1)).collect();
        let width = match t.dtype {
            DType::F32 => 4,
            DType::I64 => 8,
        };
        (checked_numel(&dims)? as u64).checked_mul(width)
    };
    let mut last = last_uses(g);
    for &o in &g.outputs {
        last[o.0] = Some(usize::MAX);
    }
    let (mut live, mut peak) = (0u64, 0u64);
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            live = live.checked_add(bytes(types.get(o.0)?)?)?;
        }
        peak = peak.max(live);
        let mut touched: Vec<_> = n.inputs.iter().chain(&n.outputs).copied().collect();
        touched.sort_by_key(|v| v.0);
        touched.dedup();
        for v in touched {
            if matches!(g.value(v).def, ValueDef::Node(..)) && last[v.0].is_none_or(|l| l == i) {
                live = live.saturating_sub(bytes(types.get(v.0)?)?);
            }
        }
    }
    Some(peak)
}
