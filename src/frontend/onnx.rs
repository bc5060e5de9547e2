//! ONNX files (opsets 13–22) lowered to slimc IR.
//!
//! Nodes are lowered in file order. Shape computations (Shape, Gather, Unsqueeze, Concat of
//! constants, integer arithmetic...) are folded while importing: every node whose operands are
//! all known is evaluated with the IR's reference semantics ([`slimc_ir::eval`]) or, for the
//! few ONNX-only shape ops, here; the constants that reach real ops become attributes or
//! constant parameters. `mul(x, sigmoid(x))` is recognised as `silu`.

use anyhow::{anyhow, bail, Context, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto, Message, ModelProto, NodeProto,
    TensorProto,
};
use slimc_ir::eval::{eval, foldable, strided_copy};
use slimc_ir::{
    Conv2d, DType, Dim, Graph, Metadata, Model, Op, ParamKind, ReshapeDim, Tensor, TensorData, TensorType, ValueId,
};
use slimc_passes::pipelines;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Opsets the importer accepts.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=22;

/// What an ONNX value name stands for while importing.
#[derive(Clone)]
enum Slot {
    /// A value computed at run time.
    Value(ValueId),
    /// A value known at import time.
    Known(Tensor),
}

struct Importer {
    g: Graph,
    tensors: BTreeMap<String, Tensor>,
    slots: HashMap<String, Slot>,
    /// Params already created for known values, by ONNX name.
    params: HashMap<String, ValueId>,
    /// Sigmoid results: output name → input value, for the SiLU pattern.
    sigmoid_of: HashMap<ValueId, ValueId>,
}

fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "_./-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "v".to_string()
    } else {
        s
    }
}

/// The module path of an ONNX node name such as `/model.2/cv1/conv/Conv` (`model.2.cv1.conv`).
fn scope_of(node: &NodeProto) -> String {
    let parts: Vec<&str> = node.name.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 {
        return String::new();
    }
    parts[..parts.len() - 1].join(".")
}

/// Converts an ONNX tensor to a slimc tensor (f32 for floats, i64 for integers and booleans).
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    if !t.external_data.is_empty() {
        bail!("tensor {} stores its data in an external file, which slimc does not read", t.name);
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| anyhow!("tensor {} has a negative dimension", t.name)))
        .collect::<Result<_>>()?;
    let raw = &t.raw_data;
    let tensor = match t.data_type {
        1 => Tensor::from_f32(shape, decode(raw, &t.float_data, |b| f32::from_le_bytes(b), |&v| v)),
        11 => Tensor::from_f32(shape, decode(raw, &t.double_data, |b| f64::from_le_bytes(b) as f32, |&v| v as f32)),
        7 => Tensor::from_i64(shape, decode(raw, &t.int64_data, |b| i64::from_le_bytes(b), |&v| v)),
        6 => Tensor::from_i64(shape, decode(raw, &t.int32_data, |b| i32::from_le_bytes(b) as i64, |&v| v as i64)),
        9 => Tensor::from_i64(shape, decode(raw, &t.int32_data, |b: [u8; 1]| b[0] as i64, |&v| v as i64)),
        d => bail!("tensor {} has ONNX element type {d}; slimc reads float, double, int32, int64 and bool", t.name),
    };
    tensor.map_err(|e| anyhow!("tensor {}: {e} (truncated file?)", t.name))
}

/// An ONNX tensor's elements: little-endian `raw_data` when present, else the typed field.
fn decode<const W: usize, T, U>(
    raw: &[u8],
    typed: &[T],
    from_le: impl Fn([u8; W]) -> U,
    widen: impl Fn(&T) -> U,
) -> Vec<U> {
    if raw.is_empty() {
        typed.iter().map(widen).collect()
    } else {
        raw.chunks_exact(W).map(|c| from_le(std::array::from_fn(|i| c[i]))).collect()
    }
}

fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i).unwrap_or(default)
}
fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map(|a| a.f).unwrap_or(default)
}
fn attr_str(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).to_string()).unwrap_or_else(|| default.to_string())
}

