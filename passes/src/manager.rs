//! The pass manager: runs passes by name, computes the analyses they require, verifies the
//! model after each pass, and prints, times or skips passes when asked.

use crate::analysis::Analysis;
use crate::autodiff::Autodiff;
use crate::context::PassContext;
use crate::dce::Dce;
use crate::distill::Distill;
use crate::fold_bn::FoldBn;
use crate::fold_constants::FoldConstants;
use crate::optimizer::Optimizer;
use crate::pass::{Pass, PassError, Result};
use crate::rewrite_widths::RewriteWidths;
use slimc_ir::{print_graph, Model};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Every registered pass, in the order `--list-passes` shows them (analyses are listed by
/// [`Analysis::ALL`]).
pub fn all_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(FoldConstants),
        Box::new(Dce),
        Box::new(FoldBn),
        Box::new(Distill),
        Box::new(Autodiff),
        Box::new(Optimizer),
        Box::new(RewriteWidths),
    ]
}

/// What one step of a run did: a pass, an analysis named in the list, or an analysis a pass
/// required that was not cached.
#[derive(Clone, Debug)]
pub struct PassReport {
    /// Pass or analysis name.
    pub name: &'static str,
    /// Whether the model changed (never, for an analysis).
    pub changed: bool,
    /// Nodes before and after.
    pub nodes: (usize, usize),
    /// Wall time.
    pub time: Duration,
    /// Whether this step was an analysis.
    pub analysis: bool,
}

enum Step {
    Pass(Box<dyn Pass>),
    Analysis(Analysis),
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Pass(p) => p.name(),
            Step::Analysis(a) => a.name(),
        }
    }
}

/// A sequence of passes (and analyses to compute and show) with printing, timing and
/// disabling options, as rustc's and LLVM's `-print-after`, `-time-passes` and friends.
#[derive(Default)]
pub struct PassManager {
    steps: Vec<Step>,
    print_after_all: bool,
    print_before: BTreeSet<String>,
    print_after: BTreeSet<String>,
    disabled: BTreeSet<String>,
    time_passes: bool,
}

/// The step with this name: a registered pass or an analysis.
fn step(name: &str) -> Result<Step> {
    if let Some(p) = all_passes().into_iter().find(|p| p.name() == name) {
        return Ok(Step::Pass(p));
    }
    Analysis::by_name(name)
        .map(Step::Analysis)
        .ok_or_else(|| PassError::UnknownPass { name: name.to_string(), available: known_names().join(", ") })
}

/// Every name a list may hold: the passes, then the analyses.
fn known_names() -> Vec<&'static str> {
    all_passes().iter().map(|p| p.name()).chain(Analysis::ALL.iter().map(|a| a.name())).collect()
}

/// Checks a list of names given to an option, returning them as a set.
fn names(list: &[String]) -> Result<BTreeSet<String>> {
    for n in list {
        step(n)?;
    }
    Ok(list.iter().cloned().collect())
}

impl PassManager {
    /// Builds a manager from a comma-separated list such as `fold-constants,dce`; naming an
    /// analysis computes it afresh at that point (and shows it with `--print-after`).
    pub fn parse(list: &str) -> Result<PassManager> {
        let steps = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(step).collect::<Result<_>>()?;
        Ok(PassManager { steps, ..Default::default() })
    }

    /// Prints the IR (to stderr) after every step.
    pub fn print_ir_after_all(mut self, on: bool) -> PassManager {
        self.print_after_all = on;
        self
    }

    /// Prints the IR (to stderr) before each step with one of these names.
    pub fn print_before(mut self, list: &[String]) -> Result<PassManager> {
        self.print_before = names(list)?;
        Ok(self)
    }

    /// Prints the IR and the analyses held (to stderr) after each step with one of these names.
    pub fn print_after(mut self, list: &[String]) -> Result<PassManager> {
        self.print_after = names(list)?;
        Ok(self)
    }

    /// Skips the passes with these names wherever the list holds them.
    pub fn disable(mut self, list: &[String]) -> Result<PassManager> {
        self.disabled = names(list)?;
        Ok(self)
    }

    /// Prints a per-pass timing table (to stderr) at the end of each run.
    pub fn time_passes(mut self, on: bool) -> PassManager {
        self.time_passes = on;
        self
    }

    /// Runs every step in order with default options, verifying the model after each pass.
    pub fn run(&self, model: &mut Model) -> Result<Vec<PassReport>> {
        self.run_with(model, &mut PassContext::default())
    }

