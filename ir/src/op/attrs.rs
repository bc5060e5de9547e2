//! Typed op attributes and their generic (text) form.
//!
//! Each attribute struct is declared once with [`attr_struct!`], which derives its conversion to
//! and from named [`Attr`]s; a forward op and its gradient share one struct.

use crate::error::{invalid, Result};
use std::fmt;

/// An attribute value in the generic (text) form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// A signed integer.
    Int(i64),
    /// A float, printed so that it parses back bit-exact.
    Float(f32),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// Reshape dimensions.
    Dims(Vec<ReshapeDim>),
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |it: &mut dyn Iterator<Item = String>| it.collect::<Vec<_>>().join(",");
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Float(v) => write!(f, "{v:?}"),
            Attr::Ints(v) => write!(f, "[{}]", join(&mut v.iter().map(|x| x.to_string()))),
            Attr::Floats(v) => write!(f, "[{}]", join(&mut v.iter().map(|x| format!("{x:?}")))),
            Attr::Dims(v) => write!(
                f,
                "[{}]",
                join(&mut v.iter().map(|d| match d {
                    ReshapeDim::Fixed(n) => n.to_string(),
                    ReshapeDim::Of { input, axis } => format!("${input}.{axis}"),
                    ReshapeDim::Infer => "?".to_string(),
                }))
            ),
        }
    }
}

/// One target dimension of a reshape: sizes may come from the inputs so the op works at any
/// image size.
#[derive(Clone, Debug, PartialEq)]
pub enum ReshapeDim {
    /// A fixed size.
    Fixed(usize),
    /// The size of axis `axis` of input `input` (0 is the data, 1 an optional shape reference).
    Of {
        /// Which input.
        input: usize,
        /// Which of its axes.
        axis: usize,
    },
    /// Whatever keeps the element count (at most one per reshape).
    Infer,
}

/// Reads named attributes, each exactly once.
pub(crate) struct AttrReader<'a> {
    op: &'a str,
    attrs: &'a [(String, Attr)],
    used: Vec<bool>,
}

impl<'a> AttrReader<'a> {
    /// A reader of `attrs` for the op named `op` (for messages).
    pub(crate) fn new(op: &'a str, attrs: &'a [(String, Attr)]) -> Self {
        AttrReader { op, attrs, used: vec![false; attrs.len()] }
    }
    fn get(&mut self, key: &str) -> Result<&'a Attr> {
        self.find(key).map_or_else(|| invalid(format!("{}: missing attribute `{key}`", self.op)), Ok)
    }
    fn find(&mut self, key: &str) -> Option<&'a Attr> {
        let i = self.attrs.iter().position(|(k, _)| k == key)?;
        self.used[i] = true;
        Some(&self.attrs[i].1)
    }
    fn bad<T>(&self, key: &str, what: &str, found: &Attr) -> Result<T> {
        invalid(format!("{}: attribute `{key}` must be {what}, found {found}", self.op))
    }
    /// Fails on an attribute that no field read.
    pub(crate) fn finish(self) -> Result<()> {
        match self.used.iter().position(|u| !u) {
            Some(i) => invalid(format!("{}: unknown attribute `{}`", self.op, self.attrs[i].0)),
            None => Ok(()),
        }
    }
}

/// A field type an attribute can hold.
pub(crate) trait AttrValue: Sized {
    /// The generic form.
    fn to_attr(&self) -> Attr;
    /// Reads the attribute `key`.
    fn read(r: &mut AttrReader, key: &str) -> Result<Self>;
}

impl AttrValue for i64 {
    fn to_attr(&self) -> Attr {
        Attr::Int(*self)
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        match r.get(key)? {
            Attr::Int(v) => Ok(*v),
            a => r.bad(key, "an integer", a),
        }
    }
}

fn non_negative(r: &AttrReader, key: &str, v: i64) -> Result<usize> {
    usize::try_from(v).or_else(|_| invalid(format!("{}: attribute `{key}` must be >= 0, found {v}", r.op)))
}

impl AttrValue for usize {
    fn to_attr(&self) -> Attr {
        Attr::Int(*self as i64)
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        let v = i64::read(r, key)?;
        non_negative(r, key, v)
    }
}

