//! Shape inference: the output types of every op from its input types.
//!
//! The same rules serve the static types printed in the IR (with a symbolic batch) and the
//! concrete shapes the interpreters meet at run time (all dimensions fixed).

use crate::error::{invalid, Result};
use crate::layout::slice_range;
use crate::op::{
    Anchors, Axis, BatchNorm, Binary, DetectLoss, Distill, Pool, Reshape, Slice, Split, Transpose, Unary, UnaryGrad,
    Upsample,
};
use crate::op::{Op, ReshapeDim};
use crate::tensor::{DType, Dim, TensorType};

fn fixed(d: &Dim, what: &str) -> Result<usize> {
    d.fixed().ok_or_else(|| crate::IrError::Invalid(format!("{what} must have a known size, found `{d}`")))
}

fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.len() >= r { a[i + a.len() - r].clone() } else { Dim::Fixed(1) };
        let db = if i + b.len() >= r { b[i + b.len() - r].clone() } else { Dim::Fixed(1) };
        out.push(match (&da, &db) {
            (x, y) if x == y => x.clone(),
            (Dim::Fixed(1), y) => y.clone(),
            (x, Dim::Fixed(1)) => x.clone(),
            _ => return invalid(format!("cannot broadcast {} with {}", fmt_dims(a), fmt_dims(b))),
        });
    }
    Ok(out)
}

fn fmt_dims(d: &[Dim]) -> String {
    format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","))
}

fn check_rank(t: &TensorType, r: usize, what: &str) -> Result<()> {
    if t.rank() != r {
        return invalid(format!("{what} must have rank {r}, found {t}"));
    }
    Ok(())
}

fn window_out(input: usize, k: usize, stride: usize, dil: usize, pad: usize) -> Result<usize> {
    if k == 0 || stride == 0 || dil == 0 {
        return invalid(format!("window {k}, stride {stride} and dilation {dil} must be at least 1"));
    }
    let span = (k - 1).checked_mul(dil).and_then(|s| s.checked_add(1));
    let padded = input.checked_add(pad);
    let (Some(span), Some(padded)) = (span, padded) else {
        return invalid(format!("window {k} (dilation {dil}) or padding {pad} is too large"));
    };
    if padded < span {
        return invalid(format!("window {k} (dilation {dil}) does not fit input {input} with padding {pad}"));
    }
    Ok((padded - span) / stride + 1)
}

/// A product of dimensions: a known factor times symbols.
#[derive(Default)]
struct SymProduct {
    fixed: usize,
    syms: Vec<String>,
}

impl SymProduct {
    fn of(dims: &[Dim]) -> SymProduct {
        let mut p = SymProduct { fixed: 1, syms: vec![] };
        for d in dims {
            match d {
                Dim::Fixed(n) => p.fixed = p.fixed.saturating_mul(*n),
                Dim::Sym(s) => p.syms.push(s.clone()),
            }
        }
        p
    }
}

