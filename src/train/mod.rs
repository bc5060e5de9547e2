//! Training: the detection loss and its assigner (the CPU semantics of the IR's loss ops), one
//! step, the optimizer and schedule, and the training loop with its results.

pub mod assign;
pub mod loss;
pub mod optim;
pub mod plot;
pub mod step;
pub mod trainer;
