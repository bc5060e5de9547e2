//! The collective ops on the host, shared by every backend: the operands are packed into one
//! bucket, handed to the communicator in one call, and unpacked into the results.

use crate::dist::Communicator;
use anyhow::{bail, Result};
use slimc_ir::{step_scalars, Op, Root, Tensor};

/// Whether `op` is a collective (it runs through the communicator, on the host).
pub fn is_collective(op: &Op) -> bool {
    matches!(op, Op::AllReduce | Op::Broadcast(_))
}

/// The operands of `op` that are carried between ranks (the all-reduce's step scalars are not).
pub fn carried(op: &Op, operands: usize) -> usize {
    match op {
        Op::AllReduce => operands - 1,
        _ => operands,
    }
}

/// Whether the collective `op` communicates on this run: an all-reduce only on a step that
/// updates (its step scalars' flag), a broadcast always; neither in a world of one rank.
pub fn communicates(op: &Op, scalars: Option<&[f32]>, comm: &dyn Communicator) -> bool {
    comm.size() > 1
        && match op {
            Op::AllReduce => scalars.is_some_and(|s| s[step_scalars::STEP] != 0.0),
            _ => true,
        }
}

/// Runs the collective `op` on the packed `bucket` (every carried operand, in order).
pub fn exchange(op: &Op, bucket: &mut [f32], comm: &dyn Communicator) -> Result<()> {
    match op {
        Op::AllReduce => comm.all_reduce_sum(bucket),
        Op::Broadcast(Root { root }) => comm.broadcast(bucket, *root),
        other => bail!("{} is not a collective", other.name()),
    }
}

/// The collective `op` on host tensors: `carried` (its operands but the all-reduce's step
/// `scalars`) are moved in and come back as its results, exchanged in one bucket when it
/// communicates and untouched otherwise.
pub fn run(op: &Op, mut carried: Vec<Tensor>, scalars: Option<&[f32]>, comm: &dyn Communicator) -> Result<Vec<Tensor>> {
    if !communicates(op, scalars, comm) {
        return Ok(carried);
    }
    let mut bucket = Vec::with_capacity(carried.iter().map(|t| t.numel()).sum());
    for t in &carried {
        bucket.extend_from_slice(t.f32s()?);
    }
    exchange(op, &mut bucket, comm)?;
    let mut at = 0;
    for t in &mut carried {
        let v = t.f32s_mut()?;
        let n = v.len();
        v.copy_from_slice(&bucket[at..at + n]);
        at += n;
    }
    Ok(carried)
}
