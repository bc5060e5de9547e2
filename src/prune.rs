//! `slimc prune`: the pruning passes run as one pipeline, with the per-layer report users read.

use crate::info::model_info;
use anyhow::{anyhow, Result};
use serde::Serialize;
use slimc_ir::Model;
use slimc_passes::{PassContext, PassManager, PruneOptions};

/// What pruning changed.
#[derive(Clone, Debug, Serialize)]
pub struct PruneSummary {
    /// Per BN layer: name, channels before, channels after.
    pub layers: Vec<(String, usize, usize)>,
    /// Parameters before and after.
    pub parameters: (usize, usize),
    /// GFLOPs (at the model's image size) before and after.
    pub gflops: (f64, f64),
    /// Layers the floor or rounding kept wider than the ratio asked.
    pub clamped: Vec<String>,
    /// The |gamma| threshold.
    pub threshold: f32,
}

/// A pruned model and its summary.
pub struct Pruned {
    /// The narrower model (no training state).
    pub model: Model,
    /// What changed.
    pub summary: PruneSummary,
}

/// Prunes `model` with `opts`; with `print_ir`, the IR and analyses after each pass go to stderr.
pub fn prune(model: &Model, opts: PruneOptions, print_ir: bool) -> Result<Pruned> {
    let before = model_info(model, None)?;
    let mut cx = PassContext { prune: opts, ..Default::default() };
    let mut m = model.clone();
    let pm = PassManager::parse("group-channels,select-channels")?.print_ir_after_all(print_ir);
    pm.run_with(&mut m, &mut cx)?;
    let sel = cx.selection.clone().ok_or_else(|| anyhow!("select-channels made no selection"))?;
    PassManager::parse("propagate-masks,rewrite-widths")?.print_ir_after_all(print_ir).run_with(&mut m, &mut cx)?;
    let after = model_info(&m, None)?;
    let layers = cx.report.map(|r| r.layers).unwrap_or_default();
    Ok(Pruned {
        model: m,
        summary: PruneSummary {
            layers,
            parameters: (before.parameters, after.parameters),
            gflops: (before.gflops, after.gflops),
            clamped: sel.clamped,
            threshold: sel.threshold,
        },
    })
}

impl PruneSummary {
    /// The table `slimc prune` prints.
    pub fn table(&self) -> String {
        let mut s = format!("{:<36} {:>8} {:>8}\n", "layer", "before", "after");
        for (l, b, a) in &self.layers {
            s += &format!("{l:<36} {b:>8} {a:>8}{}\n", if a < b { "" } else { "  (whole)" });
        }
        let (pb, pa) = self.parameters;
        let (gb, ga) = self.gflops;
        s += &format!(
            "parameters {pb} -> {pa} ({:+.1}%), GFLOPs {gb:.2} -> {ga:.2} ({:+.1}%), |gamma| threshold {:.4}\n",
            (pa as f64 / pb as f64 - 1.0) * 100.0,
            (ga / gb - 1.0) * 100.0,
            self.threshold
        );
        s
    }
}
