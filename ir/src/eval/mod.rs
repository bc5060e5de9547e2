//! Reference semantics of every op: what each op means, in one place.
//!
//! [`eval`] computes any op on concrete tensors. Constant folding evaluates nodes through it,
//! the CPU backend uses it for every op it has no faster kernel for, and every backend's fast
//! kernels are tested against it. Convolution, batch normalisation and max pooling (and their
//! training forms) are plain loops in [`nn`], with the logistic function; the detection loss and
//! its gradient, with the task-aligned assigner, are in [`detect_loss`] and [`assign`]; the
//! optimizer's ops in [`optim`]. Strides, strided copies and views are [`crate::layout`]'s.

pub mod assign;
pub mod detect_loss;
pub mod distill;
pub mod nn;
pub mod optim;

use crate::error::{invalid, Result};
use crate::infer::infer_types;
use crate::layout::{batch_offsets, broadcast_strides, slice_view, strided_copy, strides_of, transpose_strides};
use crate::op::Op;
use crate::op::{
    Anchors, Axis, BatchNorm, Binary, DetectLoss, Distill, Pool, Slice, Split, Transpose, Unary, UnaryGrad, Upsample,
};
use crate::tensor::{Tensor, TensorData};

fn map_data(t: &Tensor, f32f: impl Fn(&[f32]) -> Vec<f32>, i64f: impl Fn(&[i64]) -> Vec<i64>) -> TensorData {
    match &t.data {
        TensorData::F32(v) => TensorData::F32(f32f(v)),
        TensorData::I64(v) => TensorData::I64(i64f(v)),
    }
}

fn binary<T: Copy, U>(a: &[T], sa: &[usize], b: &[T], sb: &[usize], out: &[usize], f: impl Fn(T, T) -> U) -> Vec<U> {
    if sa == sb {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let xa = strided_copy(a, 0, out, &broadcast_strides(sa, out));
    let xb = strided_copy(b, 0, out, &broadcast_strides(sb, out));
    xa.into_iter().zip(xb).map(|(x, y)| f(x, y)).collect()
}

/// The arithmetic of a binary op on floats.
pub fn binary_f32(op: Binary) -> fn(f32, f32) -> f32 {
    match op {
        Binary::Add => |p, q| p + q,
        Binary::Sub => |p, q| p - q,
        Binary::Mul => |p, q| p * q,
        Binary::Div => |p, q| p / q,
    }
}

/// The arithmetic of a binary op on integers, checked: `None` on overflow or division by zero.
pub fn binary_i64(op: Binary) -> fn(i64, i64) -> Option<i64> {
    match op {
        Binary::Add => i64::checked_add,
        Binary::Sub => i64::checked_sub,
        Binary::Mul => i64::checked_mul,
        Binary::Div => i64::checked_div,
    }
}

/// Whether constant folding should evaluate `op`: the cheap, shape-like and elementwise ops (an
/// allow-list decided per op and per family member, so a new op or member is not folded until
/// someone decides it may be). Not the arithmetic-heavy ops (convolution, pooling, batch norm,
/// the training ops), whose plain references are slow and whose operands are never all
/// constant in a model.
pub fn foldable(op: &Op) -> bool {
    match op {
        Op::Unary(Unary::Silu | Unary::Sigmoid | Unary::Sign) => true,
        Op::UnaryGrad(UnaryGrad::Silu | UnaryGrad::Sigmoid) => true,
        Op::Binary(Binary::Add | Binary::Sub | Binary::Mul | Binary::Div) => true,
        Op::Concat(_) | Op::Split(_) | Op::Slice(_) => true,
        Op::UpsampleNearest(_) | Op::Reshape(_) | Op::Transpose(_) | Op::MatMul | Op::Softmax(_) => true,
        Op::Anchors(_) | Op::SoftmaxGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) | Op::SumTo => true,
        Op::Conv2d(_) | Op::BatchNorm(_) | Op::MaxPool2d(_) | Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) => false,
        Op::BatchNormTrain(_) | Op::BatchNormGrad | Op::MaxPool2dGrad(_) | Op::DetectLoss(_) => false,
        Op::DetectLossGrad(_) | Op::Accumulate | Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) => false,
        Op::EmaUpdate | Op::AllReduce | Op::Broadcast(_) | Op::DistillLoss(_) | Op::DistillLossGrad(_) => false,
    }
}

