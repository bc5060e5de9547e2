//! The CPU kernels against the IR's reference definitions (`slimc_ir::eval`): every op with a
//! fast kernel, on seeded random operands, over the geometries YOLO11 uses and the corners it
//! does not (asymmetric padding, dilation, grouped convs, odd sizes).

use super::isa;
use super::node::compute;
use slimc_ir::eval::eval;
use slimc_ir::{infer_types, Conv2d, Op, ReshapeDim, Tensor};
use slimc_ir::{Axis, BatchNorm, Binary, Pool, Reshape, Slice, Split, Transpose, Unary, UnaryGrad, Upsample};

fn random(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()).unwrap()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    let t = random(shape, seed);
    Tensor::from_f32(shape.to_vec(), t.f32s().unwrap().iter().map(|v| v.abs() + 0.5).collect()).unwrap()
}

/// Serialises the tests that switch the vector level (it is process-wide).
static LEVELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `op` through the kernel at every vector level the CPU has (twice each, the second time
/// into the first run's dirty buffers) and through the reference; every result must agree to
/// `tol` relative to the result's largest magnitude, or to 1e-2 where that is smaller (a result
/// that is zero by cancellation, as batch norm's input gradient over one element per channel,
/// meets rounding of its O(1) terms).
fn agree(op: &Op, args: &[Tensor], tol: f32) {
    let _one = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    for level in isa::supported() {
        isa::force(level);
        agree_at(op, args, tol, level.name());
    }
    isa::force(isa::widest());
}

fn agree_at(op: &Op, args: &[Tensor], tol: f32, level: &str) {
    let refs: Vec<&Tensor> = args.iter().collect();
    let want = eval(op, &refs).unwrap();
    let types: Vec<_> = args.iter().map(|t| t.ty()).collect();
    let shapes: Vec<Vec<usize>> =
        infer_types(op, &types.iter().collect::<Vec<_>>()).unwrap().iter().map(|t| t.fixed_shape().unwrap()).collect();
    let mut scratch = vec![];
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|_| vec![7.0; 3]).collect();
    let first = compute(op, &refs, &shapes, &mut bufs, &mut scratch, None).unwrap();
    let mut dirty: Vec<Vec<f32>> = first.iter().map(|t| t.f32s().unwrap().iter().map(|v| v + 1.0).collect()).collect();
    let got = compute(op, &refs, &shapes, &mut dirty, &mut scratch, None).unwrap();
    assert_eq!(got.len(), want.len(), "{} ({level})", op.name());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.shape, w.shape, "{} result {k} ({level})", op.name());
        let (g, w) = (g.f32s().unwrap(), w.f32s().unwrap());
        let scale = w.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol * scale, "{} result {k} ({level}): off by {worst:e} (scale {scale:e})", op.name());
    }
}

fn conv(stride: usize, pad: [usize; 4], dilation: usize, groups: usize) -> Conv2d {
    Conv2d { stride: [stride; 2], pad, dilation: [dilation; 2], groups }
}

