//! The pass manager and every IR-to-IR pass.
//!
//! Each pass lives in its own file, is a unit struct implementing [`Pass`], and states in its
//! doc comment the invariant it keeps. The [`PassManager`] runs a list of passes by name,
//! verifies the model after each one and can print the IR after each one.

mod autodiff;
mod context;
mod dce;
mod fold_bn;
mod fold_constants;
mod group_channels;
mod manager;
mod propagate_masks;
mod rewrite_widths;
mod select_channels;

pub use autodiff::{
    attach_detect_loss, differentiate, grad_name, next_name, Autodiff, LOSS_GAINS, LOSS_ITEMS, LOSS_TOTAL, TARGETS,
};
pub use context::{Importance, PassContext, Policy, PruneOptions, PruneReport, Selection};
pub use dce::Dce;
pub use fold_bn::FoldBn;
pub use fold_constants::FoldConstants;
pub use group_channels::{analyze as analyze_channels, ChannelGroups, GroupChannels};
pub use manager::{PassManager, PassReport};
pub use propagate_masks::PropagateMasks;
pub use rewrite_widths::RewriteWidths;
pub use select_channels::{bn_name, seed_unprunable, select as select_channels, SelectChannels};

use slimc_ir::Model;
use thiserror::Error;

/// An error raised by a pass or by the pass manager.
#[derive(Debug, Error)]
pub enum PassError {
    /// A pass name that no pass has.
    #[error("unknown pass `{name}`; available passes: {available}")]
    UnknownPass { name: String, available: String },
    /// A pass failed, or left a model that does not verify.
    #[error("pass `{pass}`: {msg}")]
    Failed { pass: &'static str, msg: String },
}

/// Result with [`PassError`].
pub type Result<T> = std::result::Result<T, PassError>;

/// An IR-to-IR transformation over a whole model (graph and tensors).
pub trait Pass {
    /// The name used in `--passes`.
    fn name(&self) -> &'static str;
    /// One line saying what the pass does.
    fn summary(&self) -> &'static str;
    /// Runs the pass; returns whether it changed anything.
    fn run(&self, model: &mut Model) -> std::result::Result<bool, slimc_ir::IrError>;
    /// Runs the pass within a run of passes that share `cx` (options and analyses); passes
    /// that need neither use [`Pass::run`].
    fn run_in(&self, model: &mut Model, cx: &mut PassContext) -> std::result::Result<bool, slimc_ir::IrError> {
        let _ = cx;
        self.run(model)
    }
}

/// Every registered pass, in the order `--help` lists them.
pub fn all_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(FoldConstants),
        Box::new(Dce),
        Box::new(FoldBn),
        Box::new(Autodiff),
        Box::new(GroupChannels),
        Box::new(SelectChannels),
        Box::new(PropagateMasks),
        Box::new(RewriteWidths),
    ]
}
