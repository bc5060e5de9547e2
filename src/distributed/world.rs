//! The world of ranks a run belongs to and the communicator its collectives run through.

use anyhow::{bail, Result};
use slimc_ir::Model;
use std::sync::Arc;

/// The collectives a data-parallel run needs, over the ranks of one world. Every rank calls
/// each collective in the same order with buffers of the same length.
pub trait Communicator: Send + Sync {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank with the elementwise sum of every rank's `buf`.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` on every rank with rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Every rank's `bytes` (any length), in rank order, on every rank.
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends every rank of the world now with exit status `code` (a rank that failed calls it so
    /// that no other waits forever in a collective).
    fn abort(&self, code: i32) -> !;
}

/// The world of a process that runs alone.
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], root: usize) -> Result<()> {
        if root != 0 {
            bail!("broadcast from rank {root} in a world of one rank");
        }
        Ok(())
    }
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec()])
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The ranks a run belongs to and where this process sits among them.
#[derive(Clone)]
pub struct World {
    /// The communicator of every rank.
    pub comm: Arc<dyn Communicator>,
    /// This process's rank among those on its machine (it picks the GPU adapter).
    pub local_rank: usize,
    /// Ranks on this machine.
    pub local_size: usize,
    /// The MPI library, as it names itself (empty alone).
    pub library: String,
}

impl World {
    /// A process alone.
    pub fn solo() -> World {
        World { comm: Arc::new(Solo), local_rank: 0, local_size: 1, library: String::new() }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.comm.size()
    }

    /// Whether this rank prints and writes the run's files (rank 0).
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The status line: `ranks: 2 (Open MPI v4.1.4, …), local ranks 2`.
    pub fn describe(&self) -> String {
        format!("ranks: {} ({}), local ranks {}", self.size(), self.library, self.local_size)
    }

    /// Rank 0's `bytes` on every rank (what the others pass is ignored).
    pub fn from_root(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        if self.size() == 1 {
            return Ok(bytes);
        }
        let mine = if self.is_root() { bytes } else { vec![] };
        Ok(self.comm.all_gather(&mine)?.swap_remove(0))
    }

    /// Rank 0's model (made by `make` on rank 0 only) on every rank.
    pub fn model_from_root(&self, make: impl FnOnce() -> Result<Model>) -> Result<Model> {
        if self.size() == 1 {
            return make();
        }
        let bytes = if self.is_root() { make()?.to_bytes() } else { vec![] };
        Ok(Model::from_bytes(&self.from_root(bytes)?, "rank 0's model")?)
    }

    /// Checks that every rank holds the same `what` (by `fingerprint`), naming the ranks that
    /// differ from rank 0 and what each said (`detail`).
    pub fn agree(&self, what: &str, fingerprint: &str, detail: &str) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let all = self.comm.all_gather(&serde_json::to_vec(&(fingerprint, detail))?)?;
        let all: Vec<(String, String)> = all.iter().map(|b| serde_json::from_slice(b)).collect::<Result<_, _>>()?;
        let root = &all[0].0;
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, (f, _))| f != root)
            .map(|(r, (f, d))| format!("rank {r}: {f}{}", if d.is_empty() { String::new() } else { format!(" ({d})") }))
            .collect();
        if !differ.is_empty() {
            bail!("the ranks disagree on {what}: rank 0 has {root}; {}", differ.join("; "));
        }
        Ok(())
    }
}
