//! Folding shape computations at import time: a node whose operands are all known is
//! evaluated (ONNX-only shape ops here, the rest by the IR's reference semantics).

use super::proto::*;
use super::{Importer, Slot};
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::NodeProto;
use slimc_ir::eval::{eval, foldable};
use slimc_ir::layout::strided_copy;
use slimc_ir::{Tensor, TensorData};

impl Importer {
    /// Evaluates a node whose operands are all known, if its op has import-time semantics.
    pub(super) fn fold(&self, node: &NodeProto, ins: &[Option<Tensor>]) -> Result<Option<Vec<Tensor>>> {
        let get = |i: usize| ins.get(i).and_then(|t| t.clone()).ok_or_else(|| anyhow!("missing input {i}"));
        let one = |t: Tensor| Ok(Some(vec![t]));
        match node.op_type.as_str() {
            "Identity" => one(get(0)?),
            "Cast" => {
                let t = get(0)?;
                match attr_int(node, "to", 1) {
                    1 | 11 => {
                        let v = match &t.data {
                            TensorData::F32(v) => v.clone(),
                            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
                        };
                        one(Tensor::from_f32(t.shape.clone(), v)?)
                    }
                    6 | 7 | 9 => one(Tensor::from_i64(t.shape.clone(), i64s(&t)?)?),
                    to => bail!("Cast to ONNX type {to} is not supported"),
                }
            }
            "Unsqueeze" | "Squeeze" => {
                let t = get(0)?;
                let axes = match ins.get(1).cloned().flatten() {
                    Some(a) => i64s(&a)?,
                    None => attr_ints(node, "axes").unwrap_or_default(),
                };
                let mut shape = t.shape.clone();
                if node.op_type == "Unsqueeze" {
                    let r = shape.len() + axes.len();
                    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Result<_>>()?;
                    ax.sort();
                    ax.dedup();
                    for a in ax {
                        shape.insert(a, 1);
                    }
                } else if axes.is_empty() {
                    shape.retain(|&d| d != 1);
                } else {
                    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, shape.len())).collect::<Result<_>>()?;
                    ax.sort();
                    ax.dedup();
                    for a in ax.into_iter().rev() {
                        if shape[a] != 1 {
                            bail!("Squeeze of axis {a}, which has size {}", shape[a]);
                        }
                        shape.remove(a);
                    }
                }
                one(folded(shape, t.data)?)
            }
            "Gather" => {
                let (data, idx) = (get(0)?, get(1)?);
                let axis = norm_axis(attr_int(node, "axis", 0), data.shape.len())?;
                let n = data.shape[axis] as i64;
                if slimc_ir::checked_numel(&idx.shape).is_none_or(|n| n > MAX_FOLDED) {
                    bail!("Gather with {:?} indices is too large", idx.shape);
                }
                let ix: Vec<usize> = i64s(&idx)?
                    .iter()
                    .map(|&i| if i < 0 { i + n } else { i })
                    .map(|i| if i < 0 || i >= n { Err(anyhow!("Gather index out of range")) } else { Ok(i as usize) })
                    .collect::<Result<_>>()?;
                let outer: usize = data.shape[..axis].iter().product();
                let inner: usize = data.shape[axis + 1..].iter().product();
                let mut shape = data.shape[..axis].to_vec();
                shape.extend(&idx.shape);
                shape.extend(&data.shape[axis + 1..]);
                let pick = |o: usize, i: usize, k: usize| (o * data.shape[axis] + i) * inner + k;
                let order: Vec<usize> = (0..outer)
                    .flat_map(|o| ix.iter().flat_map(move |&i| (0..inner).map(move |k| pick(o, i, k))))
                    .collect();
                let data = match &data.data {
                    TensorData::F32(v) => TensorData::F32(order.iter().map(|&p| v[p]).collect()),
                    TensorData::I64(v) => TensorData::I64(order.iter().map(|&p| v[p]).collect()),
                };
                one(folded(shape, data)?)
            }
            "ConstantOfShape" => {
                let dims = i64s(&get(0)?)?;
                if dims.iter().any(|&d| d < 0) {
                    bail!("ConstantOfShape with a negative dimension in {dims:?}");
                }
                let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
                let n = slimc_ir::checked_numel(&shape).filter(|&n| n <= MAX_FOLDED);
                let Some(n) = n else { bail!("ConstantOfShape {shape:?} is too large (over {MAX_FOLDED} elements)") };
                let fill = match attr(node, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor_from_proto(t)?,
                    None => Tensor::scalar(0.0),
                };
                let data = match fill.data {
                    TensorData::F32(v) => {
                        TensorData::F32(vec![*v.first().ok_or_else(|| anyhow!("empty fill value"))?; n])
                    }
                    TensorData::I64(v) => {
                        TensorData::I64(vec![*v.first().ok_or_else(|| anyhow!("empty fill value"))?; n])
                    }
                };
                one(folded(shape, data)?)
            }
            "Range" => {
                let (s, l, d) =
                    (first_i64(&get(0)?, "start")?, first_i64(&get(1)?, "limit")?, first_i64(&get(2)?, "delta")?);
                if d == 0 {
                    bail!("Range with delta 0");
                }
                // ceil((limit - start) / delta) elements, in i128 so no operand overflows.
                let count = ((l as i128 - s as i128) + d as i128 - d.signum() as i128) / d as i128;
                let count = usize::try_from(count.max(0)).unwrap_or(usize::MAX);
                if count > MAX_FOLDED {
                    bail!("Range({s}, {l}, {d}) has {count} elements, over {MAX_FOLDED}");
                }
                let v: Vec<i64> = (0..count as i64).map(|i| s + i * d).collect();
                one(Tensor::from_i64(vec![v.len()], v)?)
            }
            "Expand" => {
                let t = get(0)?;
                let target: Vec<usize> = i64s(&get(1)?)?.iter().map(|&d| d.max(0) as usize).collect();
                let r = target.len().max(t.shape.len());
                let mut out = vec![1; r];
                for i in 0..r {
                    let a = if i + t.shape.len() >= r { t.shape[i + t.shape.len() - r] } else { 1 };
                    let b = if i + target.len() >= r { target[i + target.len() - r] } else { 1 };
                    if a != b && a != 1 && b != 1 {
                        bail!("Expand of shape {:?} to {target:?}: dimension {a} does not broadcast to {b}", t.shape);
                    }
                    out[i] = a.max(b);
                }
                if slimc_ir::checked_numel(&out).is_none_or(|n| n > MAX_FOLDED) {
                    bail!("Expand to {out:?} is too large (over {MAX_FOLDED} elements)");
                }
                let st = slimc_ir::layout::broadcast_strides(&t.shape, &out);
                let data = match &t.data {
                    TensorData::F32(v) => TensorData::F32(strided_copy(v, 0, &out, &st)),
                    TensorData::I64(v) => TensorData::I64(strided_copy(v, 0, &out, &st)),
                };
                one(folded(out, data)?)
            }
            _ => {
                // Ops with IR semantics: lower a throw-away op and evaluate it.
                let mut tmp = Importer::new("fold");
                for (name, t) in node.input.iter().zip(ins) {
                    if let Some(t) = t {
                        tmp.slots.insert(name.clone(), Slot::Known(t.clone()));
                    }
                }
                let Some((op, vals)) = tmp.lower_op(node)? else { return Ok(None) };
                let args: Vec<&Tensor> = vals.iter().map(|&v| &tmp.tensors[&tmp.g.value(v).name]).collect();
                if !foldable(&op) {
                    return Ok(None);
                }
                Ok(Some(eval(&op, &args)?))
            }
        }
    }
}
