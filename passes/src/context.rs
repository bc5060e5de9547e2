//! State shared by a run of passes: the pruning options and the analyses the pruning passes
//! hand to each other (channel groups, the selection, the masks).

use crate::group_channels::ChannelGroups;
use slimc_ir::ValueId;
use std::collections::BTreeMap;

/// Which channels may be pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Exactly the BNs the seed recipe (YOLOv11-Prune) prunes, each on its own.
    Seed,
    /// Every prunable group, residual- and concat-coupled ones as units.
    Groups,
}

/// How a group's importance combines the |gamma| of its BNs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importance {
    /// The largest |gamma|.
    Max,
    /// The sum.
    Sum,
    /// The mean.
    Mean,
}

/// Options of the pruning passes.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Fraction of the candidate groups to remove, in (0, 1).
    pub ratio: f64,
    /// Which groups are candidates.
    pub policy: Policy,
    /// How |gamma| values combine.
    pub importance: Importance,
    /// No layer keeps fewer channels than this (or all it has, if fewer).
    pub min_channels: usize,
    /// Kept channel counts are rounded up to a multiple of this.
    pub round_to: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { ratio: 0.3, policy: Policy::Groups, importance: Importance::Max, min_channels: 8, round_to: 8 }
    }
}

/// The outcome of `select-channels`.
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

/// What `rewrite-widths` did, per BN layer.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// (layer, channels before, channels after), in graph order.
    pub layers: Vec<(String, usize, usize)>,
    /// Every removed (layer, channel).
    pub removed: Vec<(String, usize)>,
}

/// What a run of passes shares.
#[derive(Clone, Debug, Default)]
pub struct PassContext {
    /// Pruning options.
    pub prune: PruneOptions,
    /// From `group-channels`.
    pub groups: Option<ChannelGroups>,
    /// From `select-channels`.
    pub selection: Option<Selection>,
    /// From `propagate-masks`: for each tracked value, which channels stay.
    pub masks: Option<BTreeMap<ValueId, Vec<bool>>>,
    /// From `rewrite-widths` (the analyses above are dropped once the graph is rewritten).
    pub report: Option<PruneReport>,
}

impl PassContext {
    /// A one-paragraph summary of the analyses held, as IR comments.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(g) = &self.groups {
            let prunable = g.prunable.iter().filter(|p| **p).count();
            let frozen = g.frozen.iter().filter(|p| **p).count();
            s += &format!("// channel groups: {} ({prunable} prunable, {frozen} frozen)\n", g.count);
        }
        if let Some(sel) = &self.selection {
            let n = sel.pruned.iter().filter(|p| **p).count();
            s += &format!("// selected for removal: {n} groups (|gamma| threshold {:.4e})\n", sel.threshold);
            for c in &sel.clamped {
                s += &format!("// clamped: {c}\n");
            }
        }
        if let Some(r) = &self.report {
            let before: usize = r.layers.iter().map(|l| l.1).sum();
            let after: usize = r.layers.iter().map(|l| l.2).sum();
            s += &format!("// rewritten: BN channels {before} -> {after}\n");
        }
        if let Some(m) = &self.masks {
            let (kept, all) = m.values().fold((0, 0), |(k, a), v| (k + v.iter().filter(|x| **x).count(), a + v.len()));
            s += &format!("// masks on {} values: {kept} of {all} channels kept\n", m.len());
        }
        s
    }
}
