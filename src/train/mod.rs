//! Training: one step of the compiled training program, the optimizer and schedule, and the
//! training loop with its results. (The detection loss the program differentiates is an IR op;
//! its meaning is in `slimc_ir::eval::detect_loss`.)

pub mod optim;
pub mod saver;
pub mod step;
pub mod trainer;
