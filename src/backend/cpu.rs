//! The CPU interpreter: runs any IR graph forward in f32, NCHW, at any batch size and at any
//! image size the graph's ops allow; the training program too (batch norm in training mode, the
//! gradient ops, the detection loss).

use super::{grad_kernels, kernels};
use crate::train::loss::{self, LossSpec};
use anyhow::{anyhow, bail, Result};
use slimc_ir::eval::eval;
use slimc_ir::{Model, Op, Tensor, TensorData, ValueDef};
use std::borrow::Cow;

/// Runs `model` on `inputs` (one tensor per graph input) and returns the graph outputs.
pub fn run(model: &Model, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    let g = &model.graph;
    if inputs.len() != g.inputs.len() {
        bail!("the model takes {} input(s), given {}", g.inputs.len(), inputs.len());
    }
    let mut env: Vec<Option<Cow<Tensor>>> = vec![None; g.values.len()];
    for (&v, t) in g.inputs.iter().zip(inputs) {
        let ty = g.ty(v);
        let ok = ty.rank() == t.shape.len()
            && ty
                .shape
                .iter()
                .zip(&t.shape)
                .enumerate()
                .all(|(i, (d, &n))| d.fixed().is_none_or(|f| f == n || (i >= 2 && ty.rank() == 4)));
        if !ok || t.dtype() != ty.dtype {
            bail!("input %{} is {}, the model takes {}", g.value(v).name, t.ty(), ty);
        }
        env[v.0] = Some(Cow::Borrowed(t));
    }
    super::memory::check_fits(g, inputs)?;
    for &p in &g.params {
        let name = &g.value(p).name;
        let t = model.tensors.get(name).ok_or_else(|| anyhow!("parameter %{name} has no tensor"))?;
        env[p.0] = Some(Cow::Borrowed(t));
    }
    let last_use = slimc_ir::memory::last_uses(g);
    for (i, node) in g.nodes.iter().enumerate() {
        let args: Vec<&Tensor> = node.inputs.iter().map(|v| env[v.0].as_deref().expect("topological order")).collect();
        let outs =
            run_node(&node.op, &args).map_err(|e| anyhow!("node {i} ({} @{}): {e}", node.op.name(), node.scope))?;
        for (&o, t) in node.outputs.iter().zip(outs) {
            env[o.0] = Some(Cow::Owned(t));
        }
        for &v in &node.inputs {
            if last_use[v.0] == Some(i) && matches!(g.value(v).def, ValueDef::Node(..)) && !g.outputs.contains(&v) {
                env[v.0] = None;
            }
        }
    }
    Ok(g.outputs.iter().map(|o| env[o.0].as_deref().expect("outputs are computed").clone()).collect())
}

fn f32_tensor(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
    Tensor { shape, data: TensorData::F32(data) }
}

/// Computes one op on concrete tensors: fast kernels for the heavy ops, the IR's reference
/// semantics for the rest.
pub fn run_node(op: &Op, args: &[&Tensor]) -> Result<Vec<Tensor>> {
    // Shape inference validates operands before any kernel indexes into them.
    let types: Vec<_> = args.iter().map(|t| t.ty()).collect();
    let out_types = slimc_ir::infer_types(op, &types.iter().collect::<Vec<_>>())?;
    let x = args[0];
    let one = |shape: Vec<usize>, data: Vec<f32>| Ok(vec![f32_tensor(shape, data)]);
    match op {
        Op::Conv2d(c) => {
            let bias = match args.get(2) {
                Some(b) => Some(b.f32s()?),
                None => None,
            };
            let (data, shape) = kernels::conv2d(x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, bias, c);
            one(shape, data)
        }
        Op::BatchNorm { eps, .. } => {
            let p = |i: usize| args[i].f32s();
            one(x.shape.clone(), kernels::batch_norm(x.f32s()?, &x.shape, p(1)?, p(2)?, p(3)?, p(4)?, *eps))
        }
        Op::MaxPool2d { kernel, stride, pad } => {
            let (data, shape) = kernels::max_pool2d(x.f32s()?, &x.shape, *kernel, *stride, *pad);
            one(shape, data)
        }
        Op::Silu => one(x.shape.clone(), kernels::silu(x.f32s()?)),
        Op::Add if x.shape == args[1].shape && x.dtype() == slimc_ir::DType::F32 => {
            one(x.shape.clone(), kernels::add_same(x.f32s()?, args[1].f32s()?))
        }
        Op::MatMul => {
            let shape = out_types[0].fixed_shape().expect("concrete");
            let data = kernels::matmul(x.f32s()?, &x.shape, args[1].f32s()?, &args[1].shape, &shape);
            one(shape, data)
        }
        Op::Conv2dGradInput(c) => {
            let (w, xs) = (args[1], &args[2].shape);
            one(xs.clone(), grad_kernels::conv2d_grad_input(x.f32s()?, w.f32s()?, &w.shape, xs, c))
        }
        Op::Conv2dGradWeight(c) => {
            let (xv, ws) = (args[1], &args[2].shape);
            one(ws.clone(), grad_kernels::conv2d_grad_weight(x.f32s()?, xv.f32s()?, &xv.shape, ws, c))
        }
        Op::BatchNormTrain { eps, momentum } => {
            let p = |i: usize| args[i].f32s();
            let r = grad_kernels::batch_norm_train(x.f32s()?, &x.shape, p(1)?, p(2)?, p(3)?, p(4)?, *eps, *momentum);
            let c = vec![x.shape[1]];
            Ok(vec![
                f32_tensor(x.shape.clone(), r.y),
                f32_tensor(c.clone(), r.mean),
                f32_tensor(c.clone(), r.invstd),
                f32_tensor(c.clone(), r.running_mean),
                f32_tensor(c, r.running_var),
            ])
        }
        Op::BatchNormGrad => {
            let p = |i: usize| args[i].f32s();
            let xv = args[1];
            let (dx, dg, db) = grad_kernels::batch_norm_grad(x.f32s()?, xv.f32s()?, &xv.shape, p(2)?, p(3)?, p(4)?);
            let c = vec![xv.shape[1]];
            Ok(vec![f32_tensor(xv.shape.clone(), dx), f32_tensor(c.clone(), dg), f32_tensor(c, db)])
        }
        Op::MaxPool2dGrad { kernel, stride, pad } => {
            let xv = args[1];
            one(
                xv.shape.clone(),
                grad_kernels::max_pool2d_grad(x.f32s()?, xv.f32s()?, &xv.shape, *kernel, *stride, *pad),
            )
        }
        Op::SiluGrad => one(x.shape.clone(), grad_kernels::silu_grad(x.f32s()?, args[1].f32s()?)),
        Op::DetectLoss { strides, gains, reg_max } => {
            let spec = LossSpec { strides, gains, reg_max: *reg_max };
            let (items, total) = loss::detect_loss(&args[..strides.len()], args[strides.len()], &spec)?;
            Ok(vec![f32_tensor(vec![3], items.to_vec()), f32_tensor(vec![], vec![total])])
        }
        Op::DetectLossGrad { strides, gains, reg_max } => {
            let spec = LossSpec { strides, gains, reg_max: *reg_max };
            loss::detect_loss_grad(&args[..strides.len()], args[strides.len()], &spec)
        }
        _ => eval(op, args)?.ok_or_else(|| anyhow!("no CPU implementation of {}", op.name())),
    }
}
