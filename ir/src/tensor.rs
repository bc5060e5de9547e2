//! Element types, dimensions, tensor types and dense tensors.

use crate::error::{invalid, Result};
use std::fmt;

/// Element type of a value or tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: every activation and weight.
    F32,
    /// 64-bit integer: shape arithmetic met while importing ONNX, folded away before use.
    I64,
}

impl DType {
    /// The short name used in the text form (`f32`, `i64`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        }
    }
    /// Parses a short name.
    pub fn from_name(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "i64" => Some(DType::I64),
            _ => None,
        }
    }
}

/// One dimension of a static shape: a known size or a named symbol (the batch, `N`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known size.
    Fixed(usize),
    /// A symbolic size, known only at run time.
    Sym(String),
}

impl Dim {
    /// The size if it is known.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

/// The static type of a value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first (NCHW for images).
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// An f32 type of fully known shape.
    pub fn f32(shape: &[usize]) -> TensorType {
        TensorType { dtype: DType::F32, shape: shape.iter().map(|&d| Dim::Fixed(d)).collect() }
    }
    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// The shape as sizes, if every dimension is known.
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(Dim::fixed).collect()
    }
    /// The number of elements, if known.
    pub fn numel(&self) -> Option<usize> {
        self.fixed_shape().and_then(|s| checked_numel(&s))
    }
    /// Replaces every symbolic dimension by `n`.
    pub fn with_symbols(&self, n: usize) -> TensorType {
        TensorType { dtype: self.dtype, shape: self.shape.iter().map(|d| Dim::Fixed(d.fixed().unwrap_or(n))).collect() }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype.name())?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// The elements of a dense tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// f32 elements.
    F32(Vec<f32>),
    /// i64 elements.
    I64(Vec<i64>),
}

/// A dense, row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Elements; their count is the product of `shape`.
    pub data: TensorData,
}

impl Tensor {
    /// An f32 tensor; errors if the element count does not match the shape.
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Result<Tensor> {
        if checked_numel(&shape) != Some(data.len()) {
            return invalid(format!("tensor of shape {shape:?} given {} elements", data.len()));
        }
        Ok(Tensor { shape, data: TensorData::F32(data) })
    }
    /// An i64 tensor; errors if the element count does not match the shape.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Result<Tensor> {
        if checked_numel(&shape) != Some(data.len()) {
            return invalid(format!("tensor of shape {shape:?} given {} elements", data.len()));
        }
        Ok(Tensor { shape, data: TensorData::I64(data) })
    }
    /// An f32 tensor filled with `v`.
    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor { shape: shape.to_vec(), data: TensorData::F32(vec![v; shape.iter().product()]) }
    }
    /// A 0-d f32 tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor { shape: vec![], data: TensorData::F32(vec![v]) }
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I64(_) => DType::I64,
        }
    }
    /// The static type of this tensor.
    pub fn ty(&self) -> TensorType {
        TensorType { dtype: self.dtype(), shape: self.shape.iter().map(|&d| Dim::Fixed(d)).collect() }
    }
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The f32 elements, or an error for other element types.
    pub fn f32s(&self) -> Result<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I64(_) => invalid("expected an f32 tensor, found i64"),
        }
    }
    /// The f32 elements, mutable.
    pub fn f32s_mut(&mut self) -> Result<&mut Vec<f32>> {
        match &mut self.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I64(_) => invalid("expected an f32 tensor, found i64"),
        }
    }
    /// The i64 elements, or an error for other element types.
    pub fn i64s(&self) -> Result<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Ok(v),
            TensorData::F32(_) => invalid("expected an i64 tensor, found f32"),
        }
    }

    /// Entries `range` of the outermost axis (images `range` of a batch), copied.
    pub fn outer_range(&self, range: std::ops::Range<usize>) -> Result<Tensor> {
        let Some(&n) = self.shape.first() else { return invalid("a 0-d tensor has no outer axis") };
        if range.start > range.end || range.end > n {
            return invalid(format!("entries {range:?} of a tensor of shape {:?}", self.shape));
        }
        let inner: usize = self.shape[1..].iter().product();
        let (a, b) = (range.start * inner, range.end * inner);
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[a..b].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[a..b].to_vec()),
        };
        Ok(Tensor { shape, data })
    }

    /// `parts` (of one element type and one shape past the outermost axis) joined along their
    /// outermost axis.
    pub fn concat_outer(parts: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = parts.first() else { return invalid("nothing to concatenate") };
        let Some(inner) = first.shape.get(1..) else { return invalid("a 0-d tensor has no outer axis") };
        if let Some(p) = parts.iter().find(|p| p.shape.get(1..) != Some(inner) || p.dtype() != first.dtype()) {
            return invalid(format!("cannot join {} to {} along the outer axis", p.ty(), first.ty()));
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        let total = checked_numel(&shape).unwrap_or(0);
        let data = match &first.data {
            TensorData::F32(_) => {
                let mut v = Vec::with_capacity(total);
                parts.iter().try_for_each(|p| p.f32s().map(|d| v.extend_from_slice(d)))?;
                TensorData::F32(v)
            }
            TensorData::I64(_) => {
                let mut v = Vec::with_capacity(total);
                parts.iter().try_for_each(|p| p.i64s().map(|d| v.extend_from_slice(d)))?;
                TensorData::I64(v)
            }
        };
        Ok(Tensor { shape, data })
    }
}

/// The little-endian bytes of `v` (as model files, safetensors and ONNX store elements): a view
/// of its memory on little-endian targets, a copy only on big-endian ones.
pub fn le_bytes<T: bytemuck::NoUninit>(v: &[T]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        std::borrow::Cow::Owned(v.iter().flat_map(|x| bytemuck::bytes_of(x).iter().rev().copied()).collect())
    }
}

impl TensorData {
    /// The elements' little-endian bytes (see [`le_bytes`]).
    pub fn le_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            TensorData::F32(v) => le_bytes(v),
            TensorData::I64(v) => le_bytes(v),
        }
    }
}

/// The element count of `shape`, or None when it overflows (or exceeds what one allocation of
/// 8-byte elements can hold).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= isize::MAX as usize / 8)
}