fn i64s(t: &Tensor) -> Result<Vec<i64>> {
    match &t.data {
        TensorData::I64(v) => Ok(v.clone()),
        TensorData::F32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
    }
}

/// The fewest inputs each op needs (ONNX's required inputs).
fn min_inputs(op: &str) -> usize {
    match op {
        "Constant" => 0,
        "BatchNormalization" => 5,
        "Range" => 3,
        "Conv" | "Add" | "Sub" | "Mul" | "Div" | "MatMul" | "Reshape" | "Gather" | "Expand" => 2,
        _ => 1,
    }
}

/// Checks a node's inputs and outputs before anything reads them: the op's required inputs are
/// present and named, and it names at least one output.
fn check_arity(node: &NodeProto) -> Result<()> {
    let need = min_inputs(&node.op_type);
    if node.input.len() < need || node.input.iter().take(need).any(|i| i.is_empty()) {
        bail!("{} needs {need} input(s), found {}", node.op_type, node.input.iter().filter(|i| !i.is_empty()).count());
    }
    if node.output.first().is_none_or(|o| o.is_empty()) {
        bail!("{} has no output", node.op_type);
    }
    Ok(())
}

/// The most elements a tensor computed while importing may have (2^26).
const MAX_FOLDED: usize = 1 << 26;

/// A tensor computed at import time, checked: its shape's element count is bounded and equals
/// the data's length.
fn folded(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    if slimc_ir::checked_numel(&shape).is_none_or(|n| n > MAX_FOLDED) {
        bail!("a computed constant of shape {shape:?} is too large (over {MAX_FOLDED} elements)");
    }
    Ok(match data {
        TensorData::F32(v) => Tensor::from_f32(shape, v)?,
        TensorData::I64(v) => Tensor::from_i64(shape, v)?,
    })
}

/// The first element of a scalar-like tensor.
fn first_i64(t: &Tensor, what: &str) -> Result<i64> {
    i64s(t)?.first().copied().ok_or_else(|| anyhow!("{what} is empty"))
}

fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

