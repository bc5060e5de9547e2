//! One training step of yolo11p (nc 2) against Ultralytics 8.3.253 (tests/fixtures/yolo11p-nc2-step):
//! loss components, every parameter gradient (plain, and with sr 0.01 recovered from the whole
//! training step's update), BN running statistics; on the CPU backend and on the GPU backend
//! (lavapipe where there is no GPU), at the same tolerances.

mod common;

use common::step_parity::{assert_grads_match, StepCase};
use common::{fixture, rel_err};
use slimc::backend::{cpu::Cpu, gpu::Gpu, Backend};
use slimc::train::step::Program;
use slimc_ir::{parse_graph, print_graph, step_scalars as s, Model, Tensor};
use slimc_passes::{accumulator_name, ema_name, OptimizerOptions, Sparsity, SrMode, UpdateRule};
use std::collections::BTreeMap;

/// The yolo11p step fixture (its weights are the forward fixture's).
fn case() -> StepCase {
    StepCase {
        yaml: fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(),
        nc: None,
        weights: fixture("yolo11p-nc2/model.safetensors"),
        dir: fixture("yolo11p-nc2-step"),
    }
}

fn model() -> Model {
    case().model()
}

fn gpu() -> Gpu {
    Gpu::new().expect("a GPU adapter: scripts/setup.sh installs lavapipe where there is no GPU")
}

fn batch() -> (Tensor, Tensor) {
    case().batch()
}

#[test]
fn loss_gradients_and_bn_statistics_match_ultralytics() {
    case().check_gradients(&Cpu);
}

#[test]
fn loss_gradients_and_bn_statistics_match_ultralytics_on_the_gpu() {
    case().check_gradients(&gpu());
}

/// The whole training step (the `optimizer` pass's program) with the seed recipe's subgradient
/// L1 term, SGD at momentum 0, no decay or clipping and learning rate 1000: one micro-batch that
/// steps moves each parameter by −1000·(g + sr·sign(γ)), so the gradient the update used is read
/// back from the parameters and must match Ultralytics' sparse gradients (sr 0.01); the BN
/// statistics are state updates of the program, and the EMA (d = 0.75) blends the old and new
/// weights. A second micro-batch that does not step leaves the weights alone and accumulates.
#[test]
fn whole_step_updates_with_ultralytics_sparse_gradients() {
    whole_step(&Cpu);
}

#[test]
fn whole_step_updates_with_ultralytics_sparse_gradients_on_the_gpu() {
    whole_step(&gpu());
}

fn whole_step(backend: &dyn Backend) {
    let m = model();
    let opts = OptimizerOptions {
        rule: UpdateRule::Sgd,
        beta1: 0.9,
        weight_decay: 0.0,
        max_norm: 0.0,
        sparsity: Some(Sparsity { gammas: None, mode: SrMode::Subgradient, keep: 0 }),
        ema: true,
        world_size: 1,
    };
    let mut p = Program::with_optimizer(&m, backend, opts).unwrap();
    let lr = 1000.0f32;
    let mut v = vec![0.0f32; s::LEN];
    v[s::LR..s::LR + 3].fill(lr);
    (v[s::SR], v[s::EMA_DECAY], v[s::EMA_REST], v[s::STEP], v[s::FRESH]) = (0.01, 0.75, 0.25, 1.0, 1.0);
    let scalars = Tensor::from_f32(vec![s::LEN], v.clone()).unwrap();
    let (images, targets) = batch();
    let r = p.train_step(&images, &targets, &scalars).unwrap();
    case().assert_items_match(&r.items);
    let mut used = BTreeMap::new();
    let mut sq = 0.0f64;
    for name in &p.params {
        let (before, after) = (&m.tensors[name], p.read(name).unwrap());
        let g: Vec<f32> = before.f32s().unwrap().iter().zip(after.f32s().unwrap()).map(|(a, b)| (a - b) / lr).collect();
        sq += g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        let ema = p.read(&ema_name(name)).unwrap();
        for ((&e, &a), &b) in ema.f32s().unwrap().iter().zip(before.f32s().unwrap()).zip(after.f32s().unwrap()) {
            let want = 0.75 * a as f64 + 0.25 * b as f64;
            assert!((e as f64 - want).abs() <= 1e-6 * want.abs().max(1.0), "{name}: EMA {e} vs {want}");
        }
        assert!(p.read(&accumulator_name(name)).unwrap().f32s().unwrap().iter().all(|&x| x == 0.0), "{name}");
        used.insert(name.clone(), Tensor::from_f32(before.shape.clone(), g).unwrap());
    }
    assert_grads_match(&used, &case().reference("grads_sparse.safetensors"));
    assert!(((r.grad_norm as f64 - sq.sqrt()) / sq.sqrt()).abs() < 1e-3, "norm {} vs {}", r.grad_norm, sq.sqrt());
    for (name, want) in &case().reference("bn_after.safetensors") {
        let err = rel_err(&p.read(name).unwrap(), want);
        assert!(err < 1e-5, "{name}: running statistic off by {err:.3e}");
    }
    // No step: the weights stay, the accumulator takes the (plain) gradient.
    let weights = p.params.iter().map(|n| (n.clone(), p.read(n).unwrap())).collect::<BTreeMap<_, _>>();
    v[s::STEP] = 0.0;
    p.train_step(&images, &targets, &Tensor::from_f32(vec![s::LEN], v).unwrap()).unwrap();
    let name = &p.params[0];
    assert_eq!(&p.read(name).unwrap(), &weights[name]);
    assert!(p.read(&accumulator_name(name)).unwrap().f32s().unwrap().iter().any(|&x| x != 0.0));
}

/// A target row naming a class the model does not have is refused by both backends with the
/// same message (the GPU checks the rows on the host, before its kernels index with them).
#[test]
fn a_target_of_an_unknown_class_is_refused_on_both_backends() {
    let (images, mut targets) = batch();
    targets.f32s_mut().unwrap()[1] = 5.0;
    for backend in [&Cpu as &dyn Backend, &gpu()] {
        let Err(err) = Program::new(&model(), backend).unwrap().gradients(&images, &targets) else {
            panic!("{}: a target of class 5 in a 2-class model was accepted", backend.name());
        };
        assert!(format!("{err:#}").contains("class out of range for 2 classes"), "{}: {err:#}", backend.name());
    }
}

#[test]
fn training_program_prints_and_parses_back() {
    let p = Program::new(&model(), &Cpu).unwrap();
    let text = print_graph(&p.model.graph);
    assert!(text.contains("detect_loss_grad(") && text.contains("batch_norm_grad("));
    assert_eq!(parse_graph(&text).unwrap(), p.model.graph);
}
