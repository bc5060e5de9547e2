//! Every pass sequence slimc runs (its pass pipelines, as `--list-passes` calls them), in one
//! place. Each is run by the [`PassManager`], which verifies the model after every pass; no
//! command runs a pass any other way.

use crate::manager::PassManager;

/// A named sequence of passes (and analyses).
#[derive(Clone, Copy, Debug)]
pub struct PassSequence {
    /// The name `slimc opt --list-passes` shows.
    pub name: &'static str,
    /// What the sequence is for.
    pub summary: &'static str,
    /// The passes and analyses, in order.
    pub passes: &'static [&'static str],
}

impl PassSequence {
    /// A manager running this sequence.
    pub fn manager(&self) -> PassManager {
        PassManager::parse(&self.passes.join(",")).expect("sequences name registered passes")
    }
}

/// After an ONNX import: drop what the graph's outputs do not need.
pub const IMPORT: PassSequence =
    PassSequence { name: "import", summary: "after an ONNX import: remove unused nodes and tensors", passes: &["dce"] };

/// Before ONNX export: the inference form (`--keep-bn` disables `fold-bn`, `--dynamic`
/// disables `fold-constants`).
pub const EXPORT: PassSequence = PassSequence {
    name: "export",
    summary: "before ONNX export: fold BN into convs, evaluate what is known before run time",
    passes: &["fold-bn", "fold-constants"],
};

/// `slimc prune`: the channel analyses, then the narrowing.
pub const PRUNE: PassSequence = PassSequence {
    name: "prune",
    summary: "prune: group channels, select groups, propagate masks, rewrite widths",
    passes: &["group-channels", "select-channels", "propagate-masks", "rewrite-widths"],
};

/// The training program: loss, training-mode BN and the backward program, then what the
/// outputs do not need removed.
pub const TRAIN: PassSequence = PassSequence {
    name: "train",
    summary:
        "training program: detection loss (and a teacher's distillation loss), backward program, dead-code removal",
    passes: &["distill", "autodiff", "dce"],
};

/// The whole training step: the training program, then the optimizer's update, accumulation,
/// clipping, sparsity term and EMA (options from the run's context).
pub const TRAIN_STEP: PassSequence = PassSequence {
    name: "train-step",
    summary: "whole training step: detection loss (and a teacher's distillation loss), backward program, optimizer update and EMA, dead-code removal",
    passes: &["distill", "autodiff", "optimizer", "dce"],
};

/// Every sequence.
pub const ALL: [PassSequence; 5] = [IMPORT, EXPORT, PRUNE, TRAIN, TRAIN_STEP];
