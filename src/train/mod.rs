//! Training: the detection loss and its assigner (the CPU semantics of the IR's loss ops).

pub mod assign;
pub mod loss;
pub mod step;
