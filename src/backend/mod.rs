//! Backends that run IR graphs. `cpu` is the reference every other backend is tested against.

pub mod cpu;
pub mod grad_kernels;
pub mod kernels;
pub mod memory;
