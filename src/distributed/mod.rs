//! Data-parallel runs across processes: the world of ranks a run belongs to, the communicator
//! the collectives run through (MPI when launched by `mpirun` or `srun`, else the process alone),
//! and how the train set is sharded among the ranks ([`shard`]).

#[cfg(feature = "mpi")]
mod mpi;
pub mod shard;
mod world;

pub use world::{Communicator, Solo, World};

#[cfg(not(feature = "mpi"))]
use anyhow::bail;
use anyhow::Result;
use std::sync::OnceLock;

/// Environment variables by which `mpirun` (Open MPI, MPICH, Intel MPI) and Slurm's `srun` tell
/// a process how many ranks it was started with.
const WORLD_SIZE_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"];

/// How many ranks the launcher says this process was started with (1 outside a launcher).
pub fn launched_size() -> usize {
    WORLD_SIZE_VARS.iter().find_map(|v| std::env::var(v).ok().and_then(|s| s.trim().parse::<usize>().ok())).unwrap_or(1)
}

static WORLD: OnceLock<std::result::Result<World, String>> = OnceLock::new();

/// The process's world, set up on first use: MPI's when a launcher started several ranks (rank 0
/// says so: `ranks: 2 (Open MPI v4.1.4), local ranks 2`), else the process alone.
pub fn world() -> Result<World> {
    WORLD.get_or_init(|| connect().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

#[cfg(feature = "mpi")]
fn connect() -> Result<World> {
    if launched_size() == 1 {
        return Ok(World::solo());
    }
    let world = mpi::connect()?;
    if world.is_root() {
        eprintln!("{}", world.describe());
    }
    // Ranks sharing a machine share its cores (unless RAYON_NUM_THREADS says otherwise).
    if world.local_size > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let _ = rayon::ThreadPoolBuilder::new().num_threads((cores / world.local_size).max(1)).build_global();
    }
    Ok(world)
}

#[cfg(not(feature = "mpi"))]
fn connect() -> Result<World> {
    match launched_size() {
        1 => Ok(World::solo()),
        n => bail!("started as one of {n} ranks, but this slimc was built without MPI (build with --features mpi)"),
    }
}

/// Ends the process's part in its world: MPI is finalised when the run succeeded; a failed rank
/// of several aborts every rank with status 1 (its message already printed).
pub fn finish(ok: bool) {
    if let Some(Ok(w)) = WORLD.get() {
        if !ok && w.size() > 1 {
            w.comm.abort(1);
        }
        #[cfg(feature = "mpi")]
        mpi::finalize();
    }
}
