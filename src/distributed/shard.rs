//! How a data-parallel run splits an epoch among its ranks: as PyTorch's `DistributedSampler`
//! (the epoch's order padded by its own start to a multiple of the ranks, rank `r` taking
//! positions `r, r + N, …`), so every rank runs the same number of batches.

/// Rank `rank`'s share of the epoch's `order` among `world` ranks.
pub fn shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    let total = order.len().div_ceil(world) * world;
    order.iter().cycle().take(total).skip(rank).step_by(world).copied().collect()
}

/// The batches of `batch` samples each of `ranks` ranks runs in an epoch of `samples` (the
/// last may be short).
pub fn batches_per_rank(samples: usize, ranks: usize, batch: usize) -> usize {
    samples.div_ceil(ranks).div_ceil(batch)
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shards_as_distributed_sampler() {
        // torch.utils.data.DistributedSampler(range(5), num_replicas=2, shuffle=False): rank 0
        // gets [0, 2, 4], rank 1 [1, 3, 0] (padded with the first index).
        let order = [0, 1, 2, 3, 4];
        assert_eq!(shard(&order, 0, 2), vec![0, 2, 4]);
        assert_eq!(shard(&order, 1, 2), vec![1, 3, 0]);
        // Padding longer than the data repeats it: 2 samples over 5 ranks.
        assert_eq!((0..5).map(|r| shard(&[7, 9], r, 5)).collect::<Vec<_>>(), vec![[7], [9], [7], [9], [7]]);
        assert_eq!(shard(&order, 0, 1), order.to_vec());
        assert!(shard(&[], 0, 3).is_empty());
    }
}