/// (input shape, weight shape, conv): pointwise, 3×3 stride 1 and 2, depthwise, grouped,
/// dilated with asymmetric padding, a 1×1 with stride 2, a batch of 11, and two large enough to
/// be tiled.
fn geometries() -> Vec<([usize; 4], [usize; 4], Conv2d)> {
    vec![
        ([2, 6, 5, 7], [4, 6, 1, 1], conv(1, [0; 4], 1, 1)),
        ([2, 3, 9, 8], [5, 3, 3, 3], conv(1, [1; 4], 1, 1)),
        ([1, 4, 9, 7], [6, 4, 3, 3], conv(2, [1; 4], 1, 1)),
        ([2, 5, 8, 8], [5, 1, 3, 3], conv(1, [1; 4], 1, 5)),
        ([1, 6, 7, 9], [6, 1, 5, 5], conv(2, [2; 4], 1, 6)),
        // Depthwise rows wide enough for blocks of 16 outputs in registers, and borders beside
        // them: 3×3, and 5×5 dilated with asymmetric padding.
        ([1, 4, 5, 41], [4, 1, 3, 3], conv(1, [1; 4], 1, 4)),
        ([2, 3, 9, 53], [3, 1, 5, 5], conv(1, [4, 3, 4, 1], 2, 3)),
        ([1, 4, 6, 6], [6, 2, 3, 3], conv(1, [1; 4], 1, 2)),
        ([1, 3, 10, 9], [2, 3, 3, 2], conv(1, [0, 1, 2, 0], 2, 1)),
        ([1, 4, 7, 7], [3, 4, 1, 1], conv(2, [0; 4], 1, 1)),
        // More images than the weight gradient's groups, not a multiple of them.
        ([11, 3, 5, 6], [4, 3, 3, 3], conv(1, [1; 4], 1, 1)),
        // Unfolded inputs too large for cache: tiled, tiles straddling output rows, in parallel
        // (one image) and in sequence (two), stride 2 with padding.
        ([1, 16, 64, 64], [8, 16, 3, 3], conv(1, [1; 4], 1, 1)),
        ([2, 16, 130, 97], [6, 16, 3, 3], conv(2, [1, 1, 0, 1], 1, 1)),
        // Direct stride-1 convolutions at AVX-512 (padded input, panels of positions, the last
        // one overlapping): grouped with asymmetric padding and channels past whole panels of
        // rows; 5×5 at one image (panels in parallel).
        ([2, 6, 5, 40], [14, 3, 3, 3], conv(1, [0, 1, 2, 0], 1, 2)),
        ([1, 5, 13, 37], [13, 5, 5, 5], conv(1, [2; 4], 1, 1)),
        // Direct at strides 2 (grouped) and 3 (asymmetric padding): the input split into phase
        // planes. (The tiled stride-2 geometry above runs direct at AVX-512 too.)
        ([1, 4, 21, 70], [6, 2, 3, 3], conv(2, [1; 4], 1, 2)),
        ([1, 3, 20, 110], [5, 3, 3, 3], conv(3, [0, 1, 2, 0], 1, 1)),
    ]
}

#[test]
fn convolution_and_its_gradients_match_the_reference() {
    for (i, (xs, ws, c)) in geometries().into_iter().enumerate() {
        let seed = 10 * i as u64;
        let (x, w, b) = (random(&xs, seed), random(&ws, seed + 1), random(&[ws[0]], seed + 2));
        agree(&Op::Conv2d(c.clone()), &[x.clone(), w.clone()], 1e-5);
        agree(&Op::Conv2d(c.clone()), &[x.clone(), w.clone(), b], 1e-5);
        let y = eval(&Op::Conv2d(c.clone()), &[&x, &w]).unwrap().remove(0);
        let dy = random(&y.shape, seed + 3);
        agree(&Op::Conv2dGradInput(c.clone()), &[dy.clone(), w.clone(), x.clone()], 1e-5);
        agree(&Op::Conv2dGradWeight(c.clone()), &[dy, x, w], 1e-5);
    }
}

#[test]
fn batch_norm_forms_match_the_reference() {
    for (i, shape) in [[2usize, 3, 4, 5], [1, 5, 1, 1], [3, 2, 7, 3]].into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let c = shape[1];
        let x = random(&shape, seed);
        let (g, b) = (random(&[c], seed + 1), random(&[c], seed + 2));
        let (m, v) = (random(&[c], seed + 3), positive(&[c], seed + 4));
        agree(
            &Op::BatchNorm(BatchNorm { eps: 1e-3, momentum: 0.03 }),
            &[x.clone(), g.clone(), b.clone(), m.clone(), v.clone()],
            1e-5,
        );
        let train = Op::BatchNormTrain(BatchNorm { eps: 1e-3, momentum: 0.03 });
        agree(&train, &[x.clone(), g.clone(), b.clone(), m.clone(), v.clone()], 1e-5);
        let r = eval(&train, &[&x, &g, &b, &m, &v]).unwrap();
        let dy = random(&shape, seed + 5);
        agree(&Op::BatchNormGrad, &[dy, x, g, r[1].clone(), r[2].clone()], 1e-4);
    }
}

