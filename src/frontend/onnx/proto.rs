//! Reading ONNX messages: tensors, node attributes, required inputs, and the small checks on
//! constants that lowering and folding share.

use anyhow::{anyhow, bail, Result};
use onnx_protobuf::{NodeProto, TensorProto};
use slimc_ir::Binary;
use slimc_ir::{Tensor, TensorData};

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
pub(super) fn decode<const W: usize, T, U>(
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

pub(super) fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n onnx_protobuf::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}
pub(super) fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).map(|a| a.i).unwrap_or(default)
}
pub(super) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}
pub(super) fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).map(|a| a.f).unwrap_or(default)
}
pub(super) fn attr_str(node: &NodeProto, name: &str, default: &str) -> String {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).to_string()).unwrap_or_else(|| default.to_string())
}

pub(super) fn i64s(t: &Tensor) -> Result<Vec<i64>> {
    match &t.data {
        TensorData::I64(v) => Ok(v.clone()),
        TensorData::F32(v) => Ok(v.iter().map(|&x| x as i64).collect()),
    }
}

/// The fewest inputs each op needs (ONNX's required inputs).
pub(super) fn min_inputs(op: &str) -> usize {
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
pub(super) fn check_arity(node: &NodeProto) -> Result<()> {
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
pub(super) const MAX_FOLDED: usize = 1 << 26;

/// A tensor computed at import time, checked: its shape's element count is bounded and equals
/// the data's length.
pub(super) fn folded(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
    if slimc_ir::checked_numel(&shape).is_none_or(|n| n > MAX_FOLDED) {
        bail!("a computed constant of shape {shape:?} is too large (over {MAX_FOLDED} elements)");
    }
    Ok(match data {
        TensorData::F32(v) => Tensor::from_f32(shape, v)?,
        TensorData::I64(v) => Tensor::from_i64(shape, v)?,
    })
}

/// The first element of a scalar-like tensor.
pub(super) fn first_i64(t: &Tensor, what: &str) -> Result<i64> {
    i64s(t)?.first().copied().ok_or_else(|| anyhow!("{what} is empty"))
}

pub(super) fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

pub(super) fn pair(v: &[i64], what: &str) -> Result<[usize; 2]> {
    match v {
        [a, b] if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
        _ => bail!("{what} must have two non-negative values, found {v:?}"),
    }
}

/// The ONNX operator of an elementwise arithmetic op (export writes it, import reads it).
pub(crate) fn onnx_binary(op: Binary) -> &'static str {
    match op {
        Binary::Add => "Add",
        Binary::Sub => "Sub",
        Binary::Mul => "Mul",
        Binary::Div => "Div",
    }
}
