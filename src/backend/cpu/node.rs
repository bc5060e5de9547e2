//! One node on the CPU: the fast kernels for the heavy ops, writing into the arena's buffers,
//! and the IR's reference semantics ([`slimc_ir::eval`]) for the rest.

use super::{grad_kernels, kernels};
use anyhow::Result;
use slimc_ir::eval::eval;
use slimc_ir::{DType, Op, Tensor, TensorData};

/// Computes `op` on `args`; `shapes` are its results' shapes (from shape inference) and `bufs`
/// one reusable buffer per result: a kernel that writes into one takes it, leaving it empty.
/// `scratch` is working memory kept between calls.
pub(super) fn compute(
    op: &Op,
    args: &[&Tensor],
    shapes: &[Vec<usize>],
    bufs: &mut [Vec<f32>],
    scratch: &mut Vec<f32>,
) -> Result<Vec<Tensor>> {
    let x = args[0];
    let take = |bufs: &mut [Vec<f32>], k: usize| Tensor {
        shape: shapes[k].clone(),
        data: TensorData::F32(std::mem::take(&mut bufs[k])),
    };
    let small = |k: usize, v: Vec<f32>| Tensor { shape: shapes[k].clone(), data: TensorData::F32(v) };
    match op {
        Op::Conv2d(c) => {
            let bias = args.get(2).map(|b| b.f32s()).transpose()?;
            kernels::conv2d(&mut bufs[0], x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, bias, c);
        }
        Op::BatchNorm { eps, .. } => {
            let p = |i: usize| args[i].f32s();
            kernels::batch_norm(&mut bufs[0], x.f32s()?, &x.shape, p(1)?, p(2)?, p(3)?, p(4)?, *eps);
        }
        Op::MaxPool2d { kernel, stride, pad } => {
            kernels::max_pool2d(&mut bufs[0], x.f32s()?, &x.shape, *kernel, *stride, *pad);
        }
        Op::Silu => kernels::silu(&mut bufs[0], x.f32s()?),
        Op::Softmax { axis } => kernels::softmax(&mut bufs[0], x.f32s()?, &x.shape, *axis),
        Op::Add if x.shape == args[1].shape && x.dtype() == DType::F32 => {
            kernels::add_same(&mut bufs[0], x.f32s()?, args[1].f32s()?)
        }
        Op::MatMul => kernels::matmul(&mut bufs[0], x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, &shapes[0]),
        Op::Conv2dGradInput(c) => {
            let (w, xs) = (args[1], &args[2].shape);
            grad_kernels::conv2d_grad_input(&mut bufs[0], x.f32s()?, w.f32s()?, &w.shape, xs, c);
        }
        Op::Conv2dGradWeight(c) => {
            let (xv, ws) = (args[1], &args[2].shape);
            grad_kernels::conv2d_grad_weight(&mut bufs[0], scratch, x.f32s()?, xv.f32s()?, &xv.shape, ws, c);
        }
        Op::BatchNormTrain { eps, momentum } => {
            let p = |i: usize| args[i].f32s();
            let r = grad_kernels::batch_norm_train(
                &mut bufs[0],
                x.f32s()?,
                &x.shape,
                p(1)?,
                p(2)?,
                p(3)?,
                p(4)?,
                *eps,
                *momentum,
            );
            return Ok(vec![
                take(bufs, 0),
                small(1, r.mean),
                small(2, r.invstd),
                small(3, r.running_mean),
                small(4, r.running_var),
            ]);
        }
        Op::BatchNormGrad => {
            let p = |i: usize| args[i].f32s();
            let xv = args[1];
            let (dg, db) =
                grad_kernels::batch_norm_grad(&mut bufs[0], x.f32s()?, xv.f32s()?, &xv.shape, p(2)?, p(3)?, p(4)?);
            return Ok(vec![take(bufs, 0), small(1, dg), small(2, db)]);
        }
        Op::MaxPool2dGrad { kernel, stride, pad } => {
            let xv = args[1];
            grad_kernels::max_pool2d_grad(&mut bufs[0], x.f32s()?, xv.f32s()?, &xv.shape, *kernel, *stride, *pad);
        }
        Op::SiluGrad => grad_kernels::silu_grad(&mut bufs[0], x.f32s()?, args[1].f32s()?),
        Op::Concat { axis } if args.iter().all(|a| a.dtype() == DType::F32) => {
            let parts = args.iter().map(|a| a.f32s()).collect::<Result<Vec<_>, _>>()?;
            let widths: Vec<usize> = args.iter().map(|a| a.shape[*axis..].iter().product()).collect();
            kernels::concat(&mut bufs[0], &parts, &widths);
        }
        Op::Split { axis, .. } if x.dtype() == DType::F32 => {
            let widths: Vec<usize> = shapes.iter().map(|s| s[*axis..].iter().product()).collect();
            kernels::split(bufs, x.f32s()?, &widths);
            return Ok((0..shapes.len()).map(|k| take(bufs, k)).collect());
        }
        _ => return Ok(eval(op, args)?),
    }
    Ok(vec![take(bufs, 0)])
}