/// Output types of `op` for input types `inputs`, after checking the op's attributes
/// ([`Op::validate`]) and its number of inputs.
pub fn infer_types(op: &Op, inputs: &[&TensorType]) -> Result<Vec<TensorType>> {
    op.validate().or_else(|e| invalid(format!("{}: {e}", op.name())))?;
    let (lo, hi) = op.arity();
    if inputs.len() < lo || inputs.len() > hi {
        return invalid(format!("takes {lo}..={hi} inputs, given {}", inputs.len()));
    }
    let x = inputs[0];
    let f32t = |shape: Vec<Dim>| TensorType { dtype: DType::F32, shape };
    let same_dtype = || -> Result<()> {
        if inputs.iter().any(|t| t.dtype != x.dtype) {
            return invalid("inputs differ in element type");
        }
        Ok(())
    };
    Ok(match op {
        Op::Conv2d(c) => {
            let w = inputs[1];
            check_rank(x, 4, "conv2d input")?;
            check_rank(w, 4, "conv2d weight")?;
            let cin = fixed(&x.shape[1], "conv2d input channels")?;
            let wd = w.fixed_shape().ok_or_else(|| crate::IrError::Invalid("conv2d weight shape unknown".into()))?;
            if c.groups == 0 || cin % c.groups != 0 || wd[0] % c.groups != 0 || wd[1] * c.groups != cin {
                return invalid(format!(
                    "conv2d weight {w} does not fit {cin} input channels with groups={}",
                    c.groups
                ));
            }
            if let Some(b) = inputs.get(2) {
                if b.shape != [Dim::Fixed(wd[0])] {
                    return invalid(format!("conv2d bias {b} does not match {} output channels", wd[0]));
                }
            }
            let h = fixed(&x.shape[2], "conv2d input height")?;
            let wi = fixed(&x.shape[3], "conv2d input width")?;
            let oh = window_out(h, wd[2], c.stride[0], c.dilation[0], c.pad[0].saturating_add(c.pad[2]))?;
            let ow = window_out(wi, wd[3], c.stride[1], c.dilation[1], c.pad[1].saturating_add(c.pad[3]))?;
            vec![f32t(vec![x.shape[0].clone(), Dim::Fixed(wd[0]), Dim::Fixed(oh), Dim::Fixed(ow)])]
        }
        Op::BatchNorm(_) => {
            if x.rank() < 2 {
                return invalid(format!("batch_norm input must have rank >= 2, found {x}"));
            }
            for (i, p) in inputs[1..].iter().enumerate() {
                if p.shape != [x.shape[1].clone()] {
                    return invalid(format!("batch_norm parameter {} is {p}, expected [{}]", i + 1, x.shape[1]));
                }
            }
            vec![x.clone()]
        }
        Op::Unary(Unary::Silu) | Op::Unary(Unary::Sigmoid) => vec![x.clone()],
        Op::Binary(Binary::Add) | Op::Binary(Binary::Sub) | Op::Binary(Binary::Mul) | Op::Binary(Binary::Div) => {
            same_dtype()?;
            vec![TensorType { dtype: x.dtype, shape: broadcast(&x.shape, &inputs[1].shape)? }]
        }
        Op::Concat(Axis { axis }) => {
            same_dtype()?;
            let a = *axis;
            if a >= x.rank() {
                return invalid(format!("concat axis {a} out of range for {x}"));
            }
            let mut total = 0;
            for t in inputs {
                if t.rank() != x.rank() || (0..x.rank()).any(|i| i != a && t.shape[i] != x.shape[i]) {
                    return invalid(format!("concat inputs {x} and {t} differ off axis {a}"));
                }
                total += fixed(&t.shape[a], "concat axis")?;
            }
            let mut s = x.shape.clone();
            s[a] = Dim::Fixed(total);
            vec![TensorType { dtype: x.dtype, shape: s }]
        }
        Op::Split(Split { axis, sizes }) => {
            let a = *axis;
            if a >= x.rank() {
                return invalid(format!("split axis {a} out of range for {x}"));
            }
            let n = fixed(&x.shape[a], "split axis")?;
            if sizes.iter().sum::<usize>() != n || sizes.is_empty() {
                return invalid(format!("split sizes {sizes:?} do not add up to {n}"));
            }
            sizes
                .iter()
                .map(|&k| {
                    let mut s = x.shape.clone();
                    s[a] = Dim::Fixed(k);
                    TensorType { dtype: x.dtype, shape: s }
                })
                .collect()
        }
        Op::Slice(Slice { axes, starts, ends, steps }) => {
            if axes.len() != starts.len() || axes.len() != ends.len() || axes.len() != steps.len() {
                return invalid("slice axes, starts, ends and steps differ in length");
            }
            let mut s = x.shape.clone();
            for i in 0..axes.len() {
                let a = axes[i];
                if a >= x.rank() {
                    return invalid(format!("slice axis {a} out of range for {x}"));
                }
                let n = fixed(&x.shape[a], "sliced axis")?;
                let (_, _, len) = slice_range(n, starts[i], ends[i], steps[i])?;
                s[a] = Dim::Fixed(len);
            }
            vec![TensorType { dtype: x.dtype, shape: s }]
        }
        Op::MaxPool2d(Pool { kernel, stride, pad }) => {
            check_rank(x, 4, "max_pool2d input")?;
            let h = fixed(&x.shape[2], "max_pool2d input height")?;
            let w = fixed(&x.shape[3], "max_pool2d input width")?;
            let oh = window_out(h, kernel[0], stride[0], 1, pad[0].saturating_add(pad[2]))?;
            let ow = window_out(w, kernel[1], stride[1], 1, pad[1].saturating_add(pad[3]))?;
            vec![f32t(vec![x.shape[0].clone(), x.shape[1].clone(), Dim::Fixed(oh), Dim::Fixed(ow)])]
        }
        Op::UpsampleNearest(Upsample { scale }) => {
            check_rank(x, 4, "upsample_nearest input")?;
            let h = fixed(&x.shape[2], "upsample input height")?;
            let w = fixed(&x.shape[3], "upsample input width")?;
            vec![f32t(vec![x.shape[0].clone(), x.shape[1].clone(), Dim::Fixed(h * scale[0]), Dim::Fixed(w * scale[1])])]
        }
        Op::Reshape(Reshape { shape }) => {
            let mut out = Vec::with_capacity(shape.len());
            let mut infer_at = None;
            for d in shape {
                out.push(match d {
                    ReshapeDim::Fixed(n) => Dim::Fixed(*n),
                    ReshapeDim::Of { input, axis } => {
                        let t = inputs.get(*input).ok_or_else(|| {
                            crate::IrError::Invalid(format!("reshape refers to missing input {input}"))
                        })?;
                        t.shape
                            .get(*axis)
                            .cloned()
                            .ok_or_else(|| crate::IrError::Invalid(format!("reshape refers to axis {axis} of {t}")))?
                    }
                    ReshapeDim::Infer => {
                        if infer_at.is_some() {
                            return invalid("reshape has more than one inferred dimension");
                        }
                        infer_at = Some(out.len());
                        Dim::Fixed(0)
                    }
                });
            }
            let total = SymProduct::of(&x.shape);
            match infer_at {
                Some(i) => {
                    let mut rest: Vec<Dim> = out.clone();
                    rest.remove(i);
                    let known = SymProduct::of(&rest);
                    let mut syms = total.syms.clone();
                    for s in &known.syms {
                        match syms.iter().position(|t| t == s) {
                            Some(p) => {
                                syms.remove(p);
                            }
                            None => return invalid(format!("reshape of {x} to {} is ambiguous", fmt_dims(&out))),
                        }
                    }
                    if known.fixed == 0 || total.fixed % known.fixed != 0 || syms.len() > 1 {
                        return invalid(format!("cannot reshape {x} to {}", fmt_dims(&out)));
                    }
                    let n = total.fixed / known.fixed;
                    out[i] = match syms.pop() {
                        Some(s) if n == 1 => Dim::Sym(s),
                        Some(_) => return invalid(format!("reshape of {x} to {} is ambiguous", fmt_dims(&out))),
                        None => Dim::Fixed(n),
                    };
                }
                None => {
                    let p = SymProduct::of(&out);
                    let (mut a, mut b) = (total.syms.clone(), p.syms.clone());
                    a.sort();
                    b.sort();
                    if p.fixed != total.fixed || a != b {
                        return invalid(format!("cannot reshape {x} to {}", fmt_dims(&out)));
                    }
                }
            }
            vec![TensorType { dtype: x.dtype, shape: out }]
        }
        Op::Transpose(Transpose { perm }) => {
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
                return invalid(format!("transpose perm {perm:?} is not a permutation of the axes of {x}"));
            }
            vec![TensorType { dtype: x.dtype, shape: perm.iter().map(|&p| x.shape[p].clone()).collect() }]
        }
        Op::MatMul => {
            let y = inputs[1];
            if x.rank() < 2 || y.rank() < 2 {
                return invalid(format!("matmul needs rank >= 2, found {x} and {y}"));
            }
            let (xr, yr) = (x.rank(), y.rank());
            if x.shape[xr - 1] != y.shape[yr - 2] {
                return invalid(format!("matmul inner dimensions differ: {x} @ {y}"));
            }
            let mut s = broadcast(&x.shape[..xr - 2], &y.shape[..yr - 2])?;
            s.push(x.shape[xr - 2].clone());
            s.push(y.shape[yr - 1].clone());
            vec![f32t(s)]
        }
        Op::Softmax(Axis { axis }) => {
            if *axis >= x.rank() {
                return invalid(format!("softmax axis {axis} out of range for {x}"));
            }
            vec![x.clone()]
        }
        Op::Anchors(Anchors { strides, .. }) => {
            if strides.len() != inputs.len() {
                return invalid(format!("anchors has {} strides for {} levels", strides.len(), inputs.len()));
            }
            let mut a = 0;
            for t in inputs {
                check_rank(t, 4, "anchors level")?;
                a += fixed(&t.shape[2], "level height")? * fixed(&t.shape[3], "level width")?;
            }
            vec![TensorType::f32(&[2, a]), TensorType::f32(&[1, a])]
        }
        Op::Conv2dGradInput(c) => {
            let fwd = infer_types(&Op::Conv2d(c.clone()), &[inputs[2], inputs[1]])?;
            same_shape(x, &fwd[0], "conv2d_grad_input dy")?;
            vec![inputs[2].clone()]
        }
        Op::Conv2dGradWeight(c) => {
            let fwd = infer_types(&Op::Conv2d(c.clone()), &[inputs[1], inputs[2]])?;
            same_shape(x, &fwd[0], "conv2d_grad_weight dy")?;
            vec![inputs[2].clone()]
        }
        Op::BatchNormTrain(BatchNorm { eps, momentum }) => {
            let y = infer_types(&Op::BatchNorm(BatchNorm { eps: *eps, momentum: *momentum }), inputs)?;
            let c = inputs[1].clone();
            vec![y[0].clone(), c.clone(), c.clone(), c.clone(), c]
        }
        Op::BatchNormGrad => {
            same_shape(x, inputs[1], "batch_norm_grad dy")?;
            for (i, p) in inputs[2..].iter().enumerate() {
                if p.shape != [x.shape[1].clone()] {
                    return invalid(format!("batch_norm_grad operand {} is {p}, expected [{}]", i + 2, x.shape[1]));
                }
            }
            vec![x.clone(), inputs[2].clone(), inputs[2].clone()]
        }
        Op::UnaryGrad(UnaryGrad::Silu) | Op::UnaryGrad(UnaryGrad::Sigmoid) => {
            same_shape(x, inputs[1], "gradient")?;
            vec![x.clone()]
        }
        Op::SoftmaxGrad(Axis { axis }) => {
            same_shape(x, inputs[1], "softmax_grad dy")?;
            infer_types(&Op::Softmax(Axis { axis: *axis }), &inputs[1..])?
        }
        Op::MaxPool2dGrad(Pool { kernel, stride, pad }) => {
            let fwd = infer_types(&Op::MaxPool2d(Pool { kernel: *kernel, stride: *stride, pad: *pad }), &inputs[1..])?;
            same_shape(x, &fwd[0], "max_pool2d_grad dy")?;
            vec![inputs[1].clone()]
        }
        Op::UpsampleNearestGrad(Upsample { scale }) => {
            check_rank(x, 4, "upsample_nearest_grad input")?;
            let h = fixed(&x.shape[2], "upsample_nearest_grad height")?;
            let w = fixed(&x.shape[3], "upsample_nearest_grad width")?;
            if scale[0] == 0 || scale[1] == 0 || h % scale[0] != 0 || w % scale[1] != 0 {
                return invalid(format!("upsample_nearest_grad: {x} is not a multiple of scale {scale:?}"));
            }
            vec![f32t(vec![x.shape[0].clone(), x.shape[1].clone(), Dim::Fixed(h / scale[0]), Dim::Fixed(w / scale[1])])]
        }
        Op::SliceGrad(s) => {
            let op = Op::Slice(s.clone());
            let fwd = infer_types(&op, &inputs[1..])?;
            same_shape(x, &fwd[0], "slice_grad dy")?;
            vec![TensorType { dtype: x.dtype, shape: inputs[1].shape.clone() }]
        }
        Op::SumTo => {
            let like = inputs[1];
            if broadcast(&like.shape, &x.shape)? != x.shape {
                return invalid(format!("sum_to: {like} does not broadcast to {x}"));
            }
            vec![TensorType { dtype: x.dtype, shape: like.shape.clone() }]
        }
        Op::Unary(Unary::Sign) => vec![x.clone()],
        Op::Accumulate | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => {
            // Operands: the tensor, its gradient or model value, (for updates) the norm, the step
            // scalars, then state shaped like the tensor.
            let (second, scalars, state) = match op {
                Op::Accumulate | Op::EmaUpdate => (inputs[1], inputs[2], &inputs[3..]),
                // The updates.
                _ => {
                    if inputs[2].rank() != 0 || inputs[2].dtype != DType::F32 {
                        return invalid(format!(
                            "{}: the gradient norm must be an f32 scalar, found {}",
                            op.name(),
                            inputs[2]
                        ));
                    }
                    (inputs[1], inputs[3], &inputs[4..])
                }
            };
            if x.dtype != DType::F32 {
                return invalid(format!("{}: expects f32 tensors, found {x}", op.name()));
            }
            for t in std::iter::once(&second).chain(state) {
                same_shape(t, x, op.name())?;
            }
            step_scalars_type(scalars, op)?;
            vec![x.clone(); op.num_outputs(inputs.len())]
        }
        Op::AllReduce => {
            let (scalars, xs) = inputs.split_last().expect("arity");
            step_scalars_type(scalars, op)?;
            if xs.iter().any(|t| t.dtype != DType::F32) {
                return invalid("all_reduce: expects f32 tensors");
            }
            xs.iter().map(|&t| t.clone()).collect()
        }
        Op::Broadcast(_) => {
            if inputs.iter().any(|t| t.dtype != DType::F32) {
                return invalid("broadcast: expects f32 tensors");
            }
            inputs.iter().map(|&t| t.clone()).collect()
        }
        Op::GlobalNorm => {
            if inputs.iter().any(|t| t.dtype != DType::F32) {
                return invalid("global_norm: expects f32 tensors");
            }
            vec![f32t(vec![])]
        }
        Op::DetectLoss(DetectLoss { strides, reg_max, .. })
        | Op::DetectLossGrad(DetectLoss { strides, reg_max, .. }) => {
            let levels = &inputs[..strides.len()];
            for t in levels {
                check_rank(t, 4, "detect_loss level")?;
                if t.shape[0] != x.shape[0] || t.shape[1] != x.shape[1] {
                    return invalid(format!("detect_loss levels {x} and {t} differ in batch or channels"));
                }
            }
            if fixed(&x.shape[1], "detect_loss channels")? <= 4 * reg_max {
                return invalid(format!("detect_loss level {x} has no class channels beyond 4x{reg_max}"));
            }
            let targets = inputs[strides.len()];
            if targets.rank() != 2 || targets.shape[1] != Dim::Fixed(6) {
                return invalid(format!("detect_loss targets must be [M,6], found {targets}"));
            }
            if matches!(op, Op::DetectLoss(_)) {
                vec![TensorType::f32(&[3]), TensorType::f32(&[])]
            } else {
                levels.iter().map(|t| (*t).clone()).collect()
            }
        }
        Op::DistillLoss(Distill { reg_max, .. }) | Op::DistillLossGrad(Distill { reg_max, .. }) => {
            if !inputs.len().is_multiple_of(2) {
                return invalid(format!("{}: {} maps, not a student's and a teacher's alike", op.name(), inputs.len()));
            }
            let (student, teacher) = inputs.split_at(inputs.len() / 2);
            for (s, t) in student.iter().zip(teacher) {
                check_rank(s, 4, "distill_loss level")?;
                if s != t || s.shape[..2] != x.shape[..2] {
                    return invalid(format!("{}: student map {s} and teacher map {t} differ", op.name()));
                }
            }
            if fixed(&x.shape[1], "distill_loss channels")? <= 4 * reg_max {
                return invalid(format!("{}: level {x} has no class channels beyond 4x{reg_max}", op.name()));
            }
            if matches!(op, Op::DistillLoss(_)) {
                vec![TensorType::f32(&[2]), TensorType::f32(&[])]
            } else {
                student.iter().map(|t| (*t).clone()).collect()
            }
        }
    })
}

