//! Training: the run's settings, the host's schedule, one step of the compiled training program,
//! the resume state, the saver of model files, and the training loop with its results. (The
//! detection loss the program differentiates is an IR op; its meaning is in
//! `slimc_ir::eval::detect_loss`.)

pub mod config;
pub mod resume;
pub mod saver;
pub mod schedule;
pub mod step;
pub mod trainer;
