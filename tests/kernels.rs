//! One kernel test suite for every backend: each op kind of the IR as a one-node program on
//! seeded random operands (odd sizes, stride 2, depthwise and grouped convolutions, batches
//! above 1, a tensor larger than one workgroup-grid dimension holds), run on the backend and
//! compared with its reference: the IR's reference semantics for the CPU backend, the CPU
//! backend for the GPU backend (on lavapipe where there is no GPU). An op kind without a case,
//! or one the backend fails, fails the suite; nothing is skipped (and the GPU backend's lowering
//! matches every op kind exhaustively, so a new op does not compile without its kernel).

mod common;

use common::single_op::single_op;
use rand::{Rng, SeedableRng};
use slimc::backend::cpu::{isa, Cpu};
use slimc::backend::{gpu, run_once, Backend};
use slimc_ir::eval::eval;
use slimc_ir::step_scalars as ss;
use slimc_ir::{
    Anchors, Axis, BatchNorm, Binary, DetectLoss, Distill, Pool, Reshape, Root, Slice, Split, Transpose, Unary,
    UnaryGrad, Upsample,
};
use slimc_ir::{Conv2d, Model, Op, OpKind, ReshapeDim, Tensor, Update, ALL_OP_KINDS};

/// One op on its operands.
struct Case {
    name: String,
    op: Op,
    args: Vec<Tensor>,
}

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()).unwrap()
}

fn map(t: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::from_f32(t.shape.clone(), t.f32s().unwrap().iter().map(|&v| f(v)).collect()).unwrap()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    map(&random(shape, seed), |v| v.abs() + 0.5)
}

fn conv(stride: usize, pad: [usize; 4], dilation: usize, groups: usize) -> Conv2d {
    Conv2d { stride: [stride; 2], pad, dilation: [dilation; 2], groups }
}

/// The step scalars of an optimizer op: stepping, not the run's first micro-batch.
fn scalars(step: bool) -> Tensor {
    let mut v = vec![0.0f32; ss::LEN];
    v[ss::LR..ss::LR + 3].copy_from_slice(&[0.01, 0.02, 0.03]);
    v[ss::MOMENTUM] = 0.9;
    v[ss::SR] = 1e-2;
    v[ss::EMA_DECAY] = 0.9;
    v[ss::EMA_REST] = 0.1;
    v[ss::STEP] = step as u8 as f32;
    v[ss::ADAM_C1] = 0.19;
    v[ss::ADAM_C2] = 0.002;
    Tensor::from_f32(vec![ss::LEN], v).unwrap()
}

/// Detect-head level maps (reg_max 16, 2 classes) for images of 64×48 at strides 8 and 16, and
/// targets: (image, class, cx, cy, w, h), normalised. The distributions peak near 2 bins, so the
/// predicted boxes overlap the targets, and a large box holds more anchors than the top 10 and
/// shares some with another (the assigner picks and resolves).
fn detect_operands(seed: u64) -> Vec<Tensor> {
    let targets = vec![
        0.0, 0.0, 0.30, 0.40, 0.20, 0.30, //
        0.0, 1.0, 0.70, 0.60, 0.35, 0.25, //
        1.0, 1.0, 0.50, 0.50, 0.40, 0.50, //
        1.0, 0.0, 0.50, 0.50, 0.90, 0.90,
    ];
    let level = |shape: [usize; 4], seed: u64| {
        let noise = random(&shape, seed);
        let plane = shape[2] * shape[3];
        let v: Vec<f32> = noise
            .f32s()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &e)| match (i / plane) % shape[1] {
                c if c < 64 => -0.5 * ((c % 16) as f32 - 2.0).powi(2) + 0.5 * e,
                _ => 2.0 * e,
            })
            .collect();
        Tensor::from_f32(shape.to_vec(), v).unwrap()
    };
    vec![level([2, 66, 6, 8], seed), level([2, 66, 3, 4], seed + 1), Tensor::from_f32(vec![4, 6], targets).unwrap()]
}

