//! The MPI communicator (rsmpi over Open MPI or MPICH): the world communicator of the ranks a
//! launcher started, used from one thread at a time (MPI_THREAD_SERIALIZED, a mutex).

use super::world::{Communicator as RankComm, World};
use ::mpi::collective::SystemOperation;
use ::mpi::datatype::PartitionMut;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::{Count, Threading};
use anyhow::{anyhow, bail, Result};
use std::sync::{Arc, Mutex};

/// MPI's state; dropping it finalises MPI.
static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

/// The most elements one MPI call carries (counts are C ints).
const CHUNK: usize = 1 << 28;

/// The world communicator behind a mutex, with the send buffer its all-reduce reuses (MPI
/// reduces from one buffer into another).
struct Mpi {
    comm: Mutex<(SimpleCommunicator, Vec<f32>)>,
    rank: usize,
    size: usize,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `connect`), which allows
// calls from any thread as long as no two run at once; every call takes the mutex.
unsafe impl Send for Mpi {}
// SAFETY: as above: shared references only reach the communicator through the mutex.
unsafe impl Sync for Mpi {}

impl Mpi {
    fn comm(&self) -> std::sync::MutexGuard<'_, (SimpleCommunicator, Vec<f32>)> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RankComm for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let mut guard = self.comm();
        let (comm, send) = &mut *guard;
        for part in buf.chunks_mut(CHUNK) {
            send.clear();
            send.extend_from_slice(part);
            comm.all_reduce_into(&send[..], part, SystemOperation::sum());
        }
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        if root >= self.size {
            bail!("broadcast from rank {root} in a world of {} ranks", self.size);
        }
        let guard = self.comm();
        let process = guard.0.process_at_rank(root as i32);
        for part in buf.chunks_mut(CHUNK) {
            process.broadcast_into(part);
        }
        Ok(())
    }
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let guard = self.comm();
        let comm = &guard.0;
        let len = Count::try_from(bytes.len()).map_err(|_| anyhow!("{} bytes are too many to gather", bytes.len()))?;
        let mut counts = vec![0 as Count; self.size];
        comm.all_gather_into(&len, &mut counts[..]);
        let displs: Vec<Count> = counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            comm.all_gather_varcount_into(bytes, &mut part);
        }
        Ok(counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec()).collect())
    }
    fn abort(&self, code: i32) -> ! {
        self.comm().0.abort(code)
    }
}

/// Initialises MPI and describes the world: ranks, the library, ranks sharing this machine.
pub(super) fn connect() -> Result<World> {
    let (universe, threading) = ::mpi::initialize_with_threading(Threading::Serialized)
        .ok_or_else(|| anyhow!("MPI was already initialised"))?;
    if threading < Threading::Serialized {
        bail!("the MPI library offers thread level {threading:?}; slimc needs Serialized");
    }
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let local = world.split_shared(rank as i32);
    let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
    let library = ::mpi::environment::library_version()
        .ok()
        .and_then(|v| v.split(',').next().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "MPI".into());
    *UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()) = Some(universe);
    let comm: Arc<dyn RankComm> = Arc::new(Mpi { comm: Mutex::new((world, vec![])), rank, size });
    Ok(World { comm, local_rank, local_size, library })
}

/// Finalises MPI (once every rank has finished its collectives).
pub(super) fn finalize() {
    drop(UNIVERSE.lock().unwrap_or_else(|p| p.into_inner()).take());
}
