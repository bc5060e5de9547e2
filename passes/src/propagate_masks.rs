//! `propagate-masks`: the kept channels of every group become a mask on every value.

use crate::context::PassContext;
use crate::Pass;
use slimc_ir::{IrError, Model, ValueId};
use std::collections::BTreeMap;

/// Turns `select-channels`' choice (made first if absent) into a keep-mask on every tracked
/// value: channel `c` of value `v` stays unless its group was selected. Invariant: the graph is
/// unchanged; coupled channels get the same decision everywhere.
pub struct PropagateMasks;

impl Pass for PropagateMasks {
    fn name(&self) -> &'static str {
        "propagate-masks"
    }
    fn summary(&self) -> &'static str {
        "turn the selected groups into a keep-mask on every value"
    }
    fn run(&self, model: &mut Model) -> Result<bool, IrError> {
        self.run_in(model, &mut PassContext::default())
    }
    fn run_in(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool, IrError> {
        if cx.selection.is_none() {
            crate::SelectChannels.run_in(model, cx)?;
        }
        let groups = cx.groups.as_ref().expect("select-channels ran");
        let pruned = &cx.selection.as_ref().expect("select-channels ran").pruned;
        let mut masks = BTreeMap::new();
        for (i, of) in groups.of.iter().enumerate() {
            if let Some(of) = of {
                masks.insert(ValueId(i), of.iter().map(|&k| !pruned[k]).collect());
            }
        }
        cx.masks = Some(masks);
        Ok(false)
    }
}