fn pair(v: &[i64], what: &str) -> Result<[usize; 2]> {
    match v {
        [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
        _ => bail!("{what} must have two non-negative values, found {v:?}"),
    }
}

impl Importer {
    fn new(name: &str) -> Importer {
        Importer {
            g: Graph::new(name),
            tensors: BTreeMap::new(),
            slots: HashMap::new(),
            params: HashMap::new(),
            sigmoid_of: HashMap::new(),
        }
    }

    fn slot(&self, name: &str, node: &NodeProto) -> Result<Slot> {
        self.slots.get(name).cloned().ok_or_else(|| {
            anyhow!("node {} ({}) reads `{name}`, which nothing defines before it", node.name, node.op_type)
        })
    }

    fn known(&self, node: &NodeProto, i: usize) -> Result<Option<Tensor>> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(n) => match self.slot(n, node)? {
                Slot::Known(t) => Ok(Some(t)),
                Slot::Value(_) => bail!("input {i} (`{n}`) must be a constant known at import time (dynamic shapes are not supported; fix the input size with --imgsz)"),
            },
        }
    }

    /// The IR value for input `i`, turning a known tensor into a parameter of `kind`.
    fn value(&mut self, node: &NodeProto, i: usize, kind: ParamKind) -> Result<ValueId> {
        let name = node
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("node {} ({}) lacks input {i}", node.name, node.op_type))?;
        match self.slot(name, node)? {
            Slot::Value(v) => Ok(v),
            Slot::Known(t) => {
                if let Some(&v) = self.params.get(name) {
                    return Ok(v);
                }
                let pname = self.g.fresh_name(&sanitize(name));
                let v = self.g.add_param(&pname, t.ty(), kind);
                self.tensors.insert(pname, t);
                self.params.insert(name.clone(), v);
                Ok(v)
            }
        }
    }

    fn emit(&mut self, node: &NodeProto, op: Op, inputs: &[ValueId]) -> Result<()> {
        let names: Vec<String> = node.output.iter().map(|o| sanitize(o)).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs = self.g.add_node(op, inputs, &refs, &scope_of(node))?;
        for (o, v) in node.output.iter().zip(outs) {
            self.slots.insert(o.clone(), Slot::Value(v));
        }
        Ok(())
    }

    fn rank_of(&self, node: &NodeProto, i: usize) -> Result<usize> {
        Ok(match self.slot(&node.input[i], node)? {
            Slot::Value(v) => self.g.ty(v).rank(),
            Slot::Known(t) => t.shape.len(),
        })
    }

    /// Lowers one ONNX node to an IR op over `inputs`, or returns `None` for ops evaluated only
    /// at import time.
    fn lower_op(&mut self, node: &NodeProto) -> Result<Option<(Op, Vec<ValueId>)>> {
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
                let op = Op::BatchNorm {
                    eps: attr_float(node, "epsilon", 1e-5),
                    momentum: 1.0 - attr_float(node, "momentum", 0.9),
                };
                (op, vec![x, g, b, m, v])
            }
            "Sigmoid" => (Op::Sigmoid, vec![self.value(node, 0, ParamKind::Const)?]),
            "Add" | "Sub" | "Mul" | "Div" => {
                let a = self.value(node, 0, ParamKind::Const)?;
                let b = self.value(node, 1, ParamKind::Const)?;
                if op == "Mul" {
                    for (x, s) in [(a, b), (b, a)] {
                        if self.sigmoid_of.get(&s) == Some(&x) {
                            return Ok(Some((Op::Silu, vec![x])));
                        }
                    }
                }
                let o = match op {
                    "Add" => Op::Add,
                    "Sub" => Op::Sub,
                    "Mul" => Op::Mul,
                    _ => Op::Div,
                };
                (o, vec![a, b])
            }
            "Concat" => {
                let rank = self.rank_of(node, 0)?;
                let axis = norm_axis(attr_int(node, "axis", 0), rank)?;
                let ins =
                    (0..node.input.len()).map(|i| self.value(node, i, ParamKind::Const)).collect::<Result<_>>()?;
                (Op::Concat { axis }, ins)
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
                (Op::Split { axis, sizes }, vec![x])
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
                (Op::Slice { axes, starts, ends, steps }, vec![x])
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
                    Op::MaxPool2d { kernel: k, stride: s, pad: [p[0], p[1], p[2], p[3]] },
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
                (Op::UpsampleNearest { scale: [scales[2] as usize, scales[3] as usize] }, vec![x])
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
                (Op::Reshape { shape: dims }, vec![x])
            }
            "Transpose" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let r = self.g.ty(x).rank();
                let perm = attr_ints(node, "perm")
                    .map(|p| p.iter().map(|&a| a as usize).collect())
                    .unwrap_or_else(|| (0..r).rev().collect());
                (Op::Transpose { perm }, vec![x])
            }
            "MatMul" => {
                (Op::MatMul, vec![self.value(node, 0, ParamKind::Const)?, self.value(node, 1, ParamKind::Const)?])
            }
            "Softmax" => {
                let x = self.value(node, 0, ParamKind::Const)?;
                let axis = norm_axis(attr_int(node, "axis", -1), self.g.ty(x).rank())?;
                (Op::Softmax { axis }, vec![x])
            }
            _ => return Ok(None),
        }))
    }

    /// Evaluates a node whose operands are all known, if its op has import-time semantics.
    fn fold(&self, node: &NodeProto, ins: &[Option<Tensor>]) -> Result<Option<Vec<Tensor>>> {
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
                let st = slimc_ir::eval::broadcast_strides(&t.shape, &out);
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

    fn import_node(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type.as_str();
        check_arity(node)?;
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            bail!("op {}:{op} is from an unsupported domain", node.domain);
        }
        if op == "Constant" {
            let a = node.attribute.first().ok_or_else(|| anyhow!("Constant without a value"))?;
            let t = match (a.name.as_str(), a.type_.enum_value()) {
                ("value", _) => tensor_from_proto(a.t.as_ref().ok_or_else(|| anyhow!("Constant without a tensor"))?)?,
                ("value_float", _) => Tensor::scalar(a.f),
                ("value_floats", _) => Tensor::from_f32(vec![a.floats.len()], a.floats.clone())?,
                ("value_int", _) => Tensor::from_i64(vec![], vec![a.i])?,
                ("value_ints", Ok(AttributeType::INTS)) => Tensor::from_i64(vec![a.ints.len()], a.ints.clone())?,
                (other, _) => bail!("Constant with attribute `{other}` is not supported"),
            };
            self.slots.insert(node.output[0].clone(), Slot::Known(t));
            return Ok(());
        }
        if op == "Shape" {
            let ty = match self.slot(&node.input[0], node)? {
                Slot::Value(v) => self.g.ty(v).clone(),
                Slot::Known(t) => t.ty(),
            };
            let dims = ty.fixed_shape().ok_or_else(|| {
                anyhow!("Shape of a value with a symbolic dimension cannot be folded; fix the input size with --imgsz")
            })?;
            let r = dims.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clampi(attr_int(node, "start", 0)), clampi(attr_int(node, "end", r)));
            let v: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
            self.slots.insert(node.output[0].clone(), Slot::Known(Tensor::from_i64(vec![v.len()], v)?));
            return Ok(());
        }
        let ins: Vec<Option<Tensor>> = node
            .input
            .iter()
            .map(|n| {
                if n.is_empty() {
                    Ok(None)
                } else {
                    self.slot(n, node).map(|s| if let Slot::Known(t) = s { Some(t) } else { None })
                }
            })
            .collect::<Result<_>>()?;
        let all_known = node.input.iter().zip(&ins).all(|(n, t)| n.is_empty() || t.is_some());
        if all_known && !node.input.is_empty() {
            if let Some(outs) = self.fold(node, &ins)? {
                for (o, t) in node.output.iter().zip(outs) {
                    self.slots.insert(o.clone(), Slot::Known(t));
                }
                return Ok(());
            }
        }
        if op == "Identity" {
            let s = self.slot(&node.input[0], node)?;
            self.slots.insert(node.output[0].clone(), s);
            return Ok(());
        }
        match self.lower_op(node)? {
            Some((o, ins)) => {
                let is_sigmoid = matches!(o, Op::Sigmoid);
                self.emit(node, o, &ins)?;
                if is_sigmoid {
                    if let Some(Slot::Value(v)) = self.slots.get(&node.output[0]) {
                        self.sigmoid_of.insert(*v, ins[0]);
                    }
                }
                Ok(())
            }
            None => bail!("unsupported op {op}"),
        }
    }
}

