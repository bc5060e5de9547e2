//! The whole prune pass pipeline (group-channels, select-channels, propagate-masks,
//! rewrite-widths) on yolo11x (nc 80, random BN gammas so that selection has work to do), ratio
//! 0.5, policy groups. The model clone each iteration needs is made outside the timing.
//!
//! Run: `cargo bench --bench prune`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::{Rng, SeedableRng};
use slimc::load::{load_model, LoadOptions};
use slimc_ir::Op;
use slimc_passes::{PassContext, PassManager, Policy, PruneOptions};

fn prune(c: &mut Criterion) {
    let mut model = load_model("yolo11x.yaml", &LoadOptions::default()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let gammas: Vec<String> = model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .map(|n| model.graph.value(n.inputs[1]).name.clone())
        .collect();
    for g in gammas {
        model.tensors.get_mut(&g).unwrap().f32s_mut().unwrap().iter_mut().for_each(|v| *v = rng.random_range(0.0..1.0));
    }
    let pm = PassManager::parse("group-channels,select-channels,propagate-masks,rewrite-widths").unwrap();
    let opts = PruneOptions { ratio: 0.5, policy: Policy::Groups, ..Default::default() };
    let mut group = c.benchmark_group("prune-passes");
    group.sample_size(20);
    group.bench_function("yolo11x/ratio0.5/groups", |b| {
        b.iter_batched(
            || model.clone(),
            |mut m| {
                let mut cx = PassContext { prune: opts.clone(), ..Default::default() };
                pm.run_with(&mut m, &mut cx).unwrap();
                m
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, prune);
criterion_main!(benches);
