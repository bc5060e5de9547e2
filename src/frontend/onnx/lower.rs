//! Lowering one ONNX node to an IR op.

use super::proto::*;
use super::Importer;
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::NodeProto;
use slimc_ir::{Axis, BatchNorm, Binary, Pool, Reshape, Slice, Split, Transpose, Unary, Upsample};
use slimc_ir::{Conv2d, Op, ParamKind, ReshapeDim, ValueId};

impl Importer {
    /// Lowers one ONNX node to an IR op over `inputs`, or returns `None` for ops evaluated only
    /// at import time.
    pub(super) fn lower_op(&mut self, node: &NodeProto) -> Result<Option<(Op, Vec<ValueId>)>> {
        let op = node.op_type.as_str();
        Ok(Some(match op {
            "Conv" => {
                if attr_str(node, "auto_pad", "NOTSET") != "NOTSET" {
                    bail!("auto_pad is not supported; export with explicit pads");
                }
                let x = self.value(node, 0, ParamKind::Const)?;
                let w = self.value(node, 1, ParamKind::Weight)?;
                let mut ins = vec![x, w];
                if node.input.len() > 2 && !node.input[2].is_empty() {
                    ins.push(self.value(node, 2, ParamKind::Weight)?);
                }
                let pads = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                if pads.len() != 4 || pads.iter().any(|&p| p < 0) {
                    bail!("only 2-D convolutions with non-negative pads are supported, found pads {pads:?}");
                }
                let groups = attr_int(node, "group", 1);
                if groups < 1 {
                    bail!("groups {groups} must be at least 1");
                }
                let c = Conv2d {
                    stride: pair(&attr_ints(node, "strides").unwrap_or(vec![1, 1]), "strides")?,
                    pad: [pads[0] as usize, pads[1] as usize, pads[2] as usize, pads[3] as usize],
                    dilation: pair(&attr_ints(node, "dilations").unwrap_or(vec![1, 1]), "dilations")?,
                    groups: groups as usize,
                };
                (Op::Conv2d(c), ins)
            }
            "BatchNormalization" => {
                if attr_int(node, "training_mode", 0) != 0 || node.output.len() > 1 {
                    bail!("training-mode BatchNormalization is not supported");
                }
                let x = self.value(node, 0, ParamKind::Const)?;
                let g = self.value(node, 1, ParamKind::Weight)?;
                let b = self.value(node, 2, ParamKind::Weight)?;
                let m = self.value(node, 3, ParamKind::Buffer)?;
                let v = self.value(node, 4, ParamKind::Buffer)?;
                let op = Op::BatchNorm(BatchNorm {
                    eps: attr_float(node, "epsilon", 1e-5),
                    momentum: 1.0 - attr_float(node, "momentum", 0.9),
                });
                (op, vec![x, g, b, m, v])
            }
            "Sigmoid" => (Op::Unary(Unary::Sigmoid), vec![self.value(node, 0, ParamKind::Const)?]),
            "Add" | "Sub" | "Mul" | "Div" => {
                let a = self.value(node, 0, ParamKind::Const)?;
                let b = self.value(node, 1, ParamKind::Const)?;
                if op == "Mul" {
                    for (x, s) in [(a, b), (b, a)] {
                        if self.sigmoid_of.get(&s) == Some(&x) {
                            return Ok(Some((Op::Unary(Unary::Silu), vec![x])));
                        }
                    }
                }
                let arith = Binary::ALL.iter().copied().find(|&f| onnx_binary(f) == op);
                (Op::Binary(arith.ok_or_else(|| anyhow!("{op} is not arithmetic"))?), vec![a, b])
            }
            "Concat" => {
                let rank = self.rank_of(node, 0)?;
                let axis = norm_axis(attr_int(node, "axis", 0), rank)?;
                let ins =
                    (0..node.input.len()).map(|i| self.value(node, i, ParamKind::Const)).collect::<Result<_>>()?;
                (Op::Concat(Axis { axis }), ins)
            }
            "Split" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let ty = self.g.ty(x).clone();
                let axis = norm_axis(attr_int(node, "axis", 0), ty.rank())?;
                let n = ty.shape[axis].fixed().ok_or_else(|| anyhow!("split axis has no static size"))?;
                let sizes: Vec<usize> = match self.known(node, 1)? {
                    Some(t) => i64s(&t)?.iter().map(|&s| s.max(0) as usize).collect(),
                    None => match attr_ints(node, "split") {
                        Some(v) => v.iter().map(|&s| s.max(0) as usize).collect(),
                        None => {
                            let k = node.output.len();
                            let part = n.div_ceil(k);
                            (0..k).map(|i| part.min(n.saturating_sub(i * part))).collect()
                        }
                    },
                };
                (Op::Split(Split { axis, sizes }), vec![x])
            }
            "Slice" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let rank = self.g.ty(x).rank();
                let starts = i64s(&self.known(node, 1)?.ok_or_else(|| anyhow!("Slice needs starts"))?)?;
                let ends = i64s(&self.known(node, 2)?.ok_or_else(|| anyhow!("Slice needs ends"))?)?;
                let axes = match self.known(node, 3)? {
                    Some(t) => i64s(&t)?.iter().map(|&a| norm_axis(a, rank)).collect::<Result<Vec<_>>>()?,
                    None => (0..starts.len()).collect(),
                };
                let steps = match self.known(node, 4)? {
                    Some(t) => i64s(&t)?,
                    None => vec![1; starts.len()],
                };
                (Op::Slice(Slice { axes, starts, ends, steps }), vec![x])
            }
            "MaxPool" => {
                if attr_int(node, "ceil_mode", 0) != 0
                    || attr_str(node, "auto_pad", "NOTSET") != "NOTSET"
                    || node.output.len() > 1
                {
                    bail!("MaxPool with ceil_mode, auto_pad or indices is not supported");
                }
                if attr_ints(node, "dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
                    bail!("dilated MaxPool is not supported");
                }
                let pads = attr_ints(node, "pads").unwrap_or(vec![0; 4]);
                let p: Vec<usize> = pads.iter().map(|&v| v.max(0) as usize).collect();
                if p.len() != 4 {
                    bail!("MaxPool must be 2-D");
                }
                let k = pair(&attr_ints(node, "kernel_shape").unwrap_or_default(), "kernel_shape")?;
                let s = pair(&attr_ints(node, "strides").unwrap_or(vec![1, 1]), "strides")?;
                (
                    Op::MaxPool2d(Pool { kernel: k, stride: s, pad: [p[0], p[1], p[2], p[3]] }),
                    vec![self.value(node, 0, ParamKind::Const)?],
                )
            }
            "Resize" => {
                if attr_str(node, "mode", "nearest") != "nearest" {
                    bail!("only nearest Resize is supported");
                }
                let x = self.value(node, 0, ParamKind::Const)?;
                let shape = self.g.ty(x).fixed_shape().ok_or_else(|| anyhow!("Resize input has no static shape"))?;
                let scales: Vec<f32> = match (self.known(node, 2)?, self.known(node, 3)?) {
                    (Some(s), _) if s.numel() > 0 => s.f32s()?.to_vec(),
                    (_, Some(sz)) => i64s(&sz)?.iter().zip(&shape).map(|(&o, &i)| o as f32 / i as f32).collect(),
                    _ => bail!("Resize needs constant scales or sizes"),
                };
                if scales.len() != 4
                    || scales[0] != 1.0
                    || scales[1] != 1.0
                    || scales[2].fract() != 0.0
                    || scales[3].fract() != 0.0
                    || !(1.0..=64.0).contains(&scales[2])
                    || !(1.0..=64.0).contains(&scales[3])
                {
                    bail!("Resize is supported as integer nearest upsampling of H and W by 1 to 64, found scales {scales:?}");
                }
                (Op::UpsampleNearest(Upsample { scale: [scales[2] as usize, scales[3] as usize] }), vec![x])
            }
            "Reshape" => {
                if attr_int(node, "allowzero", 0) != 0 {
                    bail!("Reshape with allowzero=1 is not supported");
                }
                let x = self.value(node, 0, ParamKind::Const)?;
                let shape = i64s(&self.known(node, 1)?.ok_or_else(|| anyhow!("Reshape needs a shape"))?)?;
                let dims = shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match d {
                        0 => ReshapeDim::Of { input: 0, axis: i },
                        -1 => ReshapeDim::Infer,
                        d => ReshapeDim::Fixed(d.max(0) as usize),
                    })
                    .collect();
                (Op::Reshape(Reshape { shape: dims }), vec![x])
            }
            "Transpose" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let r = self.g.ty(x).rank();
                let perm = attr_ints(node, "perm")
                    .map(|p| p.iter().map(|&a| a as usize).collect())
                    .unwrap_or_else(|| (0..r).rev().collect());
                (Op::Transpose(Transpose { perm }), vec![x])
            }
            "MatMul" => {
                (Op::MatMul, vec![self.value(node, 0, ParamKind::Const)?, self.value(node, 1, ParamKind::Const)?])
            }
            "Softmax" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let axis = norm_axis(attr_int(node, "axis", -1), self.g.ty(x).rank())?;
                (Op::Softmax(Axis { axis }), vec![x])
            }
            _ => return Ok(None),
        }))
    }
}
