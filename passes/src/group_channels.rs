//! `group-channels`: channel-coupling analysis (union-find over (value, channel)).

use slimc_ir::{Axis, Binary, Split, Unary, UnaryGrad};
use slimc_ir::{Graph, IrError, NodeId, Op, ValueId};

/// Coupled channels of an inference graph, joined into groups.
#[derive(Clone, Debug, Default)]
pub struct ChannelGroups {
    /// For each value, the group of each channel along axis 1 (None: the value's channels are
    /// not tracked: not NCHW, or not f32).
    pub of: Vec<Option<Vec<usize>>>,
    /// Number of groups.
    pub count: usize,
    /// Per group: frozen (touches a graph input or output, a reshape, transpose, matmul, softmax,
    /// slice or grouped conv), so it must be kept whole.
    pub frozen: Vec<bool>,
    /// Per group: the (batch_norm node, channel) pairs whose output is in the group.
    pub bns: Vec<Vec<(NodeId, usize)>>,
    /// Per group: removing it is exact (every member is a BN-zeroed channel or is read only by
    /// the group's BNs), not frozen, and it has a BN to rank it by.
    pub prunable: Vec<bool>,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// Channel count of a value whose channels are tracked (rank-4 f32 with a known axis 1).
fn channels(g: &Graph, v: ValueId) -> Option<usize> {
    let t = g.ty(v);
    (t.rank() == 4 && t.dtype == slimc_ir::DType::F32).then(|| t.shape[1].fixed()).flatten()
}

/// A depthwise conv: one input and one output channel per group, more than one group. The one
/// rule the channel analysis, the seed policy and `rewrite-widths` share.
pub(crate) fn is_depthwise(g: &Graph, n: &slimc_ir::Node) -> bool {
    match &n.op {
        Op::Conv2d(c) => {
            let (cin, cout) = (channels(g, n.inputs[0]), channels(g, n.outputs[0]));
            c.groups > 1 && cin == Some(c.groups) && cout == Some(c.groups)
        }
        // Every other op is not a convolution.
        _ => false,
    }
}

/// Joins the coupled channels of `g` into groups; the graph is not changed. Rules: BN,
/// activations, pooling, upsampling, elementwise ops and depthwise convs couple channel `c` of
/// input and output; concat and split map offsets; a dense conv's outputs start a new space and
/// its inputs are sinks; reshape, transpose, matmul, softmax, slice, grouped convs and graph
/// inputs and outputs freeze. A group marked prunable can be removed exactly once its BNs'
/// gamma and beta are 0.
pub fn analyze(g: &Graph) -> Result<ChannelGroups, IrError> {
    if g.nodes.iter().any(|n| matches!(n.op, Op::BatchNormTrain(_) | Op::DetectLoss(_) | Op::DistillLoss(_))) {
        return Err(IrError::Invalid("channel analysis runs on inference graphs, not training programs".into()));
    }
    let mut base = vec![None; g.values.len()];
    let mut total = 0;
    for (i, _) in g.values.iter().enumerate() {
        if let Some(c) = channels(g, ValueId(i)) {
            base[i] = Some(total);
            total += c;
        }
    }
    let mut uf = UnionFind((0..total).collect());
    let mut frozen_el = vec![false; total];
    let el = |v: ValueId, c: usize| base[v.0].map(|b| b + c);
    let freeze = |v: ValueId, frozen: &mut Vec<bool>| {
        if let (Some(b), Some(c)) = (base[v.0], channels(g, v)) {
            frozen[b..b + c].iter_mut().for_each(|f| *f = true);
        }
    };
    let freeze_all = |n: &slimc_ir::Node, frozen: &mut Vec<bool>| {
        n.inputs.iter().chain(&n.outputs).for_each(|&v| freeze(v, frozen));
    };
    let couple = |a: ValueId, b: ValueId, uf: &mut UnionFind| {
        if let (Some(ca), Some(cb)) = (channels(g, a), channels(g, b)) {
            if ca == cb {
                for c in 0..ca {
                    uf.union(el(a, c).expect("tracked"), el(b, c).expect("tracked"));
                }
                return true;
            }
        }
        false
    };
    for n in &g.nodes {
        let y = n.outputs[0];
        match &n.op {
            Op::Conv2d(c) => {
                if is_depthwise(g, n) {
                    couple(n.inputs[0], y, &mut uf);
                } else if c.groups != 1 {
                    freeze(n.inputs[0], &mut frozen_el);
                    freeze(y, &mut frozen_el);
                }
            }
            Op::BatchNorm(_)
            | Op::Unary(Unary::Silu)
            | Op::Unary(Unary::Sigmoid)
            | Op::MaxPool2d(_)
            | Op::UpsampleNearest(_) => {
                couple(n.inputs[0], y, &mut uf);
            }
            Op::Binary(Binary::Add | Binary::Sub | Binary::Mul | Binary::Div) => {
                for &x in &n.inputs {
                    let scalar_like = g.ty(x).numel() == Some(1) || g.ty(x).rank() < 2;
                    if !couple(x, y, &mut uf) && !scalar_like {
                        freeze(x, &mut frozen_el);
                        freeze(y, &mut frozen_el);
                    }
                }
            }
            Op::Concat(Axis { axis }) | Op::Split(Split { axis, .. }) => {
                let (whole, parts) = if matches!(n.op, Op::Concat(_)) {
                    (y, n.inputs.clone())
                } else {
                    (n.inputs[0], n.outputs.clone())
                };
                if channels(g, whole).is_none() {
                    continue;
                }
                if *axis == 1 {
                    let mut off = 0;
                    for &p in &parts {
                        let c = channels(g, p).expect("NCHW parts of an NCHW value");
                        for k in 0..c {
                            uf.union(el(whole, off + k).expect("tracked"), el(p, k).expect("tracked"));
                        }
                        off += c;
                    }
                } else {
                    for &p in &parts {
                        couple(whole, p, &mut uf);
                    }
                }
            }
            Op::Anchors(_) => {}
            // Channels that move to other axes (reshape, transpose, matmul, the attention's
            // softmax), a slice, the sign, and the training ops (never in a graph being pruned):
            // frozen.
            Op::Unary(Unary::Sign) | Op::Slice(_) | Op::Reshape(_) | Op::Transpose(_) | Op::MatMul | Op::Softmax(_) => {
                freeze_all(n, &mut frozen_el)
            }
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) | Op::BatchNormGrad => {
                freeze_all(n, &mut frozen_el)
            }
            Op::UnaryGrad(UnaryGrad::Silu | UnaryGrad::Sigmoid) | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) => {
                freeze_all(n, &mut frozen_el)
            }
            Op::UpsampleNearestGrad(_) => freeze_all(n, &mut frozen_el),
            Op::SliceGrad(_) | Op::SumTo | Op::DetectLoss(_) | Op::DetectLossGrad(_) | Op::Accumulate => {
                freeze_all(n, &mut frozen_el)
            }
            Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => freeze_all(n, &mut frozen_el),
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => freeze_all(n, &mut frozen_el),
            // The collectives move whole training-state tensors between ranks.
            Op::AllReduce | Op::Broadcast(_) => freeze_all(n, &mut frozen_el),
        }
    }
    for &v in g.inputs.iter().chain(&g.outputs) {
        freeze(v, &mut frozen_el);
    }
    // Number the groups densely.
    let mut id = vec![usize::MAX; total];
    let mut count = 0;
    for e in 0..total {
        let r = uf.find(e);
        if id[r] == usize::MAX {
            id[r] = count;
            count += 1;
        }
        id[e] = id[r];
    }
    let of: Vec<Option<Vec<usize>>> = (0..g.values.len())
        .map(|i| base[i].map(|b| (0..channels(g, ValueId(i)).expect("tracked")).map(|c| id[b + c]).collect()))
        .collect();
    let mut frozen = vec![false; count];
    for e in 0..total {
        frozen[id[e]] |= frozen_el[e];
    }
    let mut bns = vec![vec![]; count];
    for (i, n) in g.nodes.iter().enumerate() {
        if let (Op::BatchNorm(_), Some(groups)) = (&n.op, &of[n.outputs[0].0]) {
            for (c, &grp) in groups.iter().enumerate() {
                bns[grp].push((NodeId(i), c));
            }
        }
    }
    // Exactness: a member channel that zeroed BNs do not zero must only feed those BNs.
    let users = g.users();
    let mut zero = vec![false; total];
    for n in &g.nodes {
        let y = n.outputs[0];
        let zeroed_from = |x: ValueId, zero: &Vec<bool>| -> Vec<bool> {
            match (channels(g, x), channels(g, y)) {
                (Some(a), Some(b)) if a == b => (0..a).map(|c| zero[el(x, c).expect("tracked")]).collect(),
                _ => vec![],
            }
        };
        let set: Vec<(ValueId, Vec<bool>)> = match &n.op {
            Op::BatchNorm(_) => vec![(y, vec![true; channels(g, y).unwrap_or(0)])],
            Op::Unary(Unary::Silu) | Op::MaxPool2d(_) | Op::UpsampleNearest(_) => {
                vec![(y, zeroed_from(n.inputs[0], &zero))]
            }
            Op::Conv2d(_) if is_depthwise(g, n) && n.inputs.len() == 2 => vec![(y, zeroed_from(n.inputs[0], &zero))],
            Op::Binary(Binary::Add) | Op::Binary(Binary::Sub) => {
                let a = zeroed_from(n.inputs[0], &zero);
                let b = zeroed_from(n.inputs[1], &zero);
                if a.len() == b.len() {
                    vec![(y, a.iter().zip(&b).map(|(p, q)| *p && *q).collect())]
                } else {
                    vec![]
                }
            }
            Op::Concat(Axis { axis: 1 }) if channels(g, y).is_some() => {
                vec![(y, n.inputs.iter().flat_map(|&x| zeroed_from_any(g, x, &zero, &base)).collect())]
            }
            Op::Split(Split { axis: 1, sizes }) if channels(g, n.inputs[0]).is_some() => {
                let all = zeroed_from_any(g, n.inputs[0], &zero, &base);
                let mut off = 0;
                sizes
                    .iter()
                    .zip(&n.outputs)
                    .map(|(&k, &o)| {
                        off += k;
                        (o, all[off - k..off].to_vec())
                    })
                    .collect()
            }
            // Nothing is known to be zero after these: a dense or grouped conv (a new channel
            // space), a concat or split along another axis or of untracked values, a sigmoid
            // (0.5 at 0), a product or quotient (a zero channel times a nonzero scalar is not
            // proven), and the ops whose channels the channel rule freezes.
            Op::Conv2d(_) | Op::Concat(_) | Op::Split(_) | Op::Unary(Unary::Sigmoid | Unary::Sign) => vec![],
            Op::Binary(Binary::Mul | Binary::Div) | Op::Slice(_) | Op::Reshape(_) | Op::Transpose(_) => vec![],
            Op::MatMul | Op::Softmax(_) | Op::Anchors(_) | Op::AllReduce | Op::Broadcast(_) => vec![],
            Op::UnaryGrad(UnaryGrad::Silu | UnaryGrad::Sigmoid) | Op::Conv2dGradInput(_) => vec![],
            Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) | Op::BatchNormGrad | Op::SoftmaxGrad(_) => vec![],
            Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) | Op::SumTo => vec![],
            Op::DetectLoss(_) | Op::DetectLossGrad(_) | Op::Accumulate | Op::GlobalNorm => vec![],
            Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => vec![],
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => vec![],
        };
        for (v, z) in set {
            if let Some(b) = base[v.0] {
                for (c, &zc) in z.iter().enumerate() {
                    zero[b + c] = zc;
                }
            }
        }
    }
    let mut exact = vec![true; count];
    for i in 0..g.values.len() {
        let Some(b) = base[i] else { continue };
        let only_bn = users[i].iter().all(|u| matches!(g.nodes[u.0].op, Op::BatchNorm(_)));
        for c in 0..channels(g, ValueId(i)).expect("tracked") {
            if !zero[b + c] && !only_bn {
                exact[id[b + c]] = false;
            }
        }
    }
    let prunable = (0..count).map(|k| !frozen[k] && exact[k] && !bns[k].is_empty()).collect();
    Ok(ChannelGroups { of, count, frozen, bns, prunable })
}

fn zeroed_from_any(g: &Graph, x: ValueId, zero: &[bool], base: &[Option<usize>]) -> Vec<bool> {
    match (base[x.0], channels(g, x)) {
        (Some(b), Some(c)) => zero[b..b + c].to_vec(),
        _ => vec![],
    }
}
