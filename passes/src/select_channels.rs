//! The `select-channels` analysis: which channel groups to remove, by a global threshold on BN
//! |gamma|.

use crate::group_channels::ChannelGroups;
use crate::options::{Importance, Policy, PruneOptions};
use crate::seed_policy::{bn_name, seed_unprunable};
use slimc_ir::{IrError, Model, NodeId, Op, Split};
use std::collections::BTreeMap;

/// The `select-channels` analysis: which channel groups go.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Per group: removed.
    pub pruned: Vec<bool>,
    /// The |gamma| threshold at or below which candidates were removed.
    pub threshold: f32,
    /// Layers whose kept count the floor or rounding raised, one line each.
    pub clamped: Vec<String>,
    /// Channel groups the policy made candidates (the ratio is a share of these).
    pub candidates: usize,
}

/// Chooses the groups to remove: the candidates (prunable groups; under `--policy seed` only
/// those whose BNs the seed recipe prunes) are ranked by importance and the lowest `ratio` of
/// them go, then every layer is raised to the floor (`min_channels`, or all it has) and rounded
/// up to a multiple of `round_to`. Returns the selection; a ratio outside (0, 1) is an error.
pub fn select(model: &Model, groups: &ChannelGroups, o: &PruneOptions) -> Result<Selection, IrError> {
    let g = &model.graph;
    if !(o.ratio > 0.0 && o.ratio < 1.0) {
        return Err(IrError::Invalid(format!("prune ratio {} is outside (0, 1)", o.ratio)));
    }
    if o.round_to == 0 {
        return Err(IrError::Invalid("--round-to must be at least 1".into()));
    }
    let seed = (o.policy == Policy::Seed).then(|| seed_unprunable(g));
    // |gamma| per BN node, indexed by node id.
    let mut gammas: Vec<&[f32]> = vec![&[]; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::BatchNorm(_)) {
            let name = &g.value(n.inputs[1]).name;
            let t = model.tensors.get(name).ok_or_else(|| IrError::Invalid(format!("no tensor {name}")))?;
            gammas[i] = t.f32s()?;
        }
    }
    let candidate: Vec<bool> = (0..groups.count)
        .map(|k| {
            groups.prunable[k]
                && seed.as_ref().is_none_or(|s| groups.bns[k].iter().all(|&(n, _)| !s.contains(&bn_name(g, n))))
        })
        .collect();
    let importance: Vec<f32> = (0..groups.count)
        .map(|k| {
            let v = groups.bns[k].iter().map(|&(n, c)| gammas[n.0][c].abs());
            match o.importance {
                Importance::Max => v.fold(0.0, f32::max),
                Importance::Sum => v.sum(),
                Importance::Mean => v.sum::<f32>() / groups.bns[k].len().max(1) as f32,
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..groups.count).filter(|&k| candidate[k]).collect();
    order.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]).then(a.cmp(&b)));
    let n_prune = (order.len() as f64 * o.ratio).floor() as usize;
    // The ratio as messages show it: a searched ratio (a budget's bisection) to four places.
    let shown = (o.ratio * 1e4).round() / 1e4;
    let mut pruned = vec![false; groups.count];
    for &k in &order[..n_prune] {
        pruned[k] = true;
    }
    let threshold = order[..n_prune].last().map_or(0.0, |&k| importance[k]);
    // Layers: groups over the same BNs share a channel space.
    // Neighbouring group ids are mostly channels of the same layers, so members are gathered in
    // runs of equal keys and the map is touched once per run.
    let mut families: BTreeMap<Vec<NodeId>, Vec<usize>> = BTreeMap::new();
    let (mut key, mut prev, mut run) = (vec![], vec![], vec![]);
    for k in (0..groups.count).filter(|&k| candidate[k]) {
        key.clear();
        key.extend(groups.bns[k].iter().map(|&(n, _)| n));
        key.sort();
        key.dedup();
        if key != prev {
            if !run.is_empty() {
                families.entry(prev.clone()).or_default().append(&mut run);
            }
            prev.clone_from(&key);
        }
        run.push(k);
    }
    if !run.is_empty() {
        families.entry(prev).or_default().append(&mut run);
    }
    let mut clamped = vec![];
    for (key, members) in &families {
        let total = members.len();
        let kept = members.iter().filter(|&&k| !pruned[k]).count();
        let floor = o.min_channels.min(total);
        let want = kept.max(floor).div_ceil(o.round_to).saturating_mul(o.round_to).min(total);
        if kept < floor {
            let layer = bn_name(g, key[0])
                + &if key.len() > 1 { format!(" (+{} coupled)", key.len() - 1) } else { String::new() };
            clamped.push(format!(
                "{layer}: ratio {} would keep {kept} of {total} channels; keeping {want} (--min-channels {})",
                shown, o.min_channels
            ));
        }
        // Restore the most important removed channels first.
        let mut removed: Vec<usize> = members.iter().copied().filter(|&k| pruned[k]).collect();
        removed.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
        for &k in removed.iter().take(want - kept) {
            pruned[k] = false;
        }
    }
    // The floor holds for every value too: a BN family's kept channels may all lie in one part
    // of a split, which would leave the other part (and the convs reading it) without channels.
    for (v, of) in groups.of.iter().enumerate() {
        let Some(of) = of else { continue };
        let width = of.len();
        let kept = of.iter().filter(|&&k| !pruned[k]).count();
        let floor = o.min_channels.min(width);
        if kept >= floor {
            continue;
        }
        let mut removed: Vec<usize> = of.iter().copied().filter(|&k| pruned[k]).collect();
        removed.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
        removed.dedup();
        let mut now = kept;
        for k in removed {
            if now >= floor {
                break;
            }
            pruned[k] = false;
            now = of.iter().filter(|&&j| !pruned[j]).count();
        }
        clamped.push(format!(
            "{}: ratio {} would keep {kept} of {width} channels; keeping {now} (--min-channels {})",
            g.value(slimc_ir::ValueId(v)).name,
            shown,
            o.min_channels
        ));
    }
    if o.even_splits {
        even_splits(model, groups, &importance, &mut pruned, &mut clamped);
    }
    Ok(Selection { pruned, threshold, clamped, candidates: order.len() })
}

