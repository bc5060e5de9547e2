//! The pass manager and every IR-to-IR pass.
//!
//! Each transform lives in its own file, is a unit struct implementing [`Pass`], and states in
//! its doc comment the invariant it keeps. Analyses ([`Analysis`]: channel groups, the
//! selection, the masks) are computed on demand by the [`PassManager`], cached in the
//! [`PassContext`] with the passes' [`options`](PruneOptions), and dropped when a transform
//! changes the graph. The manager runs a list of passes by name, verifies the model after each
//! one, and prints, times or skips passes on request; [`sequences`] holds every pass sequence
//! slimc runs.

#![warn(missing_docs)]

mod analysis;
mod autodiff;
mod context;
mod dce;
mod distill;
mod fold_bn;
mod fold_constants;
mod group_channels;
mod manager;
mod optimizer;
mod options;
mod pass;
mod propagate_masks;
mod rewrite_widths;
mod seed_policy;
mod select_channels;
pub mod sequences;

pub use analysis::Analysis;
pub use autodiff::{
    attach_detect_loss, detect_levels, differentiate, grad_name, next_name, Autodiff, DetectHead, LOSS_GAINS,
    LOSS_ITEMS, LOSS_TOTAL, TARGETS,
};
pub use context::{PassContext, PruneReport};
pub use dce::Dce;
pub use distill::{Distill, DISTILL_GAINS, DISTILL_ITEMS, DISTILL_TOTAL, TEACHER_PREFIX};
pub use fold_bn::FoldBn;
pub use fold_constants::FoldConstants;
pub use group_channels::ChannelGroups;
pub use manager::{all_passes, PassManager, PassReport};
pub use optimizer::{accumulator_name, bn_gammas, ema_name, param_groups, state_names, Optimizer, GRAD_NORM, SCALARS};
pub use options::{Distillation, Importance, OptimizerOptions, Policy, PruneOptions, Sparsity, SrMode, UpdateRule};
pub use pass::{Pass, PassError, Result};
pub use propagate_masks::Masks;
pub use rewrite_widths::RewriteWidths;
pub use seed_policy::{bn_name, seed_unprunable};
pub use select_channels::Selection;
