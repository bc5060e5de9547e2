//! `propagate-masks`: the kept channels of every group become a mask on every value.

use crate::group_channels::ChannelGroups;
use crate::select_channels::Selection;
use slimc_ir::ValueId;
use std::collections::BTreeMap;

/// For each tracked value, which of its channels stay.
pub type Masks = BTreeMap<ValueId, Vec<bool>>;

/// Turns a selection into a keep-mask on every tracked value: channel `c` of value `v` stays
/// unless its group was selected, so coupled channels get the same decision everywhere.
pub fn propagate(groups: &ChannelGroups, selection: &Selection) -> Masks {
    let mut masks = BTreeMap::new();
    for (i, of) in groups.of.iter().enumerate() {
        if let Some(of) = of {
            masks.insert(ValueId(i), of.iter().map(|&k| !selection.pruned[k]).collect());
        }
    }
    masks
}
