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

/// The collective `op` on host tensors: its results, each shaped like its operand.
pub fn run(op: &Op, args: &[&Tensor], comm: &dyn Communicator) -> Result<Vec<Tensor>> {
    let carried = &args[..carried(op, args.len())];
    let scalars = match op {
        Op::AllReduce => Some(args[args.len() - 1].f32s()?),
        _ => None,
    };
    if !communicates(op, scalars, comm) {
        return Ok(carried.iter().map(|&t| t.clone()).collect());
    }
    let mut bucket = Vec::with_capacity(carried.iter().map(|t| t.numel()).sum());
    for t in carried {
        bucket.extend_from_slice(t.f32s()?);
    }
    exchange(op, &mut bucket, comm)?;
    let mut at = 0;
    carried
        .iter()
        .map(|t| {
            let n = t.numel();
            at += n;
            Ok(Tensor::from_f32(t.shape.clone(), bucket[at - n..at].to_vec())?)
        })
        .collect()
}