fn cases() -> Vec<Case> {
    let mut out = vec![];
    let mut add = |name: &str, op: Op, args: Vec<Tensor>| out.push(Case { name: name.into(), op, args });
    let r = random;

    // Convolutions: pointwise; 3×3 stride 2 on odd sizes with a bias and more than one tile of
    // output channels; depthwise 5×5 stride 2; grouped; dilated with asymmetric padding; a batch
    // of 3.
    let geometries = [
        ("1x1", [2, 6, 5, 7], [4, 6, 1, 1], conv(1, [0; 4], 1, 1)),
        ("3x3/2 odd, 70 channels", [2, 5, 9, 7], [70, 5, 3, 3], conv(2, [1; 4], 1, 1)),
        ("5x5/2 depthwise", [1, 6, 7, 9], [6, 1, 5, 5], conv(2, [2; 4], 1, 6)),
        ("grouped", [1, 4, 6, 6], [6, 2, 3, 3], conv(1, [1; 4], 1, 2)),
        ("dilated, asymmetric padding", [1, 3, 10, 9], [2, 3, 3, 2], conv(1, [0, 1, 2, 0], 2, 1)),
        ("batch 3", [3, 8, 11, 5], [9, 8, 3, 3], conv(1, [1; 4], 1, 1)),
        ("3x3/2 stem, several tiles", [1, 3, 40, 36], [16, 3, 3, 3], conv(2, [1; 4], 1, 1)),
    ];
    for (k, (what, xs, ws, c)) in geometries.into_iter().enumerate() {
        let s = 100 * k as u64;
        let (x, w) = (r(&xs, s), r(&ws, s + 1));
        add(&format!("conv2d {what}"), Op::Conv2d(c.clone()), vec![x.clone(), w.clone()]);
        add(&format!("conv2d {what} + bias"), Op::Conv2d(c.clone()), vec![x.clone(), w.clone(), r(&[ws[0]], s + 2)]);
        let y = eval(&Op::Conv2d(c.clone()), &[&x, &w]).unwrap().remove(0);
        let dy = r(&y.shape, s + 3);
        add(
            &format!("conv2d_grad_input {what}"),
            Op::Conv2dGradInput(c.clone()),
            vec![dy.clone(), w.clone(), x.clone()],
        );
        add(&format!("conv2d_grad_weight {what}"), Op::Conv2dGradWeight(c.clone()), vec![dy, x, w]);
    }

    // Batch norm, inference and training, and its gradient.
    let bn = |xs: &[usize], s: u64| {
        let c = xs[1];
        vec![r(xs, s), positive(&[c], s + 1), r(&[c], s + 2), r(&[c], s + 3), positive(&[c], s + 4)]
    };
    add("batch_norm", Op::BatchNorm(BatchNorm { eps: 1e-3, momentum: 0.03 }), bn(&[2, 5, 7, 3], 1000));
    let train = bn(&[3, 4, 5, 7], 1100);
    add("batch_norm_train", Op::BatchNormTrain(BatchNorm { eps: 1e-3, momentum: 0.03 }), train.clone());
    let stats =
        eval(&Op::BatchNormTrain(BatchNorm { eps: 1e-3, momentum: 0.03 }), &train.iter().collect::<Vec<_>>()).unwrap();
    let dy = r(&[3, 4, 5, 7], 1106);
    add(
        "batch_norm_grad",
        Op::BatchNormGrad,
        vec![dy, train[0].clone(), train[1].clone(), stats[1].clone(), stats[2].clone()],
    );

    // Activations and their gradients; one tensor larger than a 65,535-workgroup grid row.
    let x = r(&[2, 3, 5, 7], 1200);
    add("silu", Op::Unary(Unary::Silu), vec![x.clone()]);
    add("silu beyond one grid dimension", Op::Unary(Unary::Silu), vec![r(&[1, 16, 1025, 1025], 1201)]);
    add("sigmoid", Op::Unary(Unary::Sigmoid), vec![x.clone()]);
    add("silu_grad", Op::UnaryGrad(UnaryGrad::Silu), vec![r(&[2, 3, 5, 7], 1202), x.clone()]);
    add(
        "sigmoid_grad",
        Op::UnaryGrad(UnaryGrad::Sigmoid),
        vec![r(&[2, 3, 5, 7], 1203), map(&x, |v| 1.0 / (1.0 + (-v).exp()))],
    );
    add("sign", Op::Unary(Unary::Sign), vec![map(&r(&[3, 17], 1204), |v| if v.abs() < 0.2 { 0.0 } else { v })]);

    // Broadcasting arithmetic.
    for (k, op) in [Op::Binary(Binary::Add), Op::Binary(Binary::Sub), Op::Binary(Binary::Mul), Op::Binary(Binary::Div)]
        .into_iter()
        .enumerate()
    {
        let s = 1300 + 10 * k as u64;
        let b = if matches!(op, Op::Binary(Binary::Div)) { positive(&[3, 1, 7], s + 1) } else { r(&[3, 1, 7], s + 1) };
        add(&format!("{} broadcast", op.name()), op.clone(), vec![r(&[2, 3, 5, 7], s), b]);
        add(&format!("{} scalar first", op.name()), op, vec![positive(&[1], s + 2), positive(&[4, 6], s + 3)]);
    }

    // Data movement.
    let parts = vec![r(&[2, 3, 4, 5], 1400), r(&[2, 1, 4, 5], 1401), r(&[2, 2, 4, 5], 1402)];
    add("concat channels", Op::Concat(Axis { axis: 1 }), parts);
    add("concat last axis", Op::Concat(Axis { axis: 2 }), vec![r(&[2, 3, 7], 1403), r(&[2, 3, 2], 1404)]);
    add("split", Op::Split(Split { axis: 1, sizes: vec![2, 3, 1] }), vec![r(&[2, 6, 3, 5], 1405)]);
    let slice = Op::Slice(Slice { axes: vec![2, 3], starts: vec![1, -1], ends: vec![6, -9], steps: vec![2, -2] });
    add("slice, reversed steps", slice.clone(), vec![r(&[2, 3, 7, 9], 1406)]);
    add(
        "slice_grad",
        Op::SliceGrad(Slice { axes: vec![2, 3], starts: vec![1, -1], ends: vec![6, -9], steps: vec![2, -2] }),
        {
            let x = r(&[2, 3, 7, 9], 1407);
            let y = eval(&slice, &[&x]).unwrap().remove(0);
            vec![r(&y.shape, 1408), x]
        },
    );
    add("transpose", Op::Transpose(Transpose { perm: vec![0, 2, 3, 1] }), vec![r(&[2, 3, 4, 5], 1409)]);
    add(
        "reshape",
        Op::Reshape(Reshape {
            shape: vec![ReshapeDim::Of { input: 0, axis: 0 }, ReshapeDim::Fixed(3), ReshapeDim::Infer],
        }),
        vec![r(&[2, 3, 4, 5], 1410)],
    );
    add("upsample_nearest", Op::UpsampleNearest(Upsample { scale: [2, 2] }), vec![r(&[2, 3, 5, 7], 1411)]);
    add("upsample_nearest_grad", Op::UpsampleNearestGrad(Upsample { scale: [2, 2] }), vec![r(&[2, 3, 10, 14], 1412)]);
    add("sum_to", Op::SumTo, vec![r(&[2, 3, 4, 5], 1413), r(&[3, 1, 5], 1414)]);

    // Pooling.
    let sppf = Op::MaxPool2d(Pool { kernel: [5, 5], stride: [1, 1], pad: [2; 4] });
    let x = r(&[2, 3, 9, 7], 1500);
    add("max_pool2d 5x5/1", sppf.clone(), vec![x.clone()]);
    add("max_pool2d 2x2/2 odd", Op::MaxPool2d(Pool { kernel: [2, 2], stride: [2, 2], pad: [0; 4] }), vec![x.clone()]);
    add(
        "max_pool2d_grad",
        Op::MaxPool2dGrad(Pool { kernel: [5, 5], stride: [1, 1], pad: [2; 4] }),
        vec![r(&[2, 3, 9, 7], 1501), x],
    );

    // Matrix products and softmax.
    add("matmul broadcast", Op::MatMul, vec![r(&[2, 3, 4, 5], 1600), r(&[1, 3, 5, 6], 1601)]);
    let x = r(&[2, 3, 4, 9], 1602);
    add("softmax last axis", Op::Softmax(Axis { axis: 3 }), vec![x.clone()]);
    add("softmax inner axis", Op::Softmax(Axis { axis: 1 }), vec![x.clone()]);
    let y = eval(&Op::Softmax(Axis { axis: 3 }), &[&x]).unwrap().remove(0);
    add("softmax_grad", Op::SoftmaxGrad(Axis { axis: 3 }), vec![r(&[2, 3, 4, 9], 1603), y]);

    // The detect head: anchors, the loss and its gradient.
    add(
        "anchors",
        Op::Anchors(Anchors { strides: vec![8.0, 16.0], offset: 0.5 }),
        vec![r(&[1, 4, 6, 8], 1700), r(&[1, 4, 3, 4], 1701)],
    );
    let loss = |grad: bool| {
        let (strides, gains, reg_max) = (vec![8.0, 16.0], vec![7.5, 0.5, 1.5], 16);
        if grad {
            Op::DetectLossGrad(DetectLoss { strides, gains, reg_max })
        } else {
            Op::DetectLoss(DetectLoss { strides, gains, reg_max })
        }
    };
    add("detect_loss", loss(false), detect_operands(1800));
    add("detect_loss_grad", loss(true), detect_operands(1800));
    // Distillation: a student's two level maps against a teacher's (different maps of the same
    // kind: peaked distributions, some confident class logits).
    let kd = Distill { gains: vec![0.5, 1.5], temperature: 2.0, reg_max: 16 };
    let mut maps = detect_operands(1810);
    maps.truncate(2);
    maps.extend(detect_operands(1820).into_iter().take(2).map(|t| map(&t, |v| 3.0 * v)));
    add("distill_loss", Op::DistillLoss(kd.clone()), maps.clone());
    add("distill_loss_grad", Op::DistillLossGrad(kd), maps);

    // The optimizer: accumulation, the global norm, SGD and AdamW (clipped, decayed, with the
    // proximal step), the EMA.
    let (p, g) = (r(&[4, 3, 3, 3], 1900), r(&[4, 3, 3, 3], 1901));
    add("accumulate", Op::Accumulate, vec![r(&[4, 3, 3, 3], 1902), g.clone(), scalars(false)]);
    add("global_norm", Op::GlobalNorm, vec![g.clone(), r(&[7], 1903)]);
    let norm = Tensor::from_f32(vec![], vec![3.0]).unwrap();
    let update = |prox, beta1| Update { group: 1, weight_decay: 5e-4, max_norm: 1.0, prox, beta1 };
    add(
        "sgd_update",
        Op::SgdUpdate(update(None, 0.0)),
        vec![p.clone(), g.clone(), norm.clone(), scalars(true), r(&[4, 3, 3, 3], 1904)],
    );
    add(
        "adamw_update",
        Op::AdamWUpdate(update(Some(2), 0.9)),
        vec![p.clone(), g, norm, scalars(true), r(&[4, 3, 3, 3], 1905), positive(&[4, 3, 3, 3], 1906)],
    );
    add("ema_update", Op::EmaUpdate, vec![r(&[4, 3, 3, 3], 1907), p, scalars(true)]);

    // The collectives, in a world of one rank (the reference semantics).
    add("all_reduce", Op::AllReduce, vec![r(&[4, 3, 3, 3], 1908), r(&[5], 1909), scalars(true)]);
    add("broadcast", Op::Broadcast(Root { root: 0 }), vec![r(&[2, 3], 1910), r(&[7], 1911)]);
    out
}