#[test]
fn pooling_activations_and_products_match_the_reference() {
    // Softmax along the last axis, a middle one with many inner positions (several blocks, the
    // last one partial), and the first.
    for (shape, axis) in [(vec![3, 5, 7], 2), (vec![2, 16, 4, 300], 1), (vec![6, 9], 0), (vec![1, 2, 50, 400], 3)] {
        agree(&Op::Softmax(Axis { axis }), &[random(&shape, 40)], 1e-5);
    }
    for (i, (k, s, p)) in
        [([5, 5], [1, 1], [2; 4]), ([2, 2], [2, 2], [0; 4]), ([3, 2], [2, 1], [1, 0, 1, 1])].into_iter().enumerate()
    {
        let seed = 200 + 10 * i as u64;
        let x = random(&[2, 3, 7, 6], seed);
        let pool = Op::MaxPool2d(Pool { kernel: k, stride: s, pad: p });
        agree(&pool, std::slice::from_ref(&x), 0.0);
        let y = eval(&pool, &[&x]).unwrap().remove(0);
        let dy = random(&y.shape, seed + 1);
        agree(&Op::MaxPool2dGrad(Pool { kernel: k, stride: s, pad: p }), &[dy, x], 0.0);
    }
    let (x, y) = (random(&[2, 3, 40, 41], 300), random(&[2, 3, 40, 41], 301));
    agree(&Op::Unary(Unary::Silu), std::slice::from_ref(&x), 1e-6);
    agree(&Op::Binary(Binary::Add), &[x.clone(), y.clone()], 1e-6);
    agree(&Op::UnaryGrad(UnaryGrad::Silu), &[y, x], 1e-6);
    agree(&Op::MatMul, &[random(&[2, 3, 5, 4], 302), random(&[2, 3, 4, 6], 303)], 1e-5);
    agree(&Op::MatMul, &[random(&[2, 1, 5, 4], 304), random(&[3, 4, 6], 305)], 1e-5);
    let parts = [random(&[2, 3, 4, 5], 306), random(&[2, 1, 4, 5], 307), random(&[2, 2, 4, 5], 308)];
    agree(&Op::Concat(Axis { axis: 1 }), &parts, 0.0);
    agree(&Op::Concat(Axis { axis: 3 }), &[random(&[2, 3, 4, 2], 309), random(&[2, 3, 4, 5], 310)], 0.0);
    agree(&Op::Split(Split { axis: 1, sizes: vec![1, 4, 1] }), &[random(&[2, 6, 3, 3], 311)], 0.0);
    agree(&Op::Split(Split { axis: 0, sizes: vec![1, 1] }), &[random(&[2, 6, 3, 3], 312)], 0.0);
    agree(&Op::Unary(Unary::Sigmoid), &[random(&[3, 5, 7000], 313)], 1e-6);
}

/// The optimizer's ops into reused buffers, stepping and not, on a fresh epoch and not.
#[test]
fn optimizer_ops_match_the_reference() {
    use slimc_ir::{step_scalars as s, Update};
    let shape = [3, 7000];
    let (p, g, m) = (random(&shape, 500), random(&shape, 501), random(&shape, 502));
    let v = positive(&shape, 503);
    let norm = Tensor::from_f32(vec![], vec![35.0]).unwrap();
    for (step, fresh) in [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0)] {
        let mut sc = vec![0.0f32; s::LEN];
        sc[s::LR..s::LR + 3].copy_from_slice(&[0.01, 0.02, 0.03]);
        (sc[s::MOMENTUM], sc[s::SR], sc[s::EMA_DECAY], sc[s::EMA_REST]) = (0.9, 1e-2, 0.7, 0.3);
        (sc[s::STEP], sc[s::FRESH], sc[s::ADAM_C1], sc[s::ADAM_C2]) = (step, fresh, 0.19, 0.002);
        let sc = Tensor::from_f32(vec![s::LEN], sc).unwrap();
        agree(&Op::Accumulate, &[m.clone(), g.clone(), sc.clone()], 0.0);
        agree(&Op::EmaUpdate, &[m.clone(), p.clone(), sc.clone()], 0.0);
        for (group, prox) in [(1, None), (2, Some(3))] {
            let u = Update { group, weight_decay: 5e-4, max_norm: 10.0, prox, beta1: 0.9 };
            let common = [p.clone(), g.clone(), norm.clone(), sc.clone()];
            agree(&Op::SgdUpdate(Update { beta1: 0.0, ..u.clone() }), &[&common[..], &[m.clone()]].concat(), 0.0);
            agree(&Op::AdamWUpdate(u), &[&common[..], &[m.clone(), v.clone()]].concat(), 0.0);
        }
    }
}