/// `-1` stands for `None`.
impl AttrValue for Option<usize> {
    fn to_attr(&self) -> Attr {
        Attr::Int(self.map_or(-1, |k| k as i64))
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        let v = i64::read(r, key)?;
        Ok(usize::try_from(v).ok())
    }
}

impl AttrValue for f32 {
    fn to_attr(&self) -> Attr {
        Attr::Float(*self)
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        match r.get(key)? {
            Attr::Float(v) => Ok(*v),
            Attr::Int(v) => Ok(*v as f32),
            a => r.bad(key, "a float", a),
        }
    }
}

impl AttrValue for Vec<i64> {
    fn to_attr(&self) -> Attr {
        Attr::Ints(self.clone())
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        match r.get(key)? {
            Attr::Ints(v) => Ok(v.clone()),
            a => r.bad(key, "a list of integers", a),
        }
    }
}

impl AttrValue for Vec<usize> {
    fn to_attr(&self) -> Attr {
        Attr::Ints(self.iter().map(|&x| x as i64).collect())
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        Vec::<i64>::read(r, key)?.into_iter().map(|v| non_negative(r, key, v)).collect()
    }
}

impl<const K: usize> AttrValue for [usize; K] {
    fn to_attr(&self) -> Attr {
        Attr::Ints(self.iter().map(|&x| x as i64).collect())
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        let v = Vec::<usize>::read(r, key)?;
        v.as_slice()
            .try_into()
            .or_else(|_| invalid(format!("{}: attribute `{key}` needs {K} values, found {}", r.op, v.len())))
    }
}

impl AttrValue for Vec<f32> {
    fn to_attr(&self) -> Attr {
        Attr::Floats(self.clone())
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        match r.get(key)? {
            Attr::Floats(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            a => r.bad(key, "a list of floats", a),
        }
    }
}

impl AttrValue for Vec<ReshapeDim> {
    fn to_attr(&self) -> Attr {
        Attr::Dims(self.clone())
    }
    fn read(r: &mut AttrReader, key: &str) -> Result<Self> {
        match r.get(key)? {
            Attr::Dims(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&x| ReshapeDim::Fixed(x.max(0) as usize)).collect()),
            a => r.bad(key, "a list of dims", a),
        }
    }
}

/// An attribute struct: its fields as named attributes, in declaration order, and back.
pub(crate) trait AttrSet: Sized {
    /// The fields in their generic form.
    fn attrs(&self) -> Vec<(&'static str, Attr)>;
    /// Reads every field.
    fn read(r: &mut AttrReader) -> Result<Self>;
}

/// Declares an attribute struct and derives its [`AttrSet`]: one line per field.
macro_rules! attr_struct {
    ($(#[doc = $doc:literal])* $name:ident { $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty, )* }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
        }
        impl AttrSet for $name {
            fn attrs(&self) -> Vec<(&'static str, Attr)> {
                vec![$( (stringify!($field), AttrValue::to_attr(&self.$field)) ),*]
            }
            fn read(r: &mut AttrReader) -> Result<Self> {
                Ok($name { $( $field: AttrValue::read(r, stringify!($field))?, )* })
            }
        }
    };
}

attr_struct! {
    /// A 2-D convolution and its gradients. Inputs: `x [N,Cin,H,W]`, `w [Cout,Cin/groups,kh,kw]`,
    /// optional `b [Cout]`.
    Conv2d {
        /// Stride (h, w).
        stride: [usize; 2],
        /// Zero padding (top, left, bottom, right), ONNX order.
        pad: [usize; 4],
        /// Dilation (h, w).
        dilation: [usize; 2],
        /// Channel groups; `groups == Cin == Cout` is depthwise.
        groups: usize,
    }
}

impl Conv2d {
    /// With a `kernel` (kh, kw) of 1×1: stride 1 and no padding, so each group is a plain matrix
    /// product of the weight and the input planes.
    pub fn pointwise(&self, kernel: [usize; 2]) -> bool {
        kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0; 4]
    }
}

attr_struct! {
    /// Batch normalisation over axis 1, in inference and training form.
    BatchNorm {
        /// Added to the variance.
        eps: f32,
        /// The running statistics' update rate in training (PyTorch's convention).
        momentum: f32,
    }
}

attr_struct! {
    /// An axis along which a concatenation, softmax or its gradient works.
    Axis {
        /// The axis.
        axis: usize,
    }
}