/// Evaluates `op` on concrete `inputs` by its reference definition.
pub fn eval(op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let types: Vec<_> = inputs.iter().map(|t| t.ty()).collect();
    let tref: Vec<_> = types.iter().collect();
    let out_types = infer_types(op, &tref)?;
    let shape = |k: usize| out_types[k].fixed_shape().expect("concrete inputs give concrete outputs");
    let x = inputs[0];
    let one = |data: TensorData| Ok(vec![Tensor { shape: shape(0), data }]);
    let f32_at = |k: usize, data: Vec<f32>| Tensor { shape: shape(k), data: TensorData::F32(data) };
    let arg = |i: usize| inputs[i].f32s();
    match op {
        Op::Conv2d(c) => {
            let bias = inputs.get(2).map(|b| b.f32s()).transpose()?;
            one(TensorData::F32(nn::conv2d(x.f32s()?, &x.shape, arg(1)?, &inputs[1].shape, bias, c).0))
        }
        Op::BatchNorm(BatchNorm { eps, .. }) => {
            one(TensorData::F32(nn::batch_norm(x.f32s()?, &x.shape, arg(1)?, arg(2)?, arg(3)?, arg(4)?, *eps)))
        }
        Op::MaxPool2d(Pool { kernel, stride, pad }) => {
            one(TensorData::F32(nn::max_pool2d(x.f32s()?, &x.shape, *kernel, *stride, *pad).0))
        }
        Op::Conv2dGradInput(c) => {
            let (w, xs) = (inputs[1], &inputs[2].shape);
            one(TensorData::F32(nn::conv2d_grad_input(x.f32s()?, w.f32s()?, &w.shape, xs, c)))
        }
        Op::Conv2dGradWeight(c) => {
            let (xv, ws) = (inputs[1], &inputs[2].shape);
            one(TensorData::F32(nn::conv2d_grad_weight(x.f32s()?, xv.f32s()?, &xv.shape, ws, c)))
        }
        Op::BatchNormTrain(BatchNorm { eps, momentum }) => {
            let r = nn::batch_norm_train(x.f32s()?, &x.shape, arg(1)?, arg(2)?, arg(3)?, arg(4)?, *eps, *momentum);
            Ok(r.into_iter().enumerate().map(|(k, v)| f32_at(k, v)).collect())
        }
        Op::BatchNormGrad => {
            let r = nn::batch_norm_grad(x.f32s()?, arg(1)?, &inputs[1].shape, arg(2)?, arg(3)?, arg(4)?);
            Ok(r.into_iter().enumerate().map(|(k, v)| f32_at(k, v)).collect())
        }
        Op::MaxPool2dGrad(Pool { kernel, stride, pad }) => {
            let xv = inputs[1];
            one(TensorData::F32(nn::max_pool2d_grad(x.f32s()?, xv.f32s()?, &xv.shape, *kernel, *stride, *pad)))
        }
        Op::DetectLoss(DetectLoss { strides, gains, reg_max }) => {
            let spec = detect_loss::LossSpec { strides, gains, reg_max: *reg_max };
            let (items, total) = detect_loss::detect_loss(&inputs[..strides.len()], inputs[strides.len()], &spec)?;
            Ok(vec![f32_at(0, items.to_vec()), f32_at(1, vec![total])])
        }
        Op::DetectLossGrad(DetectLoss { strides, gains, reg_max }) => {
            let spec = detect_loss::LossSpec { strides, gains, reg_max: *reg_max };
            detect_loss::detect_loss_grad(&inputs[..strides.len()], inputs[strides.len()], &spec)
        }
        Op::DistillLoss(Distill { gains, temperature, reg_max }) => {
            let spec = distill::DistillSpec { gains, temperature: *temperature, reg_max: *reg_max };
            let (student, teacher) = inputs.split_at(inputs.len() / 2);
            let (items, total) = distill::distill_loss(student, teacher, &spec)?;
            Ok(vec![f32_at(0, items.to_vec()), f32_at(1, vec![total])])
        }
        Op::DistillLossGrad(Distill { gains, temperature, reg_max }) => {
            let spec = distill::DistillSpec { gains, temperature: *temperature, reg_max: *reg_max };
            let (student, teacher) = inputs.split_at(inputs.len() / 2);
            distill::distill_loss_grad(student, teacher, &spec)
        }
        Op::Unary(Unary::Sign) => one(map_data(
            x,
            |v| {
                v.iter()
                    .map(|&a| {
                        if a > 0.0 {
                            1.0
                        } else if a < 0.0 {
                            -1.0
                        } else {
                            0.0
                        }
                    })
                    .collect()
            },
            |v| v.iter().map(|a| a.signum()).collect(),
        )),
        Op::Accumulate => {
            let (sum, next) = optim::accumulate(x.f32s()?, arg(1)?, arg(2)?);
            Ok(vec![f32_at(0, sum), f32_at(1, next)])
        }
        Op::GlobalNorm => {
            let parts = inputs.iter().map(|t| t.f32s()).collect::<Result<Vec<_>>>()?;
            Ok(vec![f32_at(0, vec![optim::global_norm(&parts)])])
        }
        Op::SgdUpdate(u) => {
            let r = optim::sgd_update(x.f32s()?, arg(1)?, arg(2)?[0], arg(3)?, arg(4)?, u);
            Ok(r.into_iter().enumerate().map(|(k, v)| f32_at(k, v)).collect())
        }
        Op::AdamWUpdate(u) => {
            let r = optim::adamw_update(x.f32s()?, arg(1)?, arg(2)?[0], arg(3)?, [arg(4)?, arg(5)?], u);
            Ok(r.into_iter().enumerate().map(|(k, v)| f32_at(k, v)).collect())
        }
        Op::EmaUpdate => one(TensorData::F32(optim::ema_update(x.f32s()?, arg(1)?, arg(2)?))),
        // In a world of one rank the collectives hand their operands on (a backend given a
        // communicator of several ranks runs them through it).
        Op::AllReduce => Ok(inputs[..inputs.len() - 1].iter().map(|&t| t.clone()).collect()),
        Op::Broadcast(_) => Ok(inputs.iter().map(|&t| t.clone()).collect()),
        Op::UnaryGrad(UnaryGrad::Silu) => {
            let g = inputs[1].f32s()?.iter().zip(x.f32s()?).map(|(&v, &dy)| {
                let s = nn::sigmoid(v);
                dy * s * (1.0 + v * (1.0 - s))
            });
            one(TensorData::F32(g.collect()))
        }
        Op::UnaryGrad(UnaryGrad::Sigmoid) => {
            one(TensorData::F32(inputs[1].f32s()?.iter().zip(x.f32s()?).map(|(&y, &dy)| dy * y * (1.0 - y)).collect()))
        }
        Op::SoftmaxGrad(Axis { axis }) => {
            let (dy, y) = (x.f32s()?, inputs[1].f32s()?);
            let n = x.shape[*axis];
            let inner: usize = x.shape[*axis + 1..].iter().product();
            let outer: usize = x.shape[..*axis].iter().product();
            let mut v = vec![0.0f32; dy.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| o * n * inner + k * inner + i;
                    let dot: f32 = (0..n).map(|k| dy[at(k)] * y[at(k)]).sum();
                    for k in 0..n {
                        v[at(k)] = y[at(k)] * (dy[at(k)] - dot);
                    }
                }
            }
            one(TensorData::F32(v))
        }
        Op::UpsampleNearestGrad(Upsample { scale }) => {
            let out = shape(0);
            let (h, w) = (x.shape[2], x.shape[3]);
            let src = x.f32s()?;
            let mut v = vec![0.0f32; out.iter().product()];
            for (plane, dst) in v.chunks_mut(out[2] * out[3]).enumerate() {
                let p = &src[plane * h * w..(plane + 1) * h * w];
                for y in 0..h {
                    for xx in 0..w {
                        dst[(y / scale[0]) * out[3] + xx / scale[1]] += p[y * w + xx];
                    }
                }
            }
            one(TensorData::F32(v))
        }
        Op::SliceGrad(s) => {
            let like = inputs[1];
            let iota = Tensor { shape: like.shape.clone(), data: TensorData::I64((0..like.numel() as i64).collect()) };
            let slice = Op::Slice(s.clone());
            let at = eval(&slice, &[&iota])?[0].i64s()?.to_vec();
            let mut v = vec![0.0f32; like.numel()];
            for (&i, &dy) in at.iter().zip(x.f32s()?) {
                v[i as usize] += dy;
            }
            one(TensorData::F32(v))
        }
        Op::SumTo => {
            let like = &inputs[1].shape;
            let n: usize = like.iter().product();
            let at = strided_copy(&(0..n).collect::<Vec<usize>>(), 0, &x.shape, &broadcast_strides(like, &x.shape));
            let mut v = vec![0.0f32; n];
            for (&i, &g) in at.iter().zip(x.f32s()?) {
                v[i] += g;
            }
            one(TensorData::F32(v))
        }
        Op::Unary(Unary::Silu) => one(TensorData::F32(x.f32s()?.iter().map(|&v| v * nn::sigmoid(v)).collect())),
        Op::Unary(Unary::Sigmoid) => one(TensorData::F32(x.f32s()?.iter().map(|&v| nn::sigmoid(v)).collect())),
        Op::Binary(op) => {
            let y = inputs[1];
            let out = shape(0);
            let data = match (&x.data, &y.data) {
                (TensorData::F32(a), TensorData::F32(b)) => {
                    TensorData::F32(binary(a, &x.shape, b, &y.shape, &out, binary_f32(*op)))
                }
                (TensorData::I64(a), TensorData::I64(b)) => {
                    // Checked arithmetic: an overflow (or a division by zero) is an error, not a
                    // wrapped value or a panic.
                    let f = binary_i64(*op);
                    let v = binary(a, &x.shape, b, &y.shape, &out, |p, q| f(p, q).ok_or(()));
                    match v.into_iter().collect::<std::result::Result<Vec<i64>, ()>>() {
                        Ok(v) => TensorData::I64(v),
                        Err(()) => return invalid(format!("integer {} overflows or divides by zero", op.name())),
                    }
                }
                _ => return invalid("operands differ in element type"),
            };
            one(data)
        }
        Op::Concat(Axis { axis }) => {
            let out = shape(0);
            let outer: usize = out[..*axis].iter().product();
            let inner: usize = out[*axis + 1..].iter().product();
            macro_rules! cat {
                ($get:ident, $variant:ident) => {{
                    let parts: Vec<&[_]> = inputs.iter().map(|t| t.$get()).collect::<Result<_>>()?;
                    let mut v = Vec::with_capacity(out.iter().product());
                    for o in 0..outer {
                        for (t, p) in inputs.iter().zip(&parts) {
                            let chunk = t.shape[*axis] * inner;
                            v.extend_from_slice(&p[o * chunk..(o + 1) * chunk]);
                        }
                    }
                    TensorData::$variant(v)
                }};
            }
            let data = match x.data {
                TensorData::F32(_) => cat!(f32s, F32),
                TensorData::I64(_) => cat!(i64s, I64),
            };
            one(data)
        }
        Op::Split(Split { axis, sizes }) => {
            let st = strides_of(&x.shape);
            let strides: Vec<isize> = st.iter().map(|&s| s as isize).collect();
            let mut outs = vec![];
            let mut start = 0;
            for (k, &sz) in sizes.iter().enumerate() {
                let off = (start * st[*axis]) as isize;
                let data = map_data(
                    x,
                    |v| strided_copy(v, off, &shape(k), &strides),
                    |v| strided_copy(v, off, &shape(k), &strides),
                );
                outs.push(Tensor { shape: shape(k), data });
                start += sz;
            }
            Ok(outs)
        }
        Op::Slice(Slice { axes, starts, ends, steps }) => {
            let (off, strides) = slice_view(&x.shape, axes, starts, ends, steps)?;
            let out = shape(0);
            one(map_data(x, |v| strided_copy(v, off, &out, &strides), |v| strided_copy(v, off, &out, &strides)))
        }
        Op::Reshape(_) => one(x.data.clone()),
        Op::Transpose(Transpose { perm }) => {
            let strides = transpose_strides(&x.shape, perm);
            let out = shape(0);
            one(map_data(x, |v| strided_copy(v, 0, &out, &strides), |v| strided_copy(v, 0, &out, &strides)))
        }
        Op::UpsampleNearest(Upsample { scale }) => {
            let out = shape(0);
            let (h, w) = (x.shape[2], x.shape[3]);
            let src = x.f32s()?;
            let mut v = Vec::with_capacity(out.iter().product());
            for plane in 0..out[0] * out[1] {
                let p = &src[plane * h * w..(plane + 1) * h * w];
                for oy in 0..out[2] {
                    let row = &p[(oy / scale[0]) * w..(oy / scale[0] + 1) * w];
                    v.extend((0..out[3]).map(|ox| row[ox / scale[1]]));
                }
            }
            one(TensorData::F32(v))
        }
        Op::Softmax(Axis { axis }) => {
            let src = x.f32s()?;
            let n = x.shape[*axis];
            let inner: usize = x.shape[*axis + 1..].iter().product();
            let outer: usize = x.shape[..*axis].iter().product();
            let mut v = src.to_vec();
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| o * n * inner + k * inner + i;
                    let m = (0..n).map(|k| src[at(k)]).fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0.0;
                    for k in 0..n {
                        let e = (src[at(k)] - m).exp();
                        v[at(k)] = e;
                        sum += e;
                    }
                    for k in 0..n {
                        v[at(k)] /= sum;
                    }
                }
            }
            one(TensorData::F32(v))
        }
        Op::MatMul => {
            let y = inputs[1];
            let out = shape(0);
            let r = out.len();
            let (m, k, n) = (out[r - 2], x.shape[x.shape.len() - 1], out[r - 1]);
            let batch: Vec<usize> = out[..r - 2].to_vec();
            let bx = batch_offsets(&x.shape, &batch, m * k);
            let by = batch_offsets(&y.shape, &batch, k * n);
            let (a, b) = (x.f32s()?, y.f32s()?);
            let mut v = vec![0.0f32; out.iter().product()];
            for (bi, (ox, oy)) in bx.iter().zip(&by).enumerate() {
                for i in 0..m {
                    for p in 0..k {
                        let av = a[ox + i * k + p];
                        let row = &b[oy + p * n..oy + (p + 1) * n];
                        let dst = &mut v[bi * m * n + i * n..bi * m * n + (i + 1) * n];
                        for j in 0..n {
                            dst[j] += av * row[j];
                        }
                    }
                }
            }
            one(TensorData::F32(v))
        }
        Op::Anchors(Anchors { strides, offset }) => {
            let a = shape(0)[1];
            let mut pts = vec![0.0f32; 2 * a];
            let mut st = vec![0.0f32; a];
            let mut i = 0;
            for (t, &s) in inputs.iter().zip(strides) {
                let (h, w) = (t.shape[2], t.shape[3]);
                for y in 0..h {
                    for xx in 0..w {
                        pts[i] = xx as f32 + offset;
                        pts[a + i] = y as f32 + offset;
                        st[i] = s;
                        i += 1;
                    }
                }
            }
            Ok(vec![
                Tensor { shape: vec![2, a], data: TensorData::F32(pts) },
                Tensor { shape: vec![1, a], data: TensorData::F32(st) },
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_f32(shape.to_vec(), v.to_vec()).unwrap()
    }

    #[test]
    fn data_movement_matches_hand_computed_results() {
        let x = t(&[2, 3], &[0., 1., 2., 3., 4., 5.]);
        let tr = eval(&Op::Transpose(Transpose { perm: vec![1, 0] }), &[&x]).unwrap();
        assert_eq!(tr[0], t(&[3, 2], &[0., 3., 1., 4., 2., 5.]));
        let sp = eval(&Op::Split(Split { axis: 1, sizes: vec![1, 2] }), &[&x]).unwrap();
        assert_eq!(sp, vec![t(&[2, 1], &[0., 3.]), t(&[2, 2], &[1., 2., 4., 5.])]);
        let cat = eval(&Op::Concat(Axis { axis: 1 }), &[&sp[1], &sp[0]]).unwrap();
        assert_eq!(cat[0], t(&[2, 3], &[1., 2., 0., 4., 5., 3.]));
        let sl = eval(&Op::Slice(Slice { axes: vec![1], starts: vec![-1], ends: vec![-4], steps: vec![-2] }), &[&x])
            .unwrap();
        assert_eq!(sl[0], t(&[2, 2], &[2., 0., 5., 3.]));
    }

    #[test]
    fn arithmetic_broadcasts_and_softmax_normalises() {
        let x = t(&[2, 2], &[1., 2., 3., 4.]);
        let y = eval(&Op::Binary(Binary::Sub), &[&x, &t(&[2, 1], &[1., 10.])]).unwrap();
        assert_eq!(y[0], t(&[2, 2], &[0., 1., -7., -6.]));
        let s = eval(&Op::Softmax(Axis { axis: 0 }), &[&x]).unwrap();
        let e = 1.0 / (1.0 + 2f32.exp());
        assert!((s[0].f32s().unwrap()[0] - e).abs() < 1e-7);
        let m = eval(&Op::MatMul, &[&x, &x]).unwrap();
        assert_eq!(m[0], t(&[2, 2], &[7., 10., 15., 22.]));
    }

    #[test]
    fn anchors_are_cell_centres_level_by_level() {
        let f0 = Tensor::full(&[1, 1, 2, 3], 0.0);
        let f1 = Tensor::full(&[1, 1, 1, 1], 0.0);
        let out = eval(&Op::Anchors(Anchors { strides: vec![8.0, 16.0], offset: 0.5 }), &[&f0, &f1]).unwrap();
        assert_eq!(out[0], t(&[2, 7], &[0.5, 1.5, 2.5, 0.5, 1.5, 2.5, 0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 1.5, 0.5]));
        assert_eq!(out[1], t(&[1, 7], &[8., 8., 8., 8., 8., 8., 16.]));
    }
}