/// Copies with rows longer than one parallel piece (one image's concat and split), gathers
/// (transposes, slices with negative steps), upsampling and broadcasting arithmetic: exact.
#[test]
fn data_movement_and_broadcasting_match_the_reference() {
    let big = [random(&[1, 3, 150, 160], 400), random(&[1, 2, 150, 160], 401)];
    agree(&Op::Concat(Axis { axis: 1 }), &big, 0.0);
    agree(&Op::Split(Split { axis: 1, sizes: vec![2, 3] }), &[random(&[1, 5, 150, 160], 402)], 0.0);
    let x = random(&[2, 4, 16, 37], 403);
    for perm in [vec![0, 2, 1, 3], vec![0, 1, 3, 2], vec![3, 1, 0, 2]] {
        agree(&Op::Transpose(Transpose { perm }), std::slice::from_ref(&x), 0.0);
    }
    let slice = |axes: Vec<usize>, starts: Vec<i64>, ends: Vec<i64>, steps: Vec<i64>| {
        Op::Slice(Slice { axes, starts, ends, steps })
    };
    agree(&slice(vec![1, 3], vec![1, -1], vec![3, 2], vec![1, -3]), std::slice::from_ref(&x), 0.0);
    agree(&slice(vec![2], vec![0], vec![16], vec![2]), std::slice::from_ref(&x), 0.0);
    agree(&Op::UpsampleNearest(Upsample { scale: [2, 3] }), &[random(&[2, 3, 5, 4], 404)], 0.0);
    agree(&Op::UpsampleNearestGrad(Upsample { scale: [2, 3] }), &[random(&[2, 3, 10, 12], 406)], 0.0);
    let flat = Op::Reshape(Reshape { shape: vec![ReshapeDim::Of { input: 0, axis: 0 }, ReshapeDim::Infer] });
    agree(&flat, &[random(&[2, 3, 150, 160], 405)], 0.0);
    let ops = [Op::Binary(Binary::Add), Op::Binary(Binary::Sub), Op::Binary(Binary::Mul), Op::Binary(Binary::Div)];
    let pairs = [
        ([2, 3, 4, 5], vec![2, 3, 4, 5]),
        ([2, 3, 4, 5], vec![1, 3, 1, 1]),
        ([2, 3, 4, 5], vec![5]),
        ([2, 3, 4, 1], vec![1, 3, 1, 7]),
        ([1, 1, 4, 5], vec![2, 3, 1, 5]),
    ];
    for (i, (sa, sb)) in pairs.iter().enumerate() {
        let (a, b) = (random(sa, 410 + i as u64), positive(sb, 420 + i as u64));
        for op in &ops {
            agree(op, &[a.clone(), b.clone()], 0.0);
            agree(op, &[b.clone(), a.clone()], 0.0);
        }
    }
}