/// Restores the most important removed channels of the smaller parts of every channel split
/// into equal parts until its parts keep equal counts again.
fn even_splits(
    model: &Model,
    groups: &ChannelGroups,
    importance: &[f32],
    pruned: &mut [bool],
    clamped: &mut Vec<String>,
) {
    let g = &model.graph;
    for n in &g.nodes {
        let Op::Split(Split { axis: 1, sizes }) = &n.op else { continue };
        if sizes.len() < 2 || sizes.iter().any(|&s| s != sizes[0]) {
            continue;
        }
        let parts: Vec<&Vec<usize>> = n.outputs.iter().filter_map(|v| groups.of[v.0].as_ref()).collect();
        if parts.len() != sizes.len() {
            continue;
        }
        let kept = |p: &Vec<usize>, pruned: &[bool]| p.iter().filter(|&&k| !pruned[k]).count();
        let before: Vec<usize> = parts.iter().map(|p| kept(p, pruned)).collect();
        // Restoring a channel may restore a coupled one elsewhere: repeat until the parts agree.
        for _ in 0..sizes[0] {
            let counts: Vec<usize> = parts.iter().map(|p| kept(p, pruned)).collect();
            let most = *counts.iter().max().expect("two parts");
            if counts.iter().all(|&c| c == most) {
                break;
            }
            for (p, &c) in parts.iter().zip(&counts) {
                let mut removed: Vec<usize> = p.iter().copied().filter(|&k| pruned[k]).collect();
                removed.sort_by(|&a, &b| importance[b].total_cmp(&importance[a]).then(a.cmp(&b)));
                removed.dedup();
                for k in removed.into_iter().take(most - c) {
                    pruned[k] = false;
                }
            }
        }
        let after: Vec<usize> = parts.iter().map(|p| kept(p, pruned)).collect();
        if after != before {
            clamped.push(format!("{}: split parts keep {before:?}; evened to {after:?}", g.value(n.inputs[0]).name));
        }
    }
}
