//! The options a run of passes carries in its [`crate::PassContext`]: how the pruning analyses
//! choose channels, and what the `optimizer` pass appends.

use serde::{Deserialize, Serialize};

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
    /// A channel split into equal parts keeps equal parts (Ultralytics' `C2f`, `C3k2` and
    /// `C2PSA` chunk their first conv's output in two halves, so only such a model runs in
    /// stock Ultralytics).
    pub even_splits: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            ratio: 0.3,
            policy: Policy::Groups,
            importance: Importance::Max,
            min_channels: 8,
            round_to: 8,
            even_splits: false,
        }
    }
}

/// The update rule (Ultralytics' `optimizer` choice once `auto` is resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateRule {
    /// SGD with Nesterov momentum (dampening 0), L2 weight decay; the momentum is a step scalar.
    Sgd,
    /// AdamW (eps 1e-8), decoupled weight decay, with [`OptimizerOptions::beta1`].
    AdamW,
}

/// How network slimming's L1 term `sr·|γ|` on BN gammas enters training (`--sr-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrMode {
    /// The seed recipe's subgradient: `sr·sign(γ)` added to γ's gradient before clipping and
    /// the update.
    #[default]
    Subgradient,
    /// A proximal step after the update: γ ← sign(γ)·max(|γ| − η·sr, 0), with η the step size the
    /// optimizer applied to γ. Gammas the loss does not hold reach exact zeros.
    Proximal,
}

impl SrMode {
    /// Every mode.
    pub const ALL: [SrMode; 2] = [SrMode::Subgradient, SrMode::Proximal];

    /// The mode's name (as `--sr-mode` and the saved configuration spell it).
    pub fn name(self) -> &'static str {
        match self {
            SrMode::Subgradient => "subgradient",
            SrMode::Proximal => "proximal",
        }
    }
}

/// Network slimming's L1 term on BN gammas.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparsity {
    /// The gammas under the term; `None`: every BN gamma.
    pub gammas: Option<Vec<String>>,
    /// How the term acts.
    pub mode: SrMode,
    /// Proximal mode: in each BN, this many largest gammas are left out of the step.
    pub keep: usize,
}

/// What the `optimizer` pass appends.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerOptions {
    /// SGD or AdamW.
    pub rule: UpdateRule,
    /// AdamW's first-moment decay (unused by SGD).
    pub beta1: f32,
    /// Weight decay of the weights' group (the others have none).
    pub weight_decay: f32,
    /// Global-norm clipping threshold; 0 turns clipping off.
    pub max_norm: f32,
    /// The L1 term, if any.
    pub sparsity: Option<Sparsity>,
    /// Whether to keep Ultralytics' EMA of the weights and BN buffers.
    pub ema: bool,
    /// Data-parallel ranks the program runs on: above 1, the accumulated gradients are summed
    /// across them (one `all_reduce`) before the L1 term, the norm and the update.
    pub world_size: usize,
}

impl Default for OptimizerOptions {
    /// SGD, decay 5e-4, clipping at 10, no sparsity, with the EMA (Ultralytics' SGD defaults),
    /// one rank; β1 0.9 should the rule be AdamW.
    fn default() -> Self {
        OptimizerOptions {
            rule: UpdateRule::Sgd,
            beta1: 0.9,
            weight_decay: 5e-4,
            max_norm: 10.0,
            sparsity: None,
            ema: true,
            world_size: 1,
        }
    }
}

/// What the `distill` pass attaches: the teacher and the term's settings.
#[derive(Clone, Debug)]
pub struct Distillation {
    /// The teacher: an inference model with the student's Detect head (classes, `reg_max`,
    /// strides) and input.
    pub teacher: slimc_ir::Model,
    /// Multiplies both gains ([`crate::DISTILL_GAINS`]).
    pub weight: f32,
    /// Softening temperature.
    pub temperature: f32,
}