/// Convolutions with their batch norm and SiLU run as one node's epilogue (in the slot the
/// planner hands on), and a pointwise convolution of a concatenation reads its parts; each gives
/// what the ops give one by one. A BN result read twice, a convolution whose result is
/// returned, or a 3×3 convolution of a concatenation is not fused and still agrees.
#[test]
fn fused_convolution_epilogues_match_the_ops_one_by_one() {
    let text = "graph g(%x: f32[2,3,9,8]) {
  weight %w: f32[5,3,3,3]
  weight %g: f32[5]
  weight %b: f32[5]
  buffer %m: f32[5]
  buffer %v: f32[5]
  weight %w2: f32[5,5,1,1]
  weight %w3: f32[4,5,3,3]
  weight %w5: f32[4,10,1,1]
  weight %b5: f32[4]
  weight %w6: f32[4,10,3,3]
  %c: f32[2,5,9,8] = conv2d(%x, %w) {stride=[1,1], pad=[1,1,1,1], dilation=[1,1], groups=1}
  %n: f32[2,5,9,8] = batch_norm(%c, %g, %b, %m, %v) {eps=0.001, momentum=0.03}
  %y: f32[2,5,9,8] = silu(%n)
  %c2: f32[2,5,9,8] = conv2d(%y, %w2) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %y2: f32[2,5,9,8] = silu(%c2)
  %c3: f32[2,5,9,8] = conv2d(%y2, %w2) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %n3: f32[2,5,9,8] = batch_norm(%c3, %g, %b, %m, %v) {eps=0.001, momentum=0.03}
  %s3: f32[2,5,9,8] = silu(%n3)
  %d3: f32[2,5,9,8] = add(%s3, %n3)
  %c4: f32[2,4,5,4] = conv2d(%d3, %w3) {stride=[2,2], pad=[1,1,1,1], dilation=[1,1], groups=1}
  %y4: f32[2,4,5,4] = silu(%c4)
  %k: f32[2,10,9,8] = concat(%y, %y2) {axis=1}
  %c5: f32[2,4,9,8] = conv2d(%k, %w5, %b5) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %k6: f32[2,10,9,8] = concat(%y, %d3) {axis=1}
  %c6: f32[2,4,9,8] = conv2d(%k6, %w6) {stride=[1,1], pad=[1,1,1,1], dilation=[1,1], groups=1}
  return %y4, %c4, %c5, %c6
}";
    let g = fused_run_agrees(text, &[2, 3, 9, 8]);
    let (fused, absorbed) = crate::backend::fusion::fusions(&g, true);
    // c takes BN n and SiLU y; c2 takes y2; c3 takes n3 but not s3 (n3 is read twice); c4's
    // result is returned, so nothing is fused into it; the pointwise c5 reads k's parts; the
    // 3×3 c6 reads k6 itself.
    assert_eq!(fused.len(), 4, "{fused:?}");
    assert_eq!(absorbed.iter().filter(|&&a| a).count(), 5);
}

/// The epilogue where the kernels apply it themselves: per panel of a direct convolution
/// (AVX-512; the last panel overlapping the one before) or per tile of one tiled to the cache
/// (the other levels), with its bias folded in, per plane of a depthwise convolution, per image
/// after a pointwise convolution of a concatenation (with bias) — one image (products split
/// across threads) and two (an image per thread), at every level the CPU has; each agrees with
/// the ops one by one.
#[test]
fn epilogues_inside_tiled_depthwise_and_concatenated_convolutions_match() {
    let text = "graph g(%x: f32[1,3,100,100]) {
  weight %w: f32[4,3,3,3]
  weight %cb: f32[4]
  weight %g: f32[4]
  weight %b: f32[4]
  buffer %m: f32[4]
  buffer %v: f32[4]
  weight %wd: f32[4,1,3,3]
  weight %w2: f32[6,8,1,1]
  weight %b2: f32[6]
  %c: f32[1,4,100,100] = conv2d(%x, %w, %cb) {stride=[1,1], pad=[1,1,1,1], dilation=[1,1], groups=1}
  %n: f32[1,4,100,100] = batch_norm(%c, %g, %b, %m, %v) {eps=0.001, momentum=0.03}
  %y: f32[1,4,100,100] = silu(%n)
  %d: f32[1,4,100,100] = conv2d(%y, %wd) {stride=[1,1], pad=[1,1,1,1], dilation=[1,1], groups=4}
  %dn: f32[1,4,100,100] = batch_norm(%d, %g, %b, %m, %v) {eps=0.001, momentum=0.03}
  %dy: f32[1,4,100,100] = silu(%dn)
  %k: f32[1,8,100,100] = concat(%y, %dy) {axis=1}
  %c2: f32[1,6,100,100] = conv2d(%k, %w2, %b2) {stride=[1,1], pad=[0,0,0,0], dilation=[1,1], groups=1}
  %y2: f32[1,6,100,100] = silu(%c2)
  return %y2
}";
    // The first convolution's unfolded input (27 × 10000 floats) is over the tiling threshold;
    // at the padded width its 100 × 102 positions are no whole number of panels.
    assert!(super::conv::column_tile(27, 100 * 100).is_some());
    assert!((100 * 102) % 64 != 0);
    let _one = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    for level in isa::supported() {
        isa::force(level);
        for batch in [1, 2] {
            let g = fused_run_agrees(&text.replace("f32[1,", &format!("f32[{batch},")), &[batch, 3, 100, 100]);
            let (fused, _) = crate::backend::fusion::fusions(&g, true);
            assert_eq!(fused.values().filter(|f| f.silu).count(), 3, "{fused:?}");
        }
    }
    isa::force(isa::widest());
}

