//! The data-parallel step's collective, measured (run by `benches/distributed.sh speed` under
//! `mpirun -np 2`): for each model, the bytes one optimizer step all-reduces (every trained
//! parameter's accumulated gradient, one f32 bucket) and the time the all-reduce takes, mean of
//! several calls after one warm-up. Rank 0 prints one line per model.
//!
//! `mpirun -np 2 target/release/examples/collective_time yolo11n.yaml yolo11x.yaml`

use anyhow::Result;
use slimc::load::{load_model, LoadOptions};
use slimc_ir::{ParamKind, ValueDef};
use std::time::Instant;

fn main() -> Result<()> {
    let world = slimc::distributed::world()?;
    for name in std::env::args().skip(1) {
        let m = load_model(&name, &LoadOptions::default())?;
        let g = &m.graph;
        let floats: usize = g
            .params
            .iter()
            .filter(|&&p| g.value(p).def == ValueDef::Param(ParamKind::Weight))
            .map(|p| m.tensors[&g.value(*p).name].numel())
            .sum();
        let mut bucket = vec![1.0f32; floats];
        world.comm.all_reduce_sum(&mut bucket)?;
        let calls = 5;
        let t = Instant::now();
        for _ in 0..calls {
            world.comm.all_reduce_sum(&mut bucket)?;
        }
        let secs = t.elapsed().as_secs_f64() / calls as f64;
        if world.is_root() {
            println!(
                "{name}: {} ranks, {floats} parameters, {:.1} MB all-reduced per optimizer step, {:.2} ms per all-reduce ({:.2} GB/s algorithm bandwidth)",
                world.size(),
                floats as f64 * 4.0 / 1e6,
                secs * 1e3,
                floats as f64 * 4.0 / secs / 1e9
            );
        }
    }
    slimc::distributed::finish(true);
    Ok(())
}
