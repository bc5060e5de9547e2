//! The vocabulary of pruning: the options the user gives, the selection the `select-channels`
//! analysis makes and the report `rewrite-widths` leaves.

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

/// The `select-channels` analysis: which channel groups go.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Per group: removed.
    pub pruned: Vec<bool>,
    /// The |gamma| threshold at or below which candidates were removed.
    pub threshold: f32,
    /// Layers whose kept count the floor or rounding raised, one line each.
    pub clamped: Vec<String>,
    /// Channel groups the policy made candidates (the ratio is a share of these).
    pub candidates: usize,
}

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
