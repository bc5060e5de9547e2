//! The pass manager and every IR-to-IR pass.
//!
//! Each transform lives in its own file, is a unit struct implementing [`Pass`], and states in
//! its doc comment the invariant it keeps. Analyses ([`Analysis`]: channel groups, the
//! selection, the masks) are computed on demand by the [`PassManager`], cached in the
//! [`PassContext`] and dropped when a transform changes the graph. The manager runs a list of
//! passes by name, verifies the model after each one, and prints, times or skips passes on
//! request; [`pipelines`] holds every sequence slimc runs.

#![warn(missing_docs)]

mod analysis;
mod autodiff;
mod dce;
mod distill;
mod fold_bn;
mod fold_constants;
mod group_channels;
mod manager;
mod optimizer;
pub mod pipelines;
mod propagate_masks;
mod pruning;
mod rewrite_widths;
mod seed_policy;
mod select_channels;

pub use analysis::{Analysis, PassContext};
pub use autodiff::{
    attach_detect_loss, detect_levels, differentiate, grad_name, next_name, Autodiff, DetectHead, LOSS_GAINS,
    LOSS_ITEMS, LOSS_TOTAL, TARGETS,
};
pub use dce::Dce;
pub use distill::{Distill, Distillation, DISTILL_GAINS, DISTILL_ITEMS, DISTILL_TOTAL, TEACHER_PREFIX};
pub use fold_bn::FoldBn;
pub use fold_constants::FoldConstants;
pub use group_channels::ChannelGroups;
pub use manager::{PassManager, PassReport};
pub use optimizer::{
    accumulator_name, bn_gammas, ema_name, param_groups, state_names, Optimizer, OptimizerOptions, ParamGroup,
    Sparsity, UpdateRule, GRAD_NORM, SCALARS,
};
pub use propagate_masks::Masks;
pub use pruning::{Importance, Policy, PruneOptions, PruneReport, Selection};
pub use rewrite_widths::RewriteWidths;
pub use seed_policy::{bn_name, seed_unprunable};

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