/// A one-node program: every operand an input, every result an output.
fn program(case: &Case) -> Model {
    single_op(&case.op, &case.args.iter().map(Tensor::ty).collect::<Vec<_>>()).unwrap()
}

/// Runs every case on `backend`, compares with `reference` (relative to each result's largest
/// magnitude, at least 1e-2: forward ops to 1e-5, gradients and the loss to 1e-4), and returns
/// the failures.
fn suite(backend: &dyn Backend, reference: &dyn Fn(&Case) -> Vec<Tensor>, only: &[OpKind]) -> Vec<String> {
    let mut failures = vec![];
    for case in cases().into_iter().filter(|c| only.is_empty() || only.contains(&c.op.kind())) {
        let tol = match case.op.kind() {
            k if k.name().ends_with("_grad")
                || matches!(k, OpKind::DetectLoss | OpKind::DistillLoss | OpKind::SumTo) =>
            {
                1e-4
            }
            _ => 1e-5,
        };
        let want = reference(&case);
        let got = match run_once(backend, &program(&case), &case.args) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: {e:#}", case.name));
                continue;
            }
        };
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            if g.shape != w.shape {
                failures.push(format!("{} result {k}: shape {:?}, want {:?}", case.name, g.shape, w.shape));
                continue;
            }
            let (g, w) = (g.f32s().unwrap(), w.f32s().unwrap());
            let scale = w.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
            let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            if !(worst <= tol * scale) {
                failures
                    .push(format!("{} result {k}: off by {worst:e} (scale {scale:e}, tolerance {tol:e})", case.name));
            }
        }
    }
    failures
}