/// Imports an ONNX file. `imgsz` fixes symbolic height and width (and the batch is fixed to 1)
/// when the file's input has symbolic dimensions.
pub fn import_onnx(path: &Path, imgsz: Option<[usize; 2]>) -> Result<Model> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{file}: cannot read"))?;
    let proto = ModelProto::parse_from_bytes(&bytes).map_err(|e| anyhow!("{file}: not a valid ONNX model: {e}"))?;
    import_proto(&proto, &file, imgsz)
}

/// Imports a parsed ONNX model; `file` names it in errors.
pub fn import_proto(proto: &ModelProto, file: &str, imgsz: Option<[usize; 2]>) -> Result<Model> {
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| anyhow!("{file}: no default-domain opset is imported"))?;
    if !OPSETS.contains(&opset) {
        bail!("{file}: opset {opset} is not supported (slimc reads opsets {}-{})", OPSETS.start(), OPSETS.end());
    }
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("{file}: the model has no graph"))?;
    let stem = Path::new(file).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let mut im = Importer::new(&sanitize(&stem));
    for init in &graph.initializer {
        let t = tensor_from_proto(init).map_err(|e| anyhow!("{file}: initializer: {e}"))?;
        im.slots.insert(init.name.clone(), Slot::Known(t));
    }
    for input in &graph.input {
        if im.slots.contains_key(&input.name) {
            continue;
        }
        let Some(type_proto::Value::TensorType(tt)) = input.type_.as_ref().and_then(|t| t.value.clone()) else {
            bail!("{file}: input {} is not a tensor", input.name);
        };
        if tt.elem_type != 1 {
            bail!("{file}: input {} has element type {}; slimc models take float32 images", input.name, tt.elem_type);
        }
        let dims = tt.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
        let mut shape = vec![];
        for (i, d) in dims.iter().enumerate() {
            shape.push(match &d.value {
                Some(dimension::Value::DimValue(v)) if *v > 0 => Dim::Fixed(*v as usize),
                _ => match (i, imgsz) {
                    (0, _) => Dim::Fixed(1),
                    (2, Some(s)) => Dim::Fixed(s[0]),
                    (3, Some(s)) => Dim::Fixed(s[1]),
                    _ => bail!("{file}: input {} has a symbolic dimension {i}; pass --imgsz to fix it", input.name),
                },
            });
        }
        let v = im.g.add_input(&sanitize(&input.name), TensorType { dtype: DType::F32, shape });
        im.slots.insert(input.name.clone(), Slot::Value(v));
    }
    for (i, node) in graph.node.iter().enumerate() {
        im.import_node(node)
            .map_err(|e| anyhow!("{file}: node {i} `{}` ({}, opset {opset}): {e}", node.name, node.op_type))?;
    }
    for out in &graph.output {
        let v = im
            .value(
                &NodeProto { name: "output".into(), input: vec![out.name.clone()], ..Default::default() },
                0,
                ParamKind::Const,
            )
            .map_err(|e| anyhow!("{file}: output {}: {e}", out.name))?;
        im.g.outputs.push(v);
    }
    let input_shape = im.g.inputs.first().and_then(|&v| im.g.ty(v).fixed_shape()).unwrap_or_default();
    let meta = metadata(proto, &im.g, &input_shape);
    let mut model = Model { graph: im.g, tensors: im.tensors, meta, training_state: vec![] };
    pipelines::IMPORT.manager().run(&mut model).map_err(|e| anyhow!("{file}: {e}"))?;
    model.check().map_err(|e| anyhow!("{file}: imported graph does not verify: {e}"))?;
    Ok(model)
}

