//! A run's resume state: what `last.slim` (or `epochN.slim`) holds besides its EMA weights — the
//! run's settings and schedule, the raw weights and buffers, the gradient accumulators and the
//! optimizer state — packed after every epoch and written back into a training program to
//! resume.

use super::config::TrainConfig;
use super::schedule::Schedule;
use super::step::Program;
use crate::frontend::weights::safetensors_bytes;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use slimc_ir::{Model, Tensor};
use slimc_passes::{accumulator_name, ema_name, state_names, UpdateRule};
use std::collections::BTreeMap;
use std::path::Path;

/// State written into `last.slim` after every epoch.
#[derive(Serialize, Deserialize)]
pub(super) struct RunState {
    /// The run's settings.
    pub(super) config: TrainConfig,
    /// The last completed epoch, from 0.
    pub(super) epoch: usize,
    /// The best fitness (mAP50-95) so far.
    pub(super) best_fitness: f64,
    /// The host's schedule (saved under its old name, `optimizer`).
    #[serde(rename = "optimizer")]
    pub(super) schedule: Schedule,
    /// EMA updates so far.
    pub(super) ema_updates: u64,
    /// The iteration of the last optimizer step.
    pub(super) last_opt_step: i64,
    /// results.csv rows so far (rewritten on resume, so the file matches the weights).
    pub(super) results: Vec<String>,
}

/// The training state `last.slim` holds: the run state as metadata, the raw weights and
/// buffers (`model/`), the gradient accumulators (`acc/`) and the optimizer state (`opt/`).
pub(super) fn pack_state(
    state: &RunState,
    model: &BTreeMap<String, Tensor>,
    acc: &BTreeMap<String, Tensor>,
    opt: &BTreeMap<String, Vec<f32>>,
) -> Result<Vec<u8>> {
    let mut arrays = vec![];
    for (prefix, tensors) in [("model", model), ("acc", acc)] {
        for (n, t) in tensors {
            arrays.push((format!("{prefix}/{n}"), t.shape.clone(), t.f32s()?));
        }
    }
    for (n, v) in opt {
        arrays.push((format!("opt/{n}"), vec![v.len()], v.as_slice()));
    }
    let meta = std::collections::HashMap::from([("run".to_string(), serde_json::to_string(state)?)]);
    safetensors_bytes(arrays, Some(meta))
}

/// A run's saved state: the run, the raw weights and buffers, the gradient accumulators (empty in
/// files written before they were saved) and the optimizer state.
pub(super) type Unpacked = (RunState, BTreeMap<String, Tensor>, BTreeMap<String, Tensor>, BTreeMap<String, Vec<f32>>);

/// The training state a `last.slim` (or `epochN.slim`) holds besides its EMA weights.
pub struct SavedState {
    /// The last completed epoch, from 0.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// The trained weights and BN running statistics as the optimizer left them.
    pub raw: BTreeMap<String, Tensor>,
    /// Per trained parameter, its optimizer state (SGD's momentum, or AdamW's two moments one
    /// after the other).
    pub optimizer: BTreeMap<String, Vec<f32>>,
}

/// Reads the training state of `model` (a `last.slim` of an unfinished run).
pub fn saved_state(model: &Model) -> Result<SavedState> {
    if model.training_state.is_empty() {
        bail!("no training state (not a last.slim of an unfinished run)");
    }
    let (state, raw, _, optimizer) = unpack_state(&model.training_state)?;
    Ok(SavedState { epoch: state.epoch, steps: state.schedule.steps, raw, optimizer })
}

/// The parts [`pack_state`] wrote.
pub(super) fn unpack_state(bytes: &[u8]) -> Result<Unpacked> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let run = meta.metadata().as_ref().and_then(|m| m.get("run")).ok_or_else(|| anyhow!("no run state"))?;
    let state: RunState = serde_json::from_str(run)?;
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let (mut model, mut acc, mut opt) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(n) = name.strip_prefix("model/") {
            model.insert(n.to_string(), Tensor::from_f32(view.shape().to_vec(), v)?);
        } else if let Some(n) = name.strip_prefix("acc/") {
            acc.insert(n.to_string(), Tensor::from_f32(view.shape().to_vec(), v)?);
        } else if let Some(n) = name.strip_prefix("opt/") {
            opt.insert(n.to_string(), v);
        }
    }
    Ok((state, model, acc, opt))
}

/// Writes a saved run's state into the training program `p`: the EMA (the saved model's own
/// tensors), the raw weights and buffers, the gradient accumulators and the optimizer state of
/// `rule` (`file` names the saved file in errors).
pub(super) fn restore(
    p: &mut Program,
    saved: &Model,
    rule: UpdateRule,
    raw: &BTreeMap<String, Tensor>,
    acc: &BTreeMap<String, Tensor>,
    opt: BTreeMap<String, Vec<f32>>,
    file: &Path,
) -> Result<()> {
    for n in p.params.clone().iter().chain(&p.buffers.clone()) {
        p.write(&ema_name(n), &saved.tensors[n])?;
    }
    for (n, v) in raw {
        p.write(n, v)?;
    }
    // Gradients accumulated since the last step carry on, as in an uninterrupted run.
    for (n, v) in acc {
        p.write(&accumulator_name(n), v)?;
    }
    // Optimizer state as saved: SGD's momentum buffer, or AdamW's moments one after the other.
    for (n, v) in opt {
        let slots = state_names(&n, rule);
        let shape = raw
            .get(&n)
            .map(|t| t.shape.clone())
            .ok_or_else(|| anyhow!("optimizer state for {n}, which is not trained"))?;
        let len: usize = shape.iter().product();
        if v.len() != len * slots.len() {
            bail!("{}: optimizer state of {n} has {} values, expected {}", file.display(), v.len(), len * slots.len());
        }
        for (slot, part) in slots.iter().zip(v.chunks_exact(len.max(1))) {
            p.write(slot, &Tensor::from_f32(shape.clone(), part.to_vec())?)?;
        }
    }
    Ok(())
}

/// The optimizer state of `rule` to save from the training program `p`: per trained parameter,
/// its state tensors one after the other.
pub(super) fn optimizer_state(p: &Program, rule: UpdateRule) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    for n in &p.params {
        let mut v = vec![];
        for s in state_names(n, rule) {
            v.extend_from_slice(p.read(&s)?.f32s()?);
        }
        out.insert(n.clone(), v);
    }
    Ok(out)
}
