//! Memory planning: every value a node computes gets a slot of a reused arena, from liveness (a
//! result lives from its node to its last reader; graph outputs to the end). Two values share a
//! slot only when their lifetimes do not overlap, so a backend that keeps one buffer per slot
//! allocates nothing per op once the buffers have grown to the plan.

use crate::graph::{Graph, ValueDef, ValueId};
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

/// Where each computed value lives and what the arena holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The slot of each value; None for inputs and parameters, which exist beforehand.
    pub slot: Vec<Option<usize>>,
    /// Bytes of each slot: the largest value it holds.
    pub slot_bytes: Vec<u64>,
    /// For each node, the values whose last use it is (freed after it runs, their slots
    /// reusable by later nodes): its operands read for the last time and its results no node
    /// reads and the graph does not return.
    pub frees: Vec<Vec<usize>>,
    /// The most bytes of values alive at once (at most [`Plan::arena_bytes`]).
    pub live_peak: u64,
}

impl Plan {
    /// The arena's size: the sum of the slots.
    pub fn arena_bytes(&self) -> u64 {
        self.slot_bytes.iter().sum()
    }
}

/// Bytes of a value of type `t` (a symbolic dimension counts 1); None on overflow.
pub fn value_bytes(t: &TensorType) -> Option<u64> {
    let dims: Vec<usize> = t.shape.iter().map(|d| d.fixed().unwrap_or(1)).collect();
    let width = match t.dtype {
        DType::F32 => 4,
        DType::I64 => 8,
    };
    (checked_numel(&dims)? as u64).checked_mul(width)
}

/// Plans `g` run in node order with every value typed by `types` (from [`crate::infer_all`]).
/// Each result takes the smallest free slot that holds it, else the largest free slot (grown),
/// else a new one. None when a size overflows.
pub fn plan(g: &Graph, types: &[TensorType]) -> Option<Plan> {
    plan_fused(g, types, &Fusions { in_place: &|_| None, deferred: &|_| None })
}

/// How a backend runs some nodes together with others, for [`plan_fused`].
pub struct Fusions<'a> {
    /// A node that computes its single result in the slot of the operand it names, when it is
    /// that operand's last reader and the two have the same size: the backend overwrites the
    /// operand (an elementwise op, or an op fused into the one that made the operand).
    pub in_place: &'a dyn Fn(usize) -> Option<ValueId>,
    /// A node the backend skips, its results never materialised: the later node named here
    /// reads the skipped node's operands instead (a concatenation read by the convolution
    /// that consumes it), so they live until that node.
    pub deferred: &'a dyn Fn(usize) -> Option<usize>,
}

