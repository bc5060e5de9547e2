//! [`PassContext`]: what a run of passes shares — the options of the passes, the analyses
//! computed on demand and cached until a transform changes the graph, and the report
//! `rewrite-widths` leaves.

use crate::analysis::Analysis;
use crate::group_channels::{analyze, ChannelGroups};
use crate::options::{Distillation, OptimizerOptions, PruneOptions};
use crate::propagate_masks::{propagate, Masks};
use crate::select_channels::{select, Selection};
use slimc_ir::{Graph, IrError, Model};

/// What `rewrite-widths` did, per BN layer.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    /// The selection it applied.
    pub selection: Selection,
    /// (layer, channels before, channels after), in graph order.
    pub layers: Vec<(String, usize, usize)>,
    /// Every removed (layer, channel).
    pub removed: Vec<(String, usize)>,
}

/// What a run of passes shares: the passes' options, the cached analyses and the report of
/// `rewrite-widths`. Analyses are read through [`PassContext::ensure`] and friends, which
/// compute what is missing.
#[derive(Clone, Debug, Default)]
pub struct PassContext {
    /// Pruning options.
    pub prune: PruneOptions,
    /// What the `optimizer` pass appends.
    pub optimizer: OptimizerOptions,
    /// The teacher the `distill` pass attaches, if training distils.
    pub distill: Option<Distillation>,
    /// Cached [`Analysis::ChannelGroups`].
    pub groups: Option<ChannelGroups>,
    /// Cached [`Analysis::Selection`].
    pub selection: Option<Selection>,
    /// Cached [`Analysis::Masks`]: for each tracked value, which channels stay.
    pub masks: Option<Masks>,
    /// From `rewrite-widths`.
    pub report: Option<PruneReport>,
}

impl PassContext {
    /// Whether `a` is cached.
    pub fn has(&self, a: Analysis) -> bool {
        match a {
            Analysis::ChannelGroups => self.groups.is_some(),
            Analysis::Selection => self.selection.is_some(),
            Analysis::Masks => self.masks.is_some(),
        }
    }

    /// Computes `a` (and what it depends on) unless cached; returns the analyses computed.
    pub fn ensure(&mut self, model: &Model, a: Analysis) -> Result<Vec<Analysis>, IrError> {
        let mut computed = vec![];
        for dep in Analysis::ALL.into_iter().filter(|d| *d <= a) {
            if !self.has(dep) {
                self.compute(model, dep)?;
                computed.push(dep);
            }
        }
        Ok(computed)
    }

    /// Computes `a` afresh (its dependencies from the cache, computed if missing) and drops the
    /// analyses built on the old result.
    pub fn recompute(&mut self, model: &Model, a: Analysis) -> Result<(), IrError> {
        if let Some(prev) = Analysis::ALL.into_iter().rfind(|d| *d < a) {
            self.ensure(model, prev)?;
        }
        self.compute(model, a)
    }

    fn compute(&mut self, model: &Model, a: Analysis) -> Result<(), IrError> {
        match a {
            Analysis::ChannelGroups => self.groups = Some(analyze(&model.graph)?),
            Analysis::Selection => {
                let groups = self.groups.as_ref().expect("dependencies come first");
                self.selection = Some(select(model, groups, &self.prune)?);
            }
            Analysis::Masks => {
                let groups = self.groups.as_ref().expect("dependencies come first");
                let selection = self.selection.as_ref().expect("dependencies come first");
                self.masks = Some(propagate(groups, selection));
            }
        }
        self.invalidate(|d| d <= a);
        Ok(())
    }

    /// Drops every cached analysis for which `keep` is false.
    pub fn invalidate(&mut self, keep: impl Fn(Analysis) -> bool) {
        if !keep(Analysis::ChannelGroups) {
            self.groups = None;
        }
        if !keep(Analysis::Selection) {
            self.selection = None;
        }
        if !keep(Analysis::Masks) {
            self.masks = None;
        }
    }

    /// Each channel-tracked value's groups as IR comments, runs of consecutive group ids as
    /// ranges (`// groups %model.2.cat: 42..=49 46..=49`: a concat whose second and third
    /// parts share groups), when the channel-group analysis is held; empty otherwise.
    pub fn describe_groups(&self, g: &Graph) -> String {
        let Some(groups) = &self.groups else { return String::new() };
        let mut s = String::new();
        for (v, ids) in groups.of.iter().enumerate() {
            let Some(ids) = ids.as_ref().filter(|ids| !ids.is_empty()) else { continue };
            let mut runs: Vec<String> = vec![];
            let mut start = 0;
            for i in 1..=ids.len() {
                if i == ids.len() || ids[i] != ids[i - 1] + 1 {
                    runs.push(if i - 1 == start {
                        ids[start].to_string()
                    } else {
                        format!("{}..={}", ids[start], ids[i - 1])
                    });
                    start = i;
                }
            }
            s += &format!("// groups %{}: {}\n", g.values[v].name, runs.join(" "));
        }
        s
    }

    /// A one-paragraph summary of the analyses held and the report, as IR comments.
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
