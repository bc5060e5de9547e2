//! One node on the CPU: every op kind decides here how it runs — a fast kernel writing into
//! the arena's buffers, or, by name, the IR's reference semantics ([`slimc_ir::eval`]) where
//! that is the kernel (small, rare or integer-valued work).

use super::{conv, conv_grad, epilogue, layout, norm, pointwise, pool};
use anyhow::Result;
use slimc_ir::eval::{eval, optim};
use slimc_ir::layout::{broadcast_strides, slice_view, transpose_strides};
use slimc_ir::{Axis, BatchNorm, Pool, Slice, Split, Transpose, Unary, UnaryGrad, Upsample};
use slimc_ir::{DType, Op, Tensor, TensorData};

/// Computes `op` on `args`; `shapes` are its results' shapes (from shape inference) and `bufs`
/// one reusable buffer per result: a kernel that writes into one takes it, leaving it empty.
/// `scratch` is working memory kept between calls; `epi` the epilogue a convolution applies to
/// its result.
pub(super) fn compute(
    op: &Op,
    args: &[&Tensor],
    shapes: &[Vec<usize>],
    bufs: &mut [Vec<f32>],
    scratch: &mut Vec<f32>,
    epi: Option<epilogue::Epilogue>,
) -> Result<Vec<Tensor>> {
    let x = args[0];
    let take = |bufs: &mut [Vec<f32>], k: usize| Tensor {
        shape: shapes[k].clone(),
        data: TensorData::F32(std::mem::take(&mut bufs[k])),
    };
    let small = |k: usize, v: Vec<f32>| Tensor { shape: shapes[k].clone(), data: TensorData::F32(v) };
    let all_f32 = args.iter().all(|a| a.dtype() == DType::F32);
    // The reference definition as the kernel: the anchor grid, the detection loss (its
    // assigner is sequential per image), the sign, softmax's gradient, the gradients of slicing
    // and broadcasting (small tensors in the detect head), and integer-valued shape arithmetic.
    let reference = || -> Result<Vec<Tensor>> { Ok(eval(op, args)?) };
    match op {
        Op::Conv2d(c) => {
            let bias = args.get(2).map(|b| b.f32s()).transpose()?;
            conv::conv2d(&mut bufs[0], x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, bias, c, epi);
        }
        Op::BatchNorm(BatchNorm { eps, .. }) => {
            let p = |i: usize| args[i].f32s();
            norm::batch_norm(&mut bufs[0], x.f32s()?, &x.shape, p(1)?, p(2)?, p(3)?, p(4)?, *eps);
        }
        Op::MaxPool2d(Pool { kernel, stride, pad }) => {
            pool::max_pool2d(&mut bufs[0], x.f32s()?, &x.shape, *kernel, *stride, *pad);
        }
        Op::Unary(Unary::Silu) => pointwise::silu(&mut bufs[0], x.f32s()?),
        Op::Unary(Unary::Sigmoid) => pointwise::sigmoid(&mut bufs[0], x.f32s()?),
        Op::Softmax(Axis { axis }) => pointwise::softmax(&mut bufs[0], x.f32s()?, &x.shape, *axis),
        Op::Binary(b) if all_f32 => {
            let y = args[1];
            let (sa, sb) = (broadcast_strides(&x.shape, &shapes[0]), broadcast_strides(&y.shape, &shapes[0]));
            pointwise::arith(&mut bufs[0], *b, x.f32s()?, &sa, y.f32s()?, &sb, &shapes[0]);
        }
        Op::Transpose(Transpose { perm }) if all_f32 => {
            layout::gather(&mut bufs[0], x.f32s()?, 0, &shapes[0], &transpose_strides(&x.shape, perm))
        }
        Op::Slice(Slice { axes, starts, ends, steps }) if all_f32 => {
            let (offset, strides) = slice_view(&x.shape, axes, starts, ends, steps)?;
            layout::gather(&mut bufs[0], x.f32s()?, offset, &shapes[0], &strides)
        }
        Op::Reshape(_) if all_f32 => layout::copy(&mut bufs[0], x.f32s()?),
        Op::Concat(Axis { axis }) if all_f32 => {
            let parts = args.iter().map(|a| a.f32s()).collect::<Result<Vec<_>, _>>()?;
            let widths: Vec<usize> = args.iter().map(|a| a.shape[*axis..].iter().product()).collect();
            layout::concat(&mut bufs[0], &parts, &widths);
        }
        Op::Split(Split { axis, .. }) if all_f32 => {
            let widths: Vec<usize> = shapes.iter().map(|s| s[*axis..].iter().product()).collect();
            layout::split(bufs, x.f32s()?, &widths);
            return Ok((0..shapes.len()).map(|k| take(bufs, k)).collect());
        }
        Op::Binary(_) | Op::Transpose(_) | Op::Slice(_) | Op::Reshape(_) | Op::Concat(_) | Op::Split(_) => {
            return reference()
        }
        Op::UpsampleNearest(Upsample { scale }) => layout::upsample_nearest(&mut bufs[0], x.f32s()?, &x.shape, *scale),
        Op::UpsampleNearestGrad(Upsample { scale }) => {
            layout::upsample_nearest_grad(&mut bufs[0], x.f32s()?, &x.shape, *scale)
        }
        Op::MatMul => {
            super::gemm::matmul(&mut bufs[0], x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, &shapes[0])
        }
        Op::Conv2dGradInput(c) => {
            let (w, xs) = (args[1], &args[2].shape);
            conv_grad::conv2d_grad_input(&mut bufs[0], x.f32s()?, w.f32s()?, &w.shape, xs, c);
        }
        Op::Conv2dGradWeight(c) => {
            let (xv, ws) = (args[1], &args[2].shape);
            conv_grad::conv2d_grad_weight(&mut bufs[0], scratch, x.f32s()?, xv.f32s()?, &xv.shape, ws, c);
        }
        Op::BatchNormTrain(BatchNorm { eps, momentum }) => {
            let p = |i: usize| args[i].f32s();
            let r =
                norm::batch_norm_train(&mut bufs[0], x.f32s()?, &x.shape, p(1)?, p(2)?, p(3)?, p(4)?, *eps, *momentum);
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
            let (dg, db) = norm::batch_norm_grad(&mut bufs[0], x.f32s()?, xv.f32s()?, &xv.shape, p(2)?, p(3)?, p(4)?);
            return Ok(vec![take(bufs, 0), small(1, dg), small(2, db)]);
        }
        Op::MaxPool2dGrad(Pool { kernel, stride, pad }) => {
            let xv = args[1];
            pool::max_pool2d_grad(&mut bufs[0], x.f32s()?, xv.f32s()?, &xv.shape, *kernel, *stride, *pad);
        }
        Op::UnaryGrad(UnaryGrad::Silu) => pointwise::silu_grad(&mut bufs[0], x.f32s()?, args[1].f32s()?),
        Op::Accumulate => {
            let [sum, next] = bufs else { unreachable!("accumulate has two results") };
            optim::accumulate_into(x.f32s()?, args[1].f32s()?, args[2].f32s()?, [sum, next]);
            return Ok(vec![take(bufs, 0), take(bufs, 1)]);
        }
        Op::SgdUpdate(u) => {
            let [p, b] = bufs else { unreachable!("sgd_update has two results") };
            let a = |i: usize| args[i].f32s();
            optim::sgd_update_into(x.f32s()?, a(1)?, a(2)?[0], a(3)?, a(4)?, u, [p, b]);
            return Ok(vec![take(bufs, 0), take(bufs, 1)]);
        }
        Op::AdamWUpdate(u) => {
            let [p, m, v] = bufs else { unreachable!("adamw_update has three results") };
            let a = |i: usize| args[i].f32s();
            optim::adamw_update_into(x.f32s()?, a(1)?, a(2)?[0], a(3)?, [a(4)?, a(5)?], u, [p, m, v]);
            return Ok(vec![take(bufs, 0), take(bufs, 1), take(bufs, 2)]);
        }
        Op::EmaUpdate => optim::ema_update_into(x.f32s()?, args[1].f32s()?, args[2].f32s()?, &mut bufs[0]),
        Op::Unary(Unary::Sign) | Op::UnaryGrad(UnaryGrad::Sigmoid) | Op::SoftmaxGrad(_) | Op::SliceGrad(_) => {
            return reference()
        }
        Op::SumTo | Op::Anchors(_) | Op::DetectLoss(_) | Op::DetectLossGrad(_) | Op::GlobalNorm => return reference(),
        Op::DistillLoss(_) | Op::DistillLossGrad(_) => return reference(),
        // The executable runs collectives through its communicator; here, a world of one.
        Op::AllReduce | Op::Broadcast(_) => return reference(),
    }
    Ok(vec![take(bufs, 0)])
}

/// A pointwise convolution (weight and optional bias in `wb`) of the concatenation of `parts`
/// along channels, without building it: each part is multiplied by its columns of the weight
/// and the products summed, then `epi` applied. `shape` is the result's, `buf` its reusable
/// buffer.
pub(super) fn conv_concatenated(
    parts: &[&Tensor],
    wb: &[&Tensor],
    shape: &[usize],
    buf: &mut Vec<f32>,
    epi: Option<epilogue::Epilogue>,
) -> Result<Vec<Tensor>> {
    let data = parts.iter().map(|p| p.f32s()).collect::<Result<Vec<_>, _>>()?;
    let channels: Vec<usize> = parts.iter().map(|p| p.shape[1]).collect();
    let bias = wb.get(1).map(|b| b.f32s()).transpose()?;
    conv::conv_pointwise_parts(buf, &data, &channels, wb[0].f32s()?, bias, shape, epi);
    Ok(vec![Tensor { shape: shape.to_vec(), data: TensorData::F32(std::mem::take(buf)) }])
}
