//! The pass manager: runs passes by name, verifies after each, prints the IR when asked.

use crate::{all_passes, Pass, PassContext, PassError, Result};
use slimc_ir::{print_graph, Model};
use std::time::{Duration, Instant};

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassReport {
    /// Pass name.
    pub name: &'static str,
    /// Whether the model changed.
    pub changed: bool,
    /// Nodes before and after.
    pub nodes: (usize, usize),
    /// Wall time.
    pub time: Duration,
}

/// A sequence of passes with options.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    print_after_all: bool,
}

impl PassManager {
    /// Builds a manager from a comma-separated list such as `fold-constants,dce`.
    pub fn parse(list: &str) -> Result<PassManager> {
        let mut passes = vec![];
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let pass = all_passes().into_iter().find(|p| p.name() == name).ok_or_else(|| PassError::UnknownPass {
                name: name.to_string(),
                available: all_passes().iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
            })?;
            passes.push(pass);
        }
        Ok(PassManager { passes, print_after_all: false })
    }

    /// Prints the IR (to stderr) after every pass.
    pub fn print_ir_after_all(mut self, on: bool) -> PassManager {
        self.print_after_all = on;
        self
    }

    /// Runs every pass in order with default options, verifying the model after each one.
    pub fn run(&self, model: &mut Model) -> Result<Vec<PassReport>> {
        self.run_with(model, &mut PassContext::default())
    }

    /// Runs every pass in order sharing `cx`, verifying the model after each one.
    pub fn run_with(&self, model: &mut Model, cx: &mut PassContext) -> Result<Vec<PassReport>> {
        let mut reports = vec![];
        for pass in &self.passes {
            let before = model.graph.nodes.len();
            let t = Instant::now();
            let changed =
                pass.run_in(model, cx).map_err(|e| PassError::Failed { pass: pass.name(), msg: e.to_string() })?;
            let time = t.elapsed();
            model.check().map_err(|e| PassError::Failed {
                pass: pass.name(),
                msg: format!("the model no longer verifies: {e}"),
            })?;
            if self.print_after_all {
                eprintln!("// ----- IR after {} -----\n{}{}", pass.name(), cx.describe(), print_graph(&model.graph));
            }
            reports.push(PassReport { name: pass.name(), changed, nodes: (before, model.graph.nodes.len()), time });
        }
        Ok(reports)
    }
}