    /// Runs every step in order sharing `cx`, verifying the model after each pass. A pass's
    /// required analyses are computed first unless cached; a pass that changes the model drops
    /// every cached analysis it does not preserve.
    pub fn run_with(&self, model: &mut Model, cx: &mut PassContext) -> Result<Vec<PassReport>> {
        let mut reports = vec![];
        for s in self.steps.iter().filter(|s| !self.disabled.contains(s.name())) {
            let name = s.name();
            let fail = |msg: String| PassError::Failed { pass: name, msg };
            if self.print_before.contains(name) {
                eprintln!("// ----- IR before {name} -----\n{}", print_graph(&model.graph));
            }
            let nodes = model.graph.nodes.len();
            match s {
                Step::Analysis(a) => {
                    let t = Instant::now();
                    cx.recompute(model, *a).map_err(|e| fail(e.to_string()))?;
                    let time = t.elapsed();
                    reports.push(PassReport { name, changed: false, nodes: (nodes, nodes), time, analysis: true });
                }
                Step::Pass(p) => {
                    for &a in p.requires() {
                        let missing: Vec<Analysis> =
                            Analysis::ALL.into_iter().filter(|d| *d <= a && !cx.has(*d)).collect();
                        for a in missing {
                            let t = Instant::now();
                            cx.ensure(model, a).map_err(|e| fail(format!("analysis {}: {e}", a.name())))?;
                            let time = t.elapsed();
                            let name = a.name();
                            reports.push(PassReport {
                                name,
                                changed: false,
                                nodes: (nodes, nodes),
                                time,
                                analysis: true,
                            });
                        }
                    }
                    let t = Instant::now();
                    let changed = p.run(model, cx).map_err(|e| fail(e.to_string()))?;
                    let time = t.elapsed();
                    model.check().map_err(|e| fail(format!("the model no longer verifies: {e}")))?;
                    if changed {
                        cx.invalidate(|a| p.preserves().contains(&a));
                    }
                    let after = model.graph.nodes.len();
                    reports.push(PassReport { name, changed, nodes: (nodes, after), time, analysis: false });
                }
            }
            if self.print_after_all || self.print_after.contains(name) {
                let (summary, groups) = (cx.describe(), cx.describe_groups(&model.graph));
                eprintln!("// ----- IR after {name} -----\n{summary}{groups}{}", print_graph(&model.graph));
            }
        }
        if self.time_passes {
            eprint!("{}", timing_table(&reports));
        }
        Ok(reports)
    }
}

