//! The per-step scalars of the optimizer ops: one `f32` vector, the training step's
//! `optimizer.scalars` input, which the host's schedule sets before each micro-batch. The
//! constants are indices into it.

/// Learning rate of parameter group 0 (biases and BN shifts); groups 1 (weights) and 2 (BN
/// scales) follow at `LR + 1` and `LR + 2`.
pub const LR: usize = 0;
/// SGD momentum (ramped during warm-up).
pub const MOMENTUM: usize = 3;
/// The L1 rate on BN gammas (network slimming), after its decay schedule.
pub const SR: usize = 4;
/// The EMA decay `d` of this step.
pub const EMA_DECAY: usize = 5;
/// `1 − d`, computed by the host in double precision (d is close to 1).
pub const EMA_REST: usize = 6;
/// Nonzero when this micro-batch completes an accumulation and the optimizer steps.
pub const STEP: usize = 7;
/// Nonzero on a run's first micro-batch: the accumulator starts from zero (gradients
/// otherwise accumulate across epoch ends, as Ultralytics zeroes them once, before training).
pub const FRESH: usize = 8;
/// AdamW's bias corrections `1 − β1^t` and `1 − β2^t` for this step's count `t`.
pub const ADAM_C1: usize = 9;
/// See [`ADAM_C1`].
pub const ADAM_C2: usize = 10;
/// The vector's length.
pub const LEN: usize = 11;
