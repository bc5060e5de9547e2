//! Every vector-Jacobian rule of the `autodiff` pass against central finite differences of the
//! forward op, both run by the CPU backend: for a random seed `dy`, the gradient of
//! `L = Σ dy·op(x)` with respect to each operand.

use rand::{Rng, SeedableRng};
use slimc::backend::{cpu::Cpu, run_once};
use slimc_ir::{Axis, BatchNorm, Binary, Pool, Reshape, Slice, Split, Transpose, Unary, UnaryGrad, Upsample};
use slimc_ir::{Conv2d, Graph, Model, Op, ReshapeDim, Tensor, TensorType};
use slimc_passes::differentiate;

fn random(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

/// Distinct values (a shuffled ramp), so that max pooling has no ties a small step could flip.
fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - n as f32 * 0.025).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    Tensor::from_f32(shape.to_vec(), v).unwrap()
}

/// Checks the gradient of every operand marked in `diff` on up to 24 sampled coordinates each.
fn check(op: Op, inputs: Vec<Tensor>, diff: &[bool], eps: f32) {
    let mut g = Graph::new("rule");
    let ins: Vec<_> = inputs.iter().enumerate().map(|(i, t)| g.add_input(&format!("x{i}"), t.ty())).collect();
    let outs =
        g.add_node(op.clone(), &ins, &(0..op.num_outputs(ins.len())).map(|_| "y").collect::<Vec<_>>(), "").unwrap();
    let y = outs[0];
    g.outputs = vec![y];
    let forward = Model { graph: g.clone(), ..Default::default() };
    let dy_t = random(&g.ty(y).fixed_shape().unwrap(), 99, -1.0, 1.0);
    let dy = g.add_input("dy", g.ty(y).clone());
    let mut model = Model { graph: g, ..Default::default() };
    let wrt: Vec<_> = ins.iter().zip(diff).filter(|(_, &d)| d).map(|(&v, _)| v).collect();
    let grads = differentiate(&mut model, &[(y, dy)], &wrt).unwrap();
    model.graph.outputs = grads.iter().map(|d| d.expect("a gradient for every operand")).collect();
    let mut args = inputs.clone();
    args.push(dy_t.clone());
    let got = run_once(&Cpu, &model, &args).unwrap();
    let loss = |xs: &[Tensor]| -> f64 {
        let out = run_once(&Cpu, &forward, xs).unwrap();
        out[0].f32s().unwrap().iter().zip(dy_t.f32s().unwrap()).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let mut k = 0;
    for (i, &d) in diff.iter().enumerate() {
        if !d {
            continue;
        }
        let an = got[k].f32s().unwrap();
        k += 1;
        assert_eq!(got[k - 1].shape, inputs[i].shape, "{}: gradient shape of operand {i}", op.name());
        let scale = an.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64 + 1e-3;
        let n = an.len();
        for j in (0..n).step_by((n / 24).max(1)) {
            let mut xs = inputs.clone();
            xs[i].f32s_mut().unwrap()[j] += eps;
            let up = loss(&xs);
            xs[i].f32s_mut().unwrap()[j] -= 2.0 * eps;
            let down = loss(&xs);
            let fd = (up - down) / (2.0 * eps as f64);
            let err = (fd - an[j] as f64).abs() / scale;
            assert!(err < 1e-2, "{}: operand {i}[{j}]: analytic {} vs finite difference {fd}", op.name(), an[j]);
        }
    }
}

fn conv(stride: usize, pad: usize, groups: usize) -> Op {
    Op::Conv2d(Conv2d { stride: [stride; 2], pad: [pad; 4], dilation: [1, 1], groups })
}

#[test]
fn conv2d_dense_strided_with_bias() {
    let inputs =
        vec![random(&[2, 3, 7, 6], 1, -1.0, 1.0), random(&[4, 3, 3, 3], 2, -0.5, 0.5), random(&[4], 3, -1.0, 1.0)];
    check(conv(2, 1, 1), inputs, &[true, true, true], 1e-2);
}

#[test]
fn conv2d_pointwise_and_grouped() {
    check(
        conv(1, 0, 1),
        vec![random(&[2, 4, 5, 5], 4, -1.0, 1.0), random(&[3, 4, 1, 1], 5, -1.0, 1.0)],
        &[true, true],
        1e-2,
    );
    check(
        conv(1, 1, 2),
        vec![random(&[1, 4, 5, 4], 6, -1.0, 1.0), random(&[6, 2, 3, 3], 7, -1.0, 1.0)],
        &[true, true],
        1e-2,
    );
}

#[test]
fn conv2d_depthwise() {
    check(
        conv(1, 1, 5),
        vec![random(&[2, 5, 6, 6], 8, -1.0, 1.0), random(&[5, 1, 3, 3], 9, -1.0, 1.0)],
        &[true, true],
        1e-2,
    );
    check(
        conv(2, 1, 3),
        vec![random(&[1, 3, 7, 7], 10, -1.0, 1.0), random(&[3, 1, 3, 3], 11, -1.0, 1.0)],
        &[true, true],
        1e-2,
    );
}

#[test]
fn batch_norm_training_mode() {
    let inputs = vec![
        random(&[3, 4, 3, 5], 12, -2.0, 2.0),
        random(&[4], 13, 0.5, 1.5),
        random(&[4], 14, -0.2, 0.2),
        random(&[4], 15, -0.2, 0.2),
        random(&[4], 16, 0.5, 2.0),
    ];
    check(Op::BatchNormTrain(BatchNorm { eps: 1e-3, momentum: 0.03 }), inputs, &[true, true, true, false, false], 1e-2);
}

#[test]
fn activations_and_softmax() {
    check(Op::Unary(Unary::Silu), vec![random(&[2, 3, 4], 17, -4.0, 4.0)], &[true], 1e-2);
    check(Op::Unary(Unary::Sigmoid), vec![random(&[2, 3, 4], 18, -4.0, 4.0)], &[true], 1e-2);
    check(Op::Softmax(Axis { axis: 1 }), vec![random(&[2, 5, 3], 19, -3.0, 3.0)], &[true], 1e-2);
    check(Op::Softmax(Axis { axis: 2 }), vec![random(&[2, 3, 6], 20, -3.0, 3.0)], &[true], 1e-2);
}

#[test]
fn broadcasting_arithmetic() {
    let (a, b) = (random(&[2, 3, 4], 21, -2.0, 2.0), random(&[3, 1], 22, 0.5, 2.0));
    for op in [Op::Binary(Binary::Add), Op::Binary(Binary::Sub), Op::Binary(Binary::Mul), Op::Binary(Binary::Div)] {
        check(op.clone(), vec![a.clone(), b.clone()], &[true, true], 1e-2);
        // As a divisor, keep the operand away from zero.
        let a = if op == Op::Binary(Binary::Div) { random(&[2, 3, 4], 36, 0.5, 2.0) } else { a.clone() };
        check(op, vec![b.clone(), a], &[true, true], 1e-2);
    }
    check(Op::Binary(Binary::Mul), vec![a.clone(), Tensor::scalar(0.7)], &[true, true], 1e-2);
}

#[test]
fn concat_split_and_slice() {
    let (a, b) = (random(&[2, 3, 2], 23, -1.0, 1.0), random(&[2, 2, 2], 24, -1.0, 1.0));
    check(Op::Concat(Axis { axis: 1 }), vec![a.clone(), b], &[true, true], 1e-2);
    let x = random(&[2, 5, 3], 25, -1.0, 1.0);
    // Only the first piece reaches the loss: the rule must scatter it, leaving zeros elsewhere.
    check(Op::Split(Split { axis: 1, sizes: vec![2, 3] }), vec![x.clone()], &[true], 1e-2);
    let slice = Op::Slice(Slice { axes: vec![1, 2], starts: vec![1, -1], ends: vec![5, -4], steps: vec![2, -1] });
    check(slice, vec![x], &[true], 1e-2);
}

#[test]
fn split_with_every_piece_used_is_a_concat() {
    let mut g = Graph::new("split");
    let x = g.add_input("x", TensorType::f32(&[1, 4, 2]));
    let parts = g.add_node(Op::Split(Split { axis: 1, sizes: vec![1, 3] }), &[x], &["a", "b"], "").unwrap();
    let dys: Vec<_> = parts.iter().map(|&p| g.add_input("d", g.ty(p).clone())).collect();
    let mut model = Model { graph: g, ..Default::default() };
    let grads = differentiate(&mut model, &[(parts[0], dys[0]), (parts[1], dys[1])], &[x]).unwrap();
    model.graph.outputs = vec![grads[0].unwrap()];
    let d0 = random(&[1, 1, 2], 26, -1.0, 1.0);
    let d1 = random(&[1, 3, 2], 27, -1.0, 1.0);
    let out = run_once(&Cpu, &model, &[random(&[1, 4, 2], 28, -1.0, 1.0), d0.clone(), d1.clone()]).unwrap();
    let want: Vec<f32> = d0.f32s().unwrap().iter().chain(d1.f32s().unwrap()).copied().collect();
    assert_eq!(out[0].f32s().unwrap(), &want[..]);
}

#[test]
fn pooling_and_upsampling() {
    let sppf = Op::MaxPool2d(Pool { kernel: [5, 5], stride: [1, 1], pad: [2; 4] });
    check(sppf, vec![distinct(&[2, 2, 6, 7], 29)], &[true], 1e-3);
    let half = Op::MaxPool2d(Pool { kernel: [2, 2], stride: [2, 2], pad: [0; 4] });
    check(half, vec![distinct(&[1, 3, 6, 4], 30)], &[true], 1e-3);
    check(Op::UpsampleNearest(Upsample { scale: [2, 2] }), vec![random(&[2, 3, 3, 4], 31, -1.0, 1.0)], &[true], 1e-2);
}

#[test]
fn reshape_transpose_and_matmul() {
    let x = random(&[2, 3, 4, 2], 32, -1.0, 1.0);
    let view = Op::Reshape(Reshape {
        shape: vec![ReshapeDim::Of { input: 0, axis: 0 }, ReshapeDim::Fixed(4), ReshapeDim::Infer],
    });
    check(view, vec![x.clone()], &[true], 1e-2);
    let back = Op::Reshape(Reshape {
        shape: vec![ReshapeDim::Fixed(2), ReshapeDim::Of { input: 1, axis: 1 }, ReshapeDim::Infer],
    });
    check(back, vec![x.clone(), random(&[1, 6], 33, 0.0, 1.0)], &[true, false], 1e-2);
    check(Op::Transpose(Transpose { perm: vec![0, 2, 3, 1] }), vec![x], &[true], 1e-2);
    let (a, b) = (random(&[2, 2, 3, 4], 34, -1.0, 1.0), random(&[2, 1, 4, 5], 35, -1.0, 1.0));
    check(Op::MatMul, vec![a, b], &[true, true], 1e-2);
}

#[test]
fn gradient_ops_are_not_differentiated_again() {
    let mut g = Graph::new("second");
    let x = g.add_input("x", TensorType::f32(&[2, 2]));
    let d = g.add_input("d", TensorType::f32(&[2, 2]));
    let y = g.add1(Op::UnaryGrad(UnaryGrad::Silu), &[d, x], "y", "").unwrap();
    let dy = g.add_input("dy", TensorType::f32(&[2, 2]));
    let mut model = Model { graph: g, ..Default::default() };
    let err = differentiate(&mut model, &[(y, dy)], &[x]).unwrap_err().to_string();
    assert!(err.contains("silu_grad") && err.contains("no gradient rule"), "{err}");
}
