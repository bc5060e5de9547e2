//! Analyses: facts about a model that passes read and the pass manager computes on demand,
//! caches, and drops when a transform changes the graph without preserving them.
//!
//! The three pruning analyses build on each other: `group-channels` (coupled channels joined
//! into groups) → `select-channels` (which groups go, from the pruning options and the BN
//! gammas) → `propagate-masks` (a keep-mask on every value).

/// An analysis the manager can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Analysis {
    /// Coupled channels joined into groups (union-find over (value, channel)).
    ChannelGroups,
    /// The groups a global |gamma| threshold removes, under the pruning options.
    Selection,
    /// The selection as a keep-mask on every tracked value.
    Masks,
}

impl Analysis {
    /// Every analysis, in dependency order.
    pub const ALL: [Analysis; 3] = [Analysis::ChannelGroups, Analysis::Selection, Analysis::Masks];

    /// The name used in `--passes` (where naming an analysis computes and shows it).
    pub fn name(self) -> &'static str {
        match self {
            Analysis::ChannelGroups => "group-channels",
            Analysis::Selection => "select-channels",
            Analysis::Masks => "propagate-masks",
        }
    }

    /// One line saying what the analysis finds.
    pub fn summary(self) -> &'static str {
        match self {
            Analysis::ChannelGroups => "analysis: join coupled channels into prunable groups",
            Analysis::Selection => {
                "analysis: channel groups to remove by a global |gamma| threshold (--ratio, --policy)"
            }
            Analysis::Masks => "analysis: the selected groups as a keep-mask on every value",
        }
    }

    /// The analysis with this name.
    pub fn by_name(name: &str) -> Option<Analysis> {
        Analysis::ALL.into_iter().find(|a| a.name() == name)
    }
}
