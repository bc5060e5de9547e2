//! Backends: each compiles an IR graph once into an [`Executable`] that owns its buffers and its
//! parameters, runs it on named inputs, and reads and writes named tensors. `cpu` is the
//! reference every other backend is tested against.

pub mod budget;
pub mod collective;
pub mod compiled;
pub mod cpu;
pub mod fusion;
pub mod gpu;

use crate::distributed::{Communicator, Solo};
use anyhow::{anyhow, bail, Result};
use slimc_ir::{Graph, Model, Tensor, TensorType};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Something that runs IR graphs.
pub trait Backend {
    /// The backend's name as `--device` spells it.
    fn name(&self) -> &'static str;
    /// Compiles `model` (graph and tensors) into an executable holding its own copy of the
    /// parameters, running any collective op through `comm`.
    fn compile_in(&self, model: &Model, comm: Arc<dyn Communicator>) -> Result<Box<dyn Executable>>;

    /// How many images an inference run (images independent of each other) should take at a
    /// time for speed; None: as many as there are.
    fn inference_batch(&self) -> Option<usize> {
        None
    }

    /// Compiles `model` for a process alone (collectives hand their operands on).
    fn compile(&self, model: &Model) -> Result<Box<dyn Executable>> {
        self.compile_in(model, Arc::new(Solo))
    }
}

/// A compiled graph with its parameters and buffers. The graph's state updates (outputs named
/// `<param>.next`, [`slimc_ir::Graph::state_updates`]: BN running statistics, the optimizer's
/// accumulators and moments, the trained weights, the EMA) are applied by the executable to
/// its own parameters after each run and are not returned: state stays where the program runs.
pub trait Executable: Send {
    /// The graph's input names, in order.
    fn input_names(&self) -> Vec<String>;
    /// The names of the graph's results (its outputs other than state updates), in the order
    /// [`Executable::run`] returns them.
    fn output_names(&self) -> Vec<String>;
    /// Runs the graph on one tensor per input, in the order of [`Executable::input_names`];
    /// applies the state updates and returns the results in order.
    fn run(&mut self, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;
    /// A copy of the named parameter (weights, BN statistics, any state the graph holds).
    fn read(&self, name: &str) -> Result<Tensor>;
    /// Replaces the named parameter; its shape must not change.
    fn write(&mut self, name: &str, value: &Tensor) -> Result<()>;

    /// Runs on owned tensors in input order.
    fn run_in_order(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.run(&inputs.iter().collect::<Vec<_>>())
    }

    /// Runs on tensors matched to the inputs by name; returns the outputs by name.
    fn run_named(&mut self, inputs: &[(&str, &Tensor)]) -> Result<BTreeMap<String, Tensor>> {
        let names = self.input_names();
        if names.len() != inputs.len() {
            bail!("the model takes {} input(s) ({}), given {}", names.len(), names.join(", "), inputs.len());
        }
        let ordered = names
            .iter()
            .map(|n| {
                let mut hits = inputs.iter().filter(|(k, _)| k == n);
                match (hits.next(), hits.next()) {
                    (Some((_, t)), None) => Ok(*t),
                    (None, _) => Err(anyhow!("no tensor given for input {n}")),
                    _ => Err(anyhow!("input {n} given twice")),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.output_names().into_iter().zip(self.run(&ordered)?).collect())
    }
}

/// Compiles `model` on `backend` and runs it once on `inputs` (in input order).
pub fn run_once(backend: &dyn Backend, model: &Model, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    backend.compile(model)?.run_in_order(inputs)
}

/// Checks the inputs' count and types against the graph's (an image input's height and width
/// may differ from the graph's).
pub fn check_inputs(g: &Graph, inputs: &[&Tensor]) -> Result<()> {
    if inputs.len() != g.inputs.len() {
        bail!("the model takes {} input(s), given {}", g.inputs.len(), inputs.len());
    }
    for (&v, t) in g.inputs.iter().zip(inputs) {
        let ty = g.ty(v);
        let ok = ty.rank() == t.shape.len()
            && ty
                .shape
                .iter()
                .zip(&t.shape)
                .enumerate()
                .all(|(i, (d, &n))| d.fixed().is_none_or(|f| f == n || (i >= 2 && ty.rank() == 4)));
        if !ok || t.dtype() != ty.dtype {
            bail!("input %{} is {}, the model takes {}", g.value(v).name, t.ty(), ty);
        }
    }
    Ok(())
}

/// What an executable made for each set of input shapes it met (a memory plan, a lowered
/// program), the most recently used last, at most [`ByShape::KEPT`] of them.
pub struct ByShape<T> {
    entries: Vec<(Vec<Vec<usize>>, Arc<T>)>,
}

impl<T> Default for ByShape<T> {
    fn default() -> Self {
        ByShape { entries: vec![] }
    }
}

impl<T> ByShape<T> {
    /// How many are kept (training and validation use one or two).
    pub const KEPT: usize = 4;

    /// The entry for `inputs`' shapes, made by `make` from their types on first use.
    pub fn get(&mut self, inputs: &[&Tensor], make: impl FnOnce(&[TensorType]) -> Result<T>) -> Result<Arc<T>> {
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
        if let Some(at) = self.entries.iter().position(|(k, _)| *k == key) {
            let entry = self.entries.remove(at);
            self.entries.push(entry);
        } else {
            let types: Vec<TensorType> = inputs.iter().map(|t| t.ty()).collect();
            let made = Arc::new(make(&types)?);
            if self.entries.len() == Self::KEPT {
                self.entries.remove(0);
            }
            self.entries.push((key, made));
        }
        Ok(self.entries.last().expect("just pushed").1.clone())
    }
}

/// Time and calls per op (`SLIMC_PROFILE_OPS`), printed as a table when dropped. The calls of a
/// run whose memory grows are kept apart: they fault in fresh pages (in training, the first
/// step alone took more time in SiLU than the rest of a 2-epoch run).
#[derive(Default)]
pub struct OpProfile {
    rows: std::collections::HashMap<String, (std::time::Duration, usize)>,
    first_runs: (std::time::Duration, usize),
}

impl OpProfile {
    /// A profile when `SLIMC_PROFILE_OPS` is set.
    pub fn from_env() -> Option<OpProfile> {
        std::env::var_os("SLIMC_PROFILE_OPS").map(|_| OpProfile::default())
    }

    /// Counts one call of `op` taking `t`; `first`: in a run whose memory grew.
    pub fn add(&mut self, op: &str, t: std::time::Duration, first: bool) {
        let e = if first { &mut self.first_runs } else { self.rows.entry(op.to_string()).or_default() };
        e.0 += t;
        e.1 += 1;
    }
}

impl Drop for OpProfile {
    fn drop(&mut self) {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0));
        let total: f64 = rows.iter().map(|r| r.1 .0.as_secs_f64()).sum();
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(24);
        eprintln!("{:<width$} {:>10} {:>8} {:>10}", "op (SLIMC_PROFILE_OPS)", "seconds", "share", "calls");
        for (op, (t, n)) in rows {
            let t = t.as_secs_f64();
            eprintln!("{op:<width$} {t:>10.3} {:>7.1}% {n:>10}", 100.0 * t / total.max(1e-12));
        }
        let (t, n) = self.first_runs;
        if n > 0 {
            eprintln!("(not above: {:.3} s in {n} calls of runs whose memory grew)", t.as_secs_f64());
        }
    }
}