/// Checks that `scalars`, an operand of `op`, is the f32 vector of [`crate::step_scalars`].
fn step_scalars_type(scalars: &TensorType, op: &Op) -> Result<()> {
    if scalars.shape != [Dim::Fixed(crate::step_scalars::LEN)] || scalars.dtype != DType::F32 {
        return invalid(format!(
            "{}: the step scalars must be f32[{}], found {scalars}",
            op.name(),
            crate::step_scalars::LEN
        ));
    }
    Ok(())
}

fn same_shape(a: &TensorType, b: &TensorType, what: &str) -> Result<()> {
    if a.shape != b.shape {
        return invalid(format!("{what} is {a}, expected {b}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::ReshapeDim::{Infer, Of};

    fn sym(dims: &[&str]) -> TensorType {
        TensorType {
            dtype: DType::F32,
            shape: dims.iter().map(|d| d.parse().map(Dim::Fixed).unwrap_or(Dim::Sym(d.to_string()))).collect(),
        }
    }

    #[test]
    fn broadcasting_keeps_the_symbolic_batch() {
        let out = infer_types(&Op::Binary(Binary::Add), &[&sym(&["N", "1", "4"]), &sym(&["3", "1"])]).unwrap();
        assert_eq!(out[0], sym(&["N", "3", "4"]));
        assert!(infer_types(&Op::Binary(Binary::Add), &[&sym(&["2", "3"]), &sym(&["4", "3"])]).is_err());
    }

    #[test]
    fn reshape_infers_through_the_batch_symbol() {
        let op = Op::Reshape(Reshape {
            shape: vec![Of { input: 0, axis: 0 }, ReshapeDim::Fixed(4), ReshapeDim::Fixed(16), Infer],
        });
        let out = infer_types(&op, &[&sym(&["N", "64", "8400"])]).unwrap();
        assert_eq!(out[0], sym(&["N", "4", "16", "8400"]));
        let bad = Op::Reshape(Reshape { shape: vec![ReshapeDim::Fixed(5), Infer] });
        assert!(infer_types(&bad, &[&sym(&["2", "8"])]).is_err());
    }

    #[test]
    fn conv_output_size_is_floor_of_the_window_count() {
        // PyTorch: (H + 2p - d(k-1) - 1) / s + 1 = (65 + 2 - 2 - 1) / 2 + 1 = 33.
        let c = Op::Conv2d(crate::Conv2d { stride: [2, 2], pad: [1; 4], dilation: [1, 1], groups: 1 });
        let out = infer_types(&c, &[&sym(&["N", "3", "65", "64"]), &sym(&["8", "3", "3", "3"])]).unwrap();
        assert_eq!(out[0], sym(&["N", "8", "33", "32"]));
        let grouped = Op::Conv2d(crate::Conv2d { stride: [1, 1], pad: [0; 4], dilation: [1, 1], groups: 2 });
        assert!(infer_types(&grouped, &[&sym(&["1", "3", "4", "4"]), &sym(&["4", "1", "1", "1"])]).is_err());
    }
}