/// The `--time-passes` table: one row per step, slowest first, with its share of the total.
fn timing_table(reports: &[PassReport]) -> String {
    let total: Duration = reports.iter().map(|r| r.time).sum();
    let share = |d: Duration| if total.is_zero() { 0.0 } else { 100.0 * d.as_secs_f64() / total.as_secs_f64() };
    let mut rows: Vec<&PassReport> = reports.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.time));
    let mut s = String::from("===- pass execution timing report -===\n");
    s += &format!("  {:>10}  {:>6}  {:>13}  name\n", "wall ms", "share", "nodes");
    for r in rows {
        let kind = if r.analysis {
            " (analysis)"
        } else if r.changed {
            ""
        } else {
            " (no change)"
        };
        s += &format!(
            "  {:>10.3}  {:>5.1}%  {:>6}->{:<6}  {}{kind}\n",
            r.time.as_secs_f64() * 1e3,
            share(r.time),
            r.nodes.0,
            r.nodes.1,
            r.name
        );
    }
    s += &format!("  {:>10.3}  100.0%  {:>13}  total\n", total.as_secs_f64() * 1e3, "");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use slimc_ir::{parse_graph, IrError, Tensor, ValueDef};

    /// conv → BN → SiLU → conv, plus a dead conv; BN gammas 0.9, 0.01, 0.8, 0.02.
    fn model() -> Model {
        let text = "graph g(%x: f32[1,3,4,4]) {
  weight %a.weight: f32[4,3,1,1]
  weight %bn.weight: f32[4]
  weight %bn.bias: f32[4]
  buffer %bn.running_mean: f32[4]
  buffer %bn.running_var: f32[4]
  weight %out.weight: f32[2,4,1,1]
  weight %dead.weight: f32[2,3,1,1]
  %a: f32[1,4,4,4] = conv2d(%x, %a.weight) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %bn: f32[1,4,4,4] = batch_norm(%a, %bn.weight, %bn.bias, %bn.running_mean, %bn.running_var) {eps=0.001, momentum=0.03}
  %act: f32[1,4,4,4] = silu(%bn)
  %out: f32[1,2,4,4] = conv2d(%act, %out.weight) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %dead: f32[1,2,4,4] = conv2d(%x, %dead.weight) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  return %out
}";
        let graph = parse_graph(text).unwrap();
        let mut tensors = std::collections::BTreeMap::new();
        for &p in &graph.params {
            let v = graph.value(p);
            assert!(matches!(v.def, ValueDef::Param(_)));
            tensors.insert(v.name.clone(), Tensor::full(&v.ty.fixed_shape().unwrap(), 1.0));
        }
        tensors.insert("bn.weight".into(), Tensor::from_f32(vec![4], vec![0.9, 0.01, 0.8, 0.02]).unwrap());
        let m = Model { graph, tensors, meta: Default::default(), training_state: vec![] };
        m.check().unwrap();
        m
    }

    fn cx() -> PassContext {
        let prune = crate::options::PruneOptions { ratio: 0.5, min_channels: 1, round_to: 1, ..Default::default() };
        PassContext { prune, ..Default::default() }
    }

    fn steps(r: &[PassReport]) -> Vec<(&str, bool)> {
        r.iter().map(|r| (r.name, r.analysis)).collect()
    }

    #[test]
    fn required_analyses_are_computed_on_demand_then_dropped_by_the_transform() {
        let (mut m, mut cx) = (model(), cx());
        let r = PassManager::parse("rewrite-widths").unwrap().run_with(&mut m, &mut cx).unwrap();
        let want =
            [("group-channels", true), ("select-channels", true), ("propagate-masks", true), ("rewrite-widths", false)];
        assert_eq!(steps(&r), want);
        assert!(r[3].changed);
        assert!(cx.groups.is_none() && cx.selection.is_none() && cx.masks.is_none());
        assert_eq!(cx.report.unwrap().layers, vec![("bn".to_string(), 4, 2)]);
    }

    #[test]
    fn cached_analyses_are_reused() {
        let (mut m, mut cx) = (model(), cx());
        PassManager::parse("group-channels,select-channels").unwrap().run_with(&mut m, &mut cx).unwrap();
        let r = PassManager::parse("rewrite-widths").unwrap().run_with(&mut m, &mut cx).unwrap();
        assert_eq!(steps(&r), [("propagate-masks", true), ("rewrite-widths", false)]);
    }

    #[test]
    fn a_changing_transform_drops_what_it_does_not_preserve() {
        let (mut m, mut cx) = (model(), cx());
        // dce changes the graph (the dead conv goes): the groups are dropped.
        PassManager::parse("group-channels,dce").unwrap().run_with(&mut m, &mut cx).unwrap();
        assert!(cx.groups.is_none());
        // dce again changes nothing: the groups stay.
        PassManager::parse("group-channels,dce").unwrap().run_with(&mut m, &mut cx).unwrap();
        assert!(cx.groups.is_some());

        /// Renames a value (the graph changes) but declares the channel groups preserved.
        struct Rename;
        impl Pass for Rename {
            fn name(&self) -> &'static str {
                "rename"
            }
            fn summary(&self) -> &'static str {
                "test"
            }
            fn preserves(&self) -> &'static [Analysis] {
                &[Analysis::ChannelGroups]
            }
            fn run(&self, model: &mut Model, _: &mut PassContext) -> std::result::Result<bool, IrError> {
                model.graph.values.last_mut().unwrap().name += ".renamed";
                Ok(true)
            }
        }
        let mut pm = PassManager::parse("select-channels").unwrap();
        pm.steps.push(Step::Pass(Box::new(Rename)));
        pm.run_with(&mut m, &mut cx).unwrap();
        assert!(cx.groups.is_some() && cx.selection.is_none());
    }

    #[test]
    fn disabled_passes_are_skipped_and_option_names_are_checked() {
        let mut m = model();
        let before = m.graph.nodes.len();
        let r = PassManager::parse("dce").unwrap().disable(&["dce".into()]).unwrap().run(&mut m).unwrap();
        assert!(r.is_empty());
        assert_eq!(m.graph.nodes.len(), before);
        let e = PassManager::parse("dce").unwrap().print_after(&["no-such-pass".into()]).err().unwrap();
        assert!(e.to_string().contains("unknown pass `no-such-pass`"), "{e}");
        let table = timing_table(&PassManager::parse("dce").unwrap().run(&mut m).unwrap());
        assert!(table.contains("dce") && table.contains("total"), "{table}");
    }
}
