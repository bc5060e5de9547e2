//! The collective ops ([`Op::collective`](slimc_ir::Op::collective)) on the host, shared by every
//! backend: the operands are packed into one
//! bucket, handed to the communicator in one call, and unpacked into the results.

use crate::distributed::Communicator;
use anyhow::Result;
use slimc_ir::{step_scalars, Collective, Tensor};

/// The operands of collective `c` that are carried between ranks (the all-reduce's step
/// scalars are not).
pub fn carried(c: Collective, operands: usize) -> usize {
    match c {
        Collective::AllReduce => operands - 1,
        Collective::Broadcast { .. } => operands,
    }
}

/// Whether collective `c` communicates on this run: an all-reduce only on a step that updates
/// (its step scalars' flag), a broadcast always; neither in a world of one rank.
pub fn communicates(c: Collective, scalars: Option<&[f32]>, comm: &dyn Communicator) -> bool {
    comm.size() > 1
        && match c {
            Collective::AllReduce => scalars.is_some_and(|s| s[step_scalars::STEP] != 0.0),
            Collective::Broadcast { .. } => true,
        }
}

/// Runs collective `c` on the packed `bucket` (every carried operand, in order).
pub fn exchange(c: Collective, bucket: &mut [f32], comm: &dyn Communicator) -> Result<()> {
    match c {
        Collective::AllReduce => comm.all_reduce_sum(bucket),
        Collective::Broadcast { root } => comm.broadcast(bucket, root),
    }
}

/// Collective `c` on host tensors: `carried` (its operands but the all-reduce's step `scalars`)
/// are moved in and come back as its results, exchanged in one bucket when it communicates and
/// untouched otherwise.
pub fn run(
    c: Collective,
    mut carried: Vec<Tensor>,
    scalars: Option<&[f32]>,
    comm: &dyn Communicator,
) -> Result<Vec<Tensor>> {
    if !communicates(c, scalars, comm) {
        return Ok(carried);
    }
    let mut bucket = Vec::with_capacity(carried.iter().map(|t| t.numel()).sum());
    for t in &carried {
        bucket.extend_from_slice(t.f32s()?);
    }
    exchange(c, &mut bucket, comm)?;
    let mut at = 0;
    for t in &mut carried {
        let v = t.f32s_mut()?;
        let n = v.len();
        v.copy_from_slice(&bucket[at..at + n]);
        at += n;
    }
    Ok(carried)
}