/// Runs the graph `text` (its weights random, `v` positive) on the CPU backend, twice, against
/// every node evaluated by the reference semantics one by one on a random input of `x_shape`;
/// returns the graph.
fn fused_run_agrees(text: &str, x_shape: &[usize]) -> slimc_ir::Graph {
    use crate::backend::{cpu::Cpu, Backend};
    use slimc_ir::{parse_graph, Model};
    let graph = parse_graph(text).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (k, &p) in graph.params.iter().enumerate() {
        let v = graph.value(p);
        let shape = v.ty.fixed_shape().unwrap();
        let t = if v.name == "v" { positive(&shape, k as u64) } else { random(&shape, k as u64) };
        tensors.insert(v.name.clone(), t);
    }
    let model = Model { graph, tensors, meta: Default::default(), training_state: vec![] };
    let x = random(x_shape, 99);
    // The reference: every node through `eval`, in order.
    let g = &model.graph;
    let mut env: Vec<Option<Tensor>> = vec![None; g.values.len()];
    env[g.inputs[0].0] = Some(x.clone());
    for &p in &g.params {
        env[p.0] = Some(model.tensors[&g.value(p).name].clone());
    }
    for n in &g.nodes {
        let args: Vec<&Tensor> = n.inputs.iter().map(|v| env[v.0].as_ref().unwrap()).collect();
        for (&o, t) in n.outputs.iter().zip(eval(&n.op, &args).unwrap()) {
            env[o.0] = Some(t);
        }
    }
    let mut exe = Cpu.compile(&model).unwrap();
    for _ in 0..2 {
        let got = exe.run_in_order(std::slice::from_ref(&x)).unwrap();
        for (o, t) in g.outputs.iter().zip(&got) {
            let want = env[o.0].as_ref().unwrap().f32s().unwrap();
            let worst = t.f32s().unwrap().iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{}: off by {worst:e}", g.value(*o).name);
        }
    }
    model.graph
}

#[test]
fn stride_two_copies_pick_the_even_elements_at_every_level() {
    let _one = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    for level in isa::supported() {
        isa::force(level);
        // Lengths around the 8- and 16-lane steps; x one element short of 2n, as im2col gives it.
        for n in 0..70 {
            let x: Vec<f32> = (0..(2 * n).max(1) - 1).map(|i| i as f32).collect();
            let mut o = vec![-1.0; n];
            super::layout::even_elements(&mut o, &x);
            let want: Vec<f32> = (0..n).map(|j| (2 * j) as f32).collect();
            assert_eq!(o, want, "{} at length {n}", level.name());
        }
        assert!(isa::ran(level));
    }
    isa::force(isa::widest());
}
