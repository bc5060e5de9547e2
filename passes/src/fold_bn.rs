//! `fold-bn`: fold batch normalisation into the convolution before it.

use crate::context::PassContext;
use crate::pass::Pass;
use slimc_ir::BatchNorm;
use slimc_ir::{IrError, Model, Op, ParamKind, Tensor, TensorType, ValueDef};

/// Rewrites `batch_norm(conv2d(x, w[, b]))` into `conv2d(x, w', b')` with
/// `w' = w·γ/√(var+eps)` per output channel and `b' = β + (b − mean)·γ/√(var+eps)`, as
/// Ultralytics' `fuse()` does. Applies only where the conv result feeds the BN alone and
/// the conv weight has no other user. Invariant: inference outputs are unchanged up to
/// float rounding.
pub struct FoldBn;

impl Pass for FoldBn {
    fn name(&self) -> &'static str {
        "fold-bn"
    }
    fn summary(&self) -> &'static str {
        "fold batch_norm into the preceding conv2d (inference form)"
    }
    fn run(&self, model: &mut Model, _: &mut PassContext) -> Result<bool, IrError> {
        let users = model.graph.users();
        let mut folds = vec![];
        for (bi, bn) in model.graph.nodes.iter().enumerate() {
            let Op::BatchNorm(BatchNorm { eps, .. }) = bn.op else { continue };
            let y = bn.inputs[0];
            let Some(ci) = model.graph.producer(y) else { continue };
            let conv = &model.graph.nodes[ci.0];
            let g = &model.graph;
            let is_param = |v: slimc_ir::ValueId| matches!(g.value(v).def, ValueDef::Param(_));
            if !matches!(conv.op, Op::Conv2d(_))
                || users[y.0].len() != 1
                || g.outputs.contains(&y)
                || users[conv.inputs[1].0].len() != 1
                || !conv.inputs[1..].iter().all(|&v| is_param(v))
                || !bn.inputs[1..].iter().all(|&v| is_param(v))
            {
                continue;
            }
            folds.push((ci.0, bi, eps));
        }
        if folds.is_empty() {
            return Ok(false);
        }
        let mut remove = vec![false; model.graph.nodes.len()];
        for (ci, bi, eps) in folds {
            let g = &model.graph;
            let (conv, bn) = (&g.nodes[ci], &g.nodes[bi]);
            let name = |v: slimc_ir::ValueId| g.value(v).name.clone();
            let wname = name(conv.inputs[1]);
            let get = |v| model.tensors[&name(v)].f32s().map(|s| s.to_vec());
            let (gamma, beta, mean, var) =
                (get(bn.inputs[1])?, get(bn.inputs[2])?, get(bn.inputs[3])?, get(bn.inputs[4])?);
            let bias = match conv.inputs.get(2) {
                Some(&b) => get(b)?,
                None => vec![0.0; gamma.len()],
            };
            let mut w = model.tensors[&wname].clone();
            let per = w.numel() / gamma.len();
            let scale = slimc_ir::eval::nn::bn_scale(&gamma, &var, eps);
            for (o, chunk) in w.f32s_mut()?.chunks_mut(per).enumerate() {
                chunk.iter_mut().for_each(|x| *x *= scale[o]);
            }
            let b: Vec<f32> = (0..gamma.len()).map(|o| beta[o] + (bias[o] - mean[o]) * scale[o]).collect();
            let (conv_out, bn_out) = (conv.outputs[0], bn.outputs[0]);
            let (x, wv) = (conv.inputs[0], conv.inputs[1]);
            let base = wname.strip_suffix(".weight").unwrap_or(&wname).to_string();
            let bname = model.graph.fresh_name(&format!("{base}.bias"));
            let n = b.len();
            let bv = model.graph.add_param(&bname, TensorType::f32(&[n]), ParamKind::Weight);
            model.tensors.insert(bname, Tensor::from_f32(vec![n], b)?);
            model.tensors.insert(wname, w);
            model.graph.nodes[ci].inputs = vec![x, wv, bv];
            model.graph.replace_uses(bn_out, conv_out);
            remove[bi] = true;
        }
        let mut i = 0;
        model.graph.nodes.retain(|_| {
            i += 1;
            !remove[i - 1]
        });
        model.prune_tensors();
        Ok(true)
    }
}
