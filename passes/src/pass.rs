//! The [`Pass`] trait every transform implements, and the errors of passes and the manager.

use crate::analysis::Analysis;
use crate::context::PassContext;
use slimc_ir::Model;
use thiserror::Error;

/// An error raised by a pass or by the pass manager.
#[derive(Debug, Error)]
pub enum PassError {
    /// A pass name that no pass has.
    #[error("unknown pass `{name}`; available passes: {available}")]
    UnknownPass {
        /// The name given.
        name: String,
        /// Every pass's name, comma-separated.
        available: String,
    },
    /// A pass failed, or left a model that does not verify.
    #[error("pass `{pass}`: {msg}")]
    Failed {
        /// The pass.
        pass: &'static str,
        /// What went wrong.
        msg: String,
    },
}

/// Result with [`PassError`].
pub type Result<T> = std::result::Result<T, PassError>;

/// An IR-to-IR transformation over a whole model (graph and tensors).
pub trait Pass {
    /// The name used in `--passes`.
    fn name(&self) -> &'static str;
    /// One line saying what the pass does.
    fn summary(&self) -> &'static str;
    /// The analyses the pass reads; the manager computes them (or takes them from its cache)
    /// before running it.
    fn requires(&self) -> &'static [Analysis] {
        &[]
    }
    /// The analyses still valid after the pass changed the model; the manager drops the others.
    fn preserves(&self) -> &'static [Analysis] {
        &[]
    }
    /// Runs the pass with the run's shared context; returns whether it changed the model.
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> std::result::Result<bool, slimc_ir::IrError>;
}