/// [`plan`] for a backend that fuses nodes as `fusions` says.
pub fn plan_fused(g: &Graph, types: &[TensorType], fusions: &Fusions) -> Option<Plan> {
    let mut last = last_uses(g);
    let mut virtual_value = vec![false; g.values.len()];
    // Operands each node reads for a deferred node, besides its own.
    let mut reads_for: Vec<Vec<ValueId>> = vec![vec![]; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(j) = (fusions.deferred)(i) {
            for &v in &n.inputs {
                last[v.0] = last[v.0].max(Some(j));
            }
            n.outputs.iter().for_each(|o| virtual_value[o.0] = true);
            reads_for.get_mut(j)?.extend(&n.inputs);
        }
    }
    for &o in &g.outputs {
        last[o.0] = Some(usize::MAX);
    }
    let mut p = Plan { slot: vec![None; g.values.len()], slot_bytes: vec![], frees: vec![], live_peak: 0 };
    let mut free: Vec<usize> = vec![];
    let mut live = 0u64;
    for (i, n) in g.nodes.iter().enumerate() {
        // An operand whose slot this node's result takes over: not freed here.
        let mut handed = None;
        if let (Some(v), [o]) = ((fusions.in_place)(i), n.outputs.as_slice()) {
            let same = value_bytes(types.get(v.0)?)? == value_bytes(types.get(o.0)?)?;
            if same && p.slot[v.0].is_some() && last[v.0] == Some(i) && n.inputs.contains(&v) {
                p.slot[o.0] = p.slot[v.0];
                handed = Some(v.0);
            }
        }
        for &o in &n.outputs {
            if handed.is_some() || virtual_value[o.0] {
                break;
            }
            let need = value_bytes(types.get(o.0)?)?;
            live = live.checked_add(need)?;
            let fit =
                free.iter().enumerate().filter(|(_, &s)| p.slot_bytes[s] >= need).min_by_key(|(_, &s)| p.slot_bytes[s]);
            let pick = fit.or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| p.slot_bytes[s])).map(|(k, _)| k);
            let s = match pick {
                Some(k) => free.swap_remove(k),
                None => {
                    p.slot_bytes.push(0);
                    p.slot_bytes.len() - 1
                }
            };
            p.slot_bytes[s] = p.slot_bytes[s].max(need);
            p.slot[o.0] = Some(s);
        }
        p.live_peak = p.live_peak.max(live);
        let mut dying: Vec<usize> = n
            .inputs
            .iter()
            .chain(&n.outputs)
            .chain(&reads_for[i])
            .map(|v| v.0)
            .filter(|&v| matches!(g.values[v].def, ValueDef::Node(..)) && last[v].is_none_or(|l| l == i))
            .filter(|&v| Some(v) != handed && !virtual_value[v])
            .collect();
        dying.sort_unstable();
        dying.dedup();
        for &v in &dying {
            live -= value_bytes(&types[v])?;
            free.push(p.slot[v]?);
        }
        p.frees.push(dying);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_graph;

    #[test]
    fn slots_are_reused_only_between_disjoint_lifetimes() {
        let g = parse_graph(
            "graph g(%x: f32[1,4]) {
  %a: f32[1,4] = silu(%x)
  %b: f32[1,4] = silu(%a)
  %c: f32[1,4] = silu(%b)
  %d: f32[1,4] = add(%c, %b)
  return %d
}",
        )
        .unwrap();
        let types = crate::infer_all(&g, &[TensorType::f32(&[1, 4])]).unwrap();
        let p = plan(&g, &types).unwrap();
        let slot = |name: &str| p.slot[g.values.iter().position(|v| v.name == name).unwrap()].unwrap();
        // b's node reads a, so they differ; a is dead after it, so c takes a's slot; d reads b and
        // c, so it takes a third slot, and as a graph output it is never freed.
        assert_ne!(slot("a"), slot("b"));
        assert_eq!(slot("c"), slot("a"));
        assert!(slot("d") != slot("b") && slot("d") != slot("c"));
        assert_eq!((p.slot_bytes.len(), p.arena_bytes(), p.live_peak), (3, 48, 48));
        let last = |name: &str| g.values.iter().position(|v| v.name == name).unwrap();
        assert_eq!(p.frees[1], vec![last("a")]);
        assert_eq!(p.frees[3], vec![last("b"), last("c")]);
    }

    #[test]
    fn a_deferred_node_keeps_its_operands_alive_until_its_reader() {
        let g = parse_graph(
            "graph g(%x: f32[1,4]) {
  %a: f32[1,4] = silu(%x)
  %b: f32[1,4] = silu(%x)
  %k: f32[1,8] = concat(%a, %b) {axis=1}
  %z: f32[1,4] = silu(%x)
  %d: f32[1,8] = silu(%k)
  %e: f32[1,4] = add(%z, %x)
  return %d, %e
}",
        )
        .unwrap();
        let types = crate::infer_all(&g, &[TensorType::f32(&[1, 4])]).unwrap();
        let id = |name: &str| g.values.iter().position(|v| v.name == name).unwrap();
        let slot = |p: &Plan, name: &str| p.slot[id(name)];
        // Planned plainly, z takes a's slot, freed by the concatenation.
        let plain = plan(&g, &types).unwrap();
        assert_eq!(slot(&plain, "z"), slot(&plain, "a"));
        // With the concatenation (node 2) deferred to its reader (node 4): k has no slot, a and b
        // live until node 4, so z gets a slot of its own.
        let fused =
            plan_fused(&g, &types, &Fusions { in_place: &|_| None, deferred: &|i| (i == 2).then_some(4) }).unwrap();
        assert_eq!(slot(&fused, "k"), None);
        assert!(fused.frees[2].is_empty());
        assert_eq!(fused.frees[4], vec![id("a"), id("b")]);
        let z = slot(&fused, "z").unwrap();
        assert!(Some(z) != slot(&fused, "a") && Some(z) != slot(&fused, "b"));
    }
}