/// Ultralytics' metadata (names, stride, imgsz) when present; otherwise what the graph implies.
fn metadata(proto: &ModelProto, g: &Graph, input_shape: &[usize]) -> Metadata {
    let prop = |k: &str| proto.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let nc = g
        .outputs
        .first()
        .and_then(|&o| g.ty(o).shape.get(1).and_then(|d| d.fixed()))
        .map(|c| c.saturating_sub(4))
        .unwrap_or(0);
    let names = prop("names")
        .map(|s| parse_names(&s))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| (0..nc).map(|i| format!("class{i}")).collect());
    let imgsz = match input_shape {
        [_, _, h, w] => [*h, *w],
        _ => [0, 0],
    };
    let max_stride = prop("stride").and_then(|s| s.trim().parse::<f32>().ok()).unwrap_or(32.0);
    let strides = [8.0, 16.0, 32.0].into_iter().filter(|&s| s <= max_stride).collect();
    Metadata { names, strides, imgsz, source: proto.producer_name.clone(), ..Default::default() }
}

/// Parses Ultralytics' names string `{0: 'person', 1: 'car'}`.
pub fn parse_names(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out: Vec<(usize, String)> = vec![];
    for item in inner.split(',') {
        if let Some((k, v)) = item.split_once(':') {
            if let Ok(k) = k.trim().parse::<usize>() {
                out.push((k, v.trim().trim_matches(|c| c == '\'' || c == '"').to_string()));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, v)| v).collect()
}
