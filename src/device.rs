//! The backend registry: which backend a `--device` choice runs on. It sits above
//! [`crate::backend`] so that dependencies point one way: the CPU and GPU backends implement
//! the backend interface, and this module picks one.

use crate::backend::{cpu, gpu, Backend};
use crate::distributed::World;
use anyhow::{bail, Result};

/// Where graphs run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// The wgpu backend on the best adapter there is, a software one (lavapipe) included.
    Gpu,
    /// The wgpu backend when there is a hardware GPU, else the CPU.
    #[default]
    Auto,
}

impl Device {
    /// The concrete device: `auto` picks the GPU only when there is a hardware adapter; `gpu` is
    /// an error when there is no adapter at all.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Device::Cpu => Ok(Device::Cpu),
            Device::Gpu => gpu::Context::get().map(|_| Device::Gpu),
            Device::Auto if gpu::hardware_present() => Ok(Device::Gpu),
            Device::Auto => Ok(Device::Cpu),
        }
    }

    /// What runs, for a status line: the backend and adapter, and for `auto` why it was picked.
    pub fn describe(self) -> String {
        let adapter = || gpu::Context::get().map(|c| format!("gpu ({}, {})", c.adapter.name, c.adapter.backend));
        match (self, self.resolve()) {
            (_, Err(e)) => e.to_string(),
            (Device::Cpu, _) => "cpu".into(),
            (Device::Gpu, _) => adapter().unwrap_or_else(|e| e.to_string()),
            (_, Ok(Device::Gpu)) => match adapter() {
                Ok(a) => format!("{a} (auto: a hardware GPU)"),
                Err(e) => e.to_string(),
            },
            _ => "cpu (auto: no hardware GPU; a software adapter such as lavapipe only with --device gpu)".into(),
        }
    }

    /// The backend for this device as one rank of `world`: on the GPU, each rank of a machine
    /// takes the adapter of its local rank (an error when there are fewer adapters).
    pub fn backend_in(self, world: &World) -> Result<Box<dyn Backend>> {
        if world.local_size > 1 && self.resolve()? == Device::Gpu {
            let found = gpu::adapters().len();
            if found < world.local_size {
                bail!(
                    "{} ranks share this machine but it has {found} GPU adapter(s): one rank per adapter, or --device cpu",
                    world.local_size
                );
            }
            gpu::use_adapter(world.local_rank);
        }
        self.backend()
    }

    /// The backend for this device (resolved first).
    pub fn backend(self) -> Result<Box<dyn Backend>> {
        match self.resolve()? {
            Device::Cpu => Ok(Box::new(cpu::Cpu)),
            _ => Ok(Box::new(gpu::Gpu::new()?)),
        }
    }
}