#[test]
fn every_op_kind_has_a_case() {
    let covered: Vec<OpKind> = cases().iter().map(|c| c.op.kind()).collect();
    let missing: Vec<&str> = ALL_OP_KINDS.iter().filter(|k| !covered.contains(k)).map(|k| k.name()).collect();
    assert!(missing.is_empty(), "op kinds without a case: {missing:?}");
}

/// The CPU backend at every vector level this CPU has (the baseline, AVX2 + FMA, AVX-512 on
/// x86-64), each against the IR's scalar reference; fails if a level the CPU can run did not run
/// a kernel.
#[test]
fn the_cpu_backend_matches_the_reference_semantics_at_every_vector_level() {
    let levels = isa::supported();
    let mut failures = vec![];
    for &level in &levels {
        isa::force(level);
        let f = suite(&Cpu, &|c| eval(&c.op, &c.args.iter().collect::<Vec<_>>()).unwrap(), &[]);
        failures.extend(f.into_iter().map(|f| format!("{}: {f}", level.name())));
        assert!(isa::ran(level), "no kernel ran with the {} level", level.name());
    }
    isa::force(isa::widest());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("vector levels checked: {:?}", levels.iter().map(|l| l.name()).collect::<Vec<_>>());
}

/// The levels slimc offers are the ones the CPU reports, asked independently of `isa`.
#[test]
fn the_vector_levels_are_the_ones_the_cpu_has() {
    let have = isa::supported();
    assert_eq!(have[0], isa::Isa::Baseline);
    #[cfg(target_arch = "x86_64")]
    {
        // The flags Linux lists for the first CPU.
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or_default().to_string();
        let f = |s: &str| flags.split_whitespace().any(|w| w == s);
        if !flags.is_empty() {
            assert_eq!(have.contains(&isa::Isa::Avx2), f("avx2") && f("fma"), "{have:?}");
            let avx512 = ["avx512f", "avx512bw", "avx512dq", "avx512vl"].iter().all(|s| f(s)) && f("fma");
            assert_eq!(have.contains(&isa::Isa::Avx512), avx512, "{have:?}");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(have, vec![isa::Isa::Baseline]);
}

fn gpu() -> gpu::Gpu {
    gpu::Gpu::new().expect("a GPU adapter: scripts/setup.sh installs lavapipe where there is no GPU")
}

#[test]
fn the_gpu_backend_matches_the_cpu_backend() {
    let gpu = gpu();
    let a = gpu.adapter();
    eprintln!("GPU kernels on {} ({}, {}), convolutions {:?}", a.name, a.backend, a.kind, gpu.conv());
    let failures = suite(&gpu, &|c| run_once(&Cpu, &program(c), &c.args).unwrap(), &[]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Both convolution lowerings, whichever the adapter takes: the tiled implicit GEMM and the
/// packed one, the latter also with matrices so small that every batch runs in several chunks
/// (the weight gradient adding up across them) and some convolutions fall back to the tiled
/// kernel (one image's windows over the budget).
#[test]
fn every_convolution_lowering_matches_the_cpu_backend() {
    let conv = [OpKind::Conv2d, OpKind::Conv2dGradInput, OpKind::Conv2dGradWeight];
    let mut failures = vec![];
    // 1500 floats: the 70-channel case runs one image per chunk and the batch of 3 falls back;
    // 4100: the batch of 3 runs in three chunks and the stem falls back.
    let small = |matrix_floats| gpu::ConvLowering::Packed { matrix_floats };
    for lowering in [gpu::ConvLowering::Tiled, gpu::ConvLowering::packed(), small(1500), small(4100)] {
        let gpu = gpu().with_conv(lowering);
        let f = suite(&gpu, &|c| run_once(&Cpu, &program(c), &c.args).unwrap(), &conv);
        failures.extend(f.into_iter().map(|f| format!("{lowering:?}: {f}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A world of two ranks seen from rank 0, where rank 1 holds this rank's tensors plus one: an
/// all-reduce gives `2x + 1`, a broadcast from rank 1 `x + 1`.
struct PlusOne;

impl slimc::distributed::Communicator for PlusOne {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> anyhow::Result<()> {
        buf.iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> anyhow::Result<()> {
        if root == 1 {
            buf.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(())
    }
    fn all_gather(&self, bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(vec![bytes.to_vec(); 2])
    }
    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

/// Both backends run the collectives through the communicator they are given, as one bucket:
/// the all-reduce only when its step scalars say the optimizer steps, the broadcast always.
#[test]
fn collectives_run_through_the_given_communicator_on_every_backend() {
    let (a, b) = (random(&[4, 3, 3, 3], 1912), random(&[5], 1913));
    let add = |t: &Tensor, k: f32, c: f32| map(t, |v| k * v + c);
    let cases = [
        (Op::AllReduce, vec![a.clone(), b.clone(), scalars(true)], vec![add(&a, 2.0, 1.0), add(&b, 2.0, 1.0)]),
        (Op::AllReduce, vec![a.clone(), b.clone(), scalars(false)], vec![a.clone(), b.clone()]),
        (Op::Broadcast(Root { root: 1 }), vec![a.clone(), b.clone()], vec![add(&a, 1.0, 1.0), add(&b, 1.0, 1.0)]),
    ];
    let backends: [Box<dyn Backend>; 2] = [Box::new(Cpu), Box::new(gpu())];
    for backend in &backends {
        for (op, args, want) in &cases {
            let model = single_op(op, &args.iter().map(Tensor::ty).collect::<Vec<_>>()).unwrap();
            let mut exe = backend.compile_in(&model, std::sync::Arc::new(PlusOne)).unwrap();
            let got = exe.run_in_order(args).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.shape, w.shape);
                let worst =
                    g.f32s().unwrap().iter().zip(w.f32s().unwrap()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(
                    worst < 1e-6,
                    "{} {:?} on {}: off by {worst}",
                    op.name(),
                    args[args.len() - 1].shape,
                    backend.name()
                );
            }
        }
    }
}
