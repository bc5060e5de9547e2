//! Backends: each compiles an IR graph once into an [`Executable`] that owns its buffers and its
//! parameters, runs it on named inputs, and reads and writes named tensors. `cpu` is the
//! reference every other backend is tested against.

pub mod cpu;
pub mod memory;

use anyhow::{anyhow, bail, Result};
use slimc_ir::{Model, Tensor};
use std::collections::BTreeMap;

/// Something that runs IR graphs.
pub trait Backend {
    /// The backend's name as `--device` spells it.
    fn name(&self) -> &'static str;
    /// Compiles `model` (graph and tensors) into an executable holding its own copy of the
    /// parameters.
    fn compile(&self, model: &Model) -> Result<Box<dyn Executable>>;
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

/// `--device`: where graphs run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// The wgpu backend (not built yet).
    Gpu,
    /// The GPU when slimc has a backend for it, else the CPU.
    #[default]
    Auto,
}

impl Device {
    /// The concrete device: `auto` picks one; `gpu` is an error until slimc has a GPU backend.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Device::Cpu | Device::Auto => Ok(Device::Cpu),
            Device::Gpu => bail!("--device gpu: the wgpu backend is not built yet; use --device cpu"),
        }
    }

    /// What runs, for a status line: the backend's name, and for `auto` why it was picked.
    pub fn describe(self) -> String {
        match (self, self.resolve()) {
            (Device::Auto, Ok(d)) => format!("{d:?} (auto: slimc has no GPU backend yet)").to_lowercase(),
            (_, Ok(d)) => format!("{d:?}").to_lowercase(),
            (_, Err(e)) => e.to_string(),
        }
    }

    /// The backend for this device (resolved first).
    pub fn backend(self) -> Result<Box<dyn Backend>> {
        match self.resolve()? {
            Device::Cpu => Ok(Box::new(cpu::Cpu)),
            other => bail!("no backend for --device {other:?}"),
        }
    }
}

/// Compiles `model` on `backend` and runs it once on `inputs` (in input order).
pub fn run_once(backend: &dyn Backend, model: &Model, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    backend.compile(model)?.run_in_order(inputs)
}