attr_struct! {
    /// The rank whose tensors a broadcast sends to every other.
    Root {
        /// The sending rank.
        root: usize,
    }
}

attr_struct! {
    /// A split into pieces.
    Split {
        /// The axis.
        axis: usize,
        /// The pieces' sizes along it.
        sizes: Vec<usize>,
    }
}

attr_struct! {
    /// A strided slice (and its gradient); `starts`/`ends` follow ONNX (negative counts from the
    /// end, clamped).
    Slice {
        /// The sliced axes.
        axes: Vec<usize>,
        /// First index per axis.
        starts: Vec<i64>,
        /// One past the last index per axis.
        ends: Vec<i64>,
        /// Step per axis (nonzero; negative walks backwards).
        steps: Vec<i64>,
    }
}

attr_struct! {
    /// 2-D max pooling (and its gradient) with -inf padding.
    Pool {
        /// Window (h, w).
        kernel: [usize; 2],
        /// Stride (h, w).
        stride: [usize; 2],
        /// Padding (top, left, bottom, right).
        pad: [usize; 4],
    }
}

attr_struct! {
    /// Nearest-neighbour upsampling (and its gradient) by integer factors.
    Upsample {
        /// Factors (h, w).
        scale: [usize; 2],
    }
}

attr_struct! {
    /// A reshape's target.
    Reshape {
        /// One entry per output axis.
        shape: Vec<ReshapeDim>,
    }
}

attr_struct! {
    /// An axis permutation.
    Transpose {
        /// Output axis `i` is input axis `perm[i]`.
        perm: Vec<usize>,
    }
}

attr_struct! {
    /// The detect head's anchor grid.
    Anchors {
        /// One stride per level.
        strides: Vec<f32>,
        /// Added to each cell's integer coordinates.
        offset: f32,
    }
}

attr_struct! {
    /// Ultralytics' detection loss (and its gradient).
    DetectLoss {
        /// One stride per level.
        strides: Vec<f32>,
        /// The box, class and DFL gains.
        gains: Vec<f32>,
        /// DFL bins per box side.
        reg_max: usize,
    }
}

attr_struct! {
    /// Knowledge distillation from a frozen teacher's Detect head (and its gradient).
    Distill {
        /// The class and box gains.
        gains: Vec<f32>,
        /// Softening temperature.
        temperature: f32,
        /// DFL bins per box side.
        reg_max: usize,
    }
}

/// An optimizer update ([`super::Op::SgdUpdate`], [`super::Op::AdamWUpdate`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// Parameter group (0 biases, 1 weights, 2 BN scales): which learning rate of the step
    /// scalars applies.
    pub group: usize,
    /// Weight decay (L2 for SGD, decoupled for AdamW); 0 outside the weights' group.
    pub weight_decay: f32,
    /// The gradient is scaled by `max_norm / (norm + 1e-6)` when that is below 1 (PyTorch's
    /// `clip_grad_norm_`); 0 turns clipping off.
    pub max_norm: f32,
    /// Proximal L1 step after the update (network slimming's `sr` on BN gammas): `None` off,
    /// else the number of largest-magnitude entries left out of it.
    pub prox: Option<usize>,
    /// AdamW's β1 (β2 is 0.999 and ε 1e-8, PyTorch's defaults); 0 for SGD, which has none.
    pub beta1: f32,
}

/// `beta1` is written only when nonzero: SGD has none, and 0 reads back as absent.
impl AttrSet for Update {
    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = vec![
            ("group", self.group.to_attr()),
            ("weight_decay", self.weight_decay.to_attr()),
            ("max_norm", self.max_norm.to_attr()),
            ("prox", self.prox.to_attr()),
        ];
        if self.beta1 != 0.0 {
            a.push(("beta1", self.beta1.to_attr()));
        }
        a
    }
    fn read(r: &mut AttrReader) -> Result<Self> {
        Ok(Update {
            group: AttrValue::read(r, "group")?,
            weight_decay: AttrValue::read(r, "weight_decay")?,
            max_norm: AttrValue::read(r, "max_norm")?,
            prox: AttrValue::read(r, "prox")?,
            beta1: if r.attrs.iter().any(|(k, _)| k == "beta1") { AttrValue::read(r, "beta1")? } else { 0.0 },
        })
    }
}
