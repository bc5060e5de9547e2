//! The closed set of IR operations and their typed attributes.
//!
//! Every op converts to and from a list of named attributes ([`Attr`]) so that the text
//! printer and parser are generic over ops and cannot drift from the enum.

use crate::error::{invalid, Result};
use std::fmt;

/// Attributes of a 2-D convolution. Inputs: `x [N,Cin,H,W]`, `w [Cout,Cin/groups,kh,kw]`, optional `b [Cout]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Zero padding (top, left, bottom, right), ONNX order.
    pub pad: [usize; 4],
    /// Dilation (h, w).
    pub dilation: [usize; 2],
    /// Channel groups; `groups == Cin == Cout` is depthwise.
    pub groups: usize,
}

impl Conv2d {
    /// With a `kernel` (kh, kw) of 1×1: stride 1 and no padding, so each group is a plain matrix
    /// product of the weight and the input planes.
    pub fn pointwise(&self, kernel: [usize; 2]) -> bool {
        kernel == [1, 1] && self.stride == [1, 1] && self.pad == [0; 4]
    }
}

/// One target dimension of a [`Op::Reshape`]: sizes may come from the inputs so the op works at
/// any image size.
#[derive(Clone, Debug, PartialEq)]
pub enum ReshapeDim {
    /// A fixed size.
    Fixed(usize),
    /// The size of axis `axis` of input `input` (0 is the data, 1 an optional shape reference).
    Of { input: usize, axis: usize },
    /// Whatever keeps the element count (at most one per reshape).
    Infer,
}

/// The per-step scalars of the optimizer ops: one `f32` vector, the training step's
/// `optimizer.scalars` input, which the host's schedule sets before each micro-batch. The
/// constants are indices into it.
pub mod step_scalars {
    /// Learning rate of parameter group 0 (biases and BN shifts); groups 1 (weights) and 2 (BN
    /// scales) follow at `LR + 1` and `LR + 2`.
    pub const LR: usize = 0;
    /// SGD momentum (ramped during warm-up).
    pub const MOMENTUM: usize = 3;
    /// The L1 rate on BN gammas (network slimming), after its decay schedule.
    pub const SR: usize = 4;
    /// The EMA decay `d` of this step.
    pub const EMA_DECAY: usize = 5;
    /// `1 − d`, computed by the host in double precision (d is close to 1).
    pub const EMA_REST: usize = 6;
    /// Nonzero when this micro-batch completes an accumulation and the optimizer steps.
    pub const STEP: usize = 7;
    /// Nonzero on a run's first micro-batch: the accumulator starts from zero (gradients
    /// otherwise accumulate across epoch ends, as Ultralytics zeroes them once, before training).
    pub const FRESH: usize = 8;
    /// AdamW's bias corrections `1 − β1^t` and `1 − β2^t` for this step's count `t`.
    pub const ADAM_C1: usize = 9;
    /// See [`ADAM_C1`].
    pub const ADAM_C2: usize = 10;
    /// The vector's length.
    pub const LEN: usize = 11;
}

/// Attributes of an optimizer update ([`Op::SgdUpdate`], [`Op::AdamWUpdate`]).
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
    /// AdamW's β1 (β2 is 0.999 and ε 1e-8, PyTorch's defaults); unused by SGD.
    pub beta1: f32,
}

/// An IR operation. Inputs and outputs are listed on each variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Convolution; see [`Conv2d`].
    Conv2d(Conv2d),
    /// Batch normalisation over axis 1. Inputs: x, gamma, beta, running_mean, running_var.
    /// Inference uses the running statistics; training (later) uses batch statistics and `momentum`.
    BatchNorm { eps: f32, momentum: f32 },
    /// `x * sigmoid(x)`.
    Silu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Elementwise sum with NumPy broadcasting.
    Add,
    /// Elementwise difference with NumPy broadcasting.
    Sub,
    /// Elementwise product with NumPy broadcasting.
    Mul,
    /// Elementwise quotient with NumPy broadcasting (integer division truncates).
    Div,
    /// Concatenation of all inputs along `axis`.
    Concat { axis: usize },
    /// Split along `axis` into pieces of `sizes`; one output per piece.
    Split { axis: usize, sizes: Vec<usize> },
    /// Strided slice; `starts`/`ends` follow ONNX (negative counts from the end, clamped).
    Slice { axes: Vec<usize>, starts: Vec<i64>, ends: Vec<i64>, steps: Vec<i64> },
    /// 2-D max pooling with -inf padding (top, left, bottom, right).
    MaxPool2d { kernel: [usize; 2], stride: [usize; 2], pad: [usize; 4] },
    /// Nearest-neighbour upsampling by integer factors (h, w): `out[y,x] = in[y/s, x/s]`.
    UpsampleNearest { scale: [usize; 2] },
    /// Reshape to `shape`; inputs: data and optionally a tensor whose dims `shape` refers to.
    Reshape { shape: Vec<ReshapeDim> },
    /// Axis permutation.
    Transpose { perm: Vec<usize> },
    /// Batched matrix product over the last two axes, batch axes broadcast.
    MatMul,
    /// Softmax along `axis`.
    Softmax { axis: usize },
    /// Detect-head anchors. Inputs: one feature map per level `[N,C,h,w]`. Outputs: anchor points
    /// `[2,A]` (x then y, in grid units, `+offset`) and per-anchor strides `[1,A]`; levels in
    /// order, row-major within a level.
    Anchors { strides: Vec<f32>, offset: f32 },
    /// Gradient of [`Op::Conv2d`] with respect to its input. Inputs: `dy`, `w`, `x` (for its
    /// shape). Output: `dx`.
    Conv2dGradInput(Conv2d),
    /// Gradient of [`Op::Conv2d`] with respect to its weight, summed over the batch. Inputs: `dy`,
    /// `x`, `w` (for its shape). Output: `dw`.
    Conv2dGradWeight(Conv2d),
    /// Training-mode batch normalisation over axis 1: normalises with the batch mean and biased
    /// variance. Inputs as [`Op::BatchNorm`]. Outputs: `y`, the batch mean `[C]`, `1/sqrt(var+eps)`
    /// `[C]`, and the next running mean and running variance (`(1-momentum)·running +
    /// momentum·batch`, the variance unbiased).
    BatchNormTrain { eps: f32, momentum: f32 },
    /// Gradient of [`Op::BatchNormTrain`]. Inputs: `dy`, `x`, `gamma`, batch mean, batch inverse
    /// std. Outputs: `dx`, `dgamma`, `dbeta`.
    BatchNormGrad,
    /// Gradient of [`Op::Silu`]. Inputs: `dy`, `x`. Output: `dy·s·(1 + x·(1 − s))`, `s = sigmoid(x)`.
    SiluGrad,
    /// Gradient of [`Op::Sigmoid`]. Inputs: `dy`, `y` (the forward result). Output: `dy·y·(1 − y)`.
    SigmoidGrad,
    /// Gradient of [`Op::Softmax`]. Inputs: `dy`, `y` (the forward result). Output:
    /// `y·(dy − Σ_axis dy·y)`.
    SoftmaxGrad { axis: usize },
    /// Gradient of [`Op::MaxPool2d`]: each output gradient goes to the first maximum of its
    /// window. Inputs: `dy`, `x`. Output: `dx`.
    MaxPool2dGrad { kernel: [usize; 2], stride: [usize; 2], pad: [usize; 4] },
    /// Gradient of [`Op::UpsampleNearest`]: sums each `scale` block. Input: `dy`. Output: `dx`.
    UpsampleNearestGrad { scale: [usize; 2] },
    /// Gradient of [`Op::Slice`]: scatters `dy` into zeros shaped like `x`. Inputs: `dy`, `x`.
    SliceGrad { axes: Vec<usize>, starts: Vec<i64>, ends: Vec<i64>, steps: Vec<i64> },
    /// Sums `x` over the axes along which `like` was broadcast to `x`'s shape (the gradient of
    /// broadcasting). Inputs: `x`, `like`. Output: shaped like `like`.
    SumTo,
    /// Ultralytics' `v8DetectionLoss` on the Detect head's raw level maps. Inputs: one map
    /// `[N, 4·reg_max + nc, h, w]` per level, then `targets [M, 6]` (batch index, class, normalised
    /// cx, cy, w, h). Outputs: the components `[3]` (box, cls, dfl, after their `gains`, divided by
    /// the target-score sum) and the total (a scalar) = their sum times the batch size.
    DetectLoss { strides: Vec<f32>, gains: Vec<f32>, reg_max: usize },
    /// Gradient of [`Op::DetectLoss`]'s total with respect to every level map (seed 1). Inputs as
    /// `detect_loss`; one output per level map.
    DetectLossGrad { strides: Vec<f32>, gains: Vec<f32>, reg_max: usize },
    /// Gradient accumulation to the nominal batch. Inputs: the accumulator, this micro-batch's
    /// gradient, the [`step_scalars`]. Outputs: the sum (the gradient alone on an epoch's
    /// first micro-batch) and the accumulator's next value (the sum, or zeros when the
    /// optimizer steps).
    Accumulate,
    /// Elementwise sign, 0 at 0 (`torch.sign`).
    Sign,
    /// The L2 norm of all inputs taken together, a scalar (`clip_grad_norm_`'s total norm).
    GlobalNorm,
    /// SGD with Nesterov momentum (dampening 0) and L2 weight decay, PyTorch's update; see
    /// [`Update`]. Inputs: parameter, gradient, gradient norm, [`step_scalars`], momentum
    /// buffer. Outputs: the next parameter and buffer (the inputs when the step flag is 0).
    SgdUpdate(Update),
    /// AdamW with decoupled weight decay, PyTorch's update; see [`Update`]. Inputs: parameter,
    /// gradient, gradient norm, [`step_scalars`], first and second moments. Outputs: the next
    /// parameter and moments (the inputs when the step flag is 0).
    AdamWUpdate(Update),
    /// Ultralytics' model EMA. Inputs: the average, the model's tensor, [`step_scalars`].
    /// Output: `d·ema + (1 − d)·x` when the step flag is set, else the average.
    EmaUpdate,
}

/// The kind of an op, without attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Conv2d,
    BatchNorm,
    Silu,
    Sigmoid,
    Add,
    Sub,
    Mul,
    Div,
    Concat,
    Split,
    Slice,
    MaxPool2d,
    UpsampleNearest,
    Reshape,
    Transpose,
    MatMul,
    Softmax,
    Anchors,
    Conv2dGradInput,
    Conv2dGradWeight,
    BatchNormTrain,
    BatchNormGrad,
    SiluGrad,
    SigmoidGrad,
    SoftmaxGrad,
    MaxPool2dGrad,
    UpsampleNearestGrad,
    SliceGrad,
    SumTo,
    DetectLoss,
    DetectLossGrad,
    Accumulate,
    Sign,
    GlobalNorm,
    SgdUpdate,
    AdamWUpdate,
    EmaUpdate,
}

/// Every op kind, in the order the text form documents them.
pub const ALL_OP_KINDS: [OpKind; 37] = [
    OpKind::Conv2d,
    OpKind::BatchNorm,
    OpKind::Silu,
    OpKind::Sigmoid,
    OpKind::Add,
    OpKind::Sub,
    OpKind::Mul,
    OpKind::Div,
    OpKind::Concat,
    OpKind::Split,
    OpKind::Slice,
    OpKind::MaxPool2d,
    OpKind::UpsampleNearest,
    OpKind::Reshape,
    OpKind::Transpose,
    OpKind::MatMul,
    OpKind::Softmax,
    OpKind::Anchors,
    OpKind::Conv2dGradInput,
    OpKind::Conv2dGradWeight,
    OpKind::BatchNormTrain,
    OpKind::BatchNormGrad,
    OpKind::SiluGrad,
    OpKind::SigmoidGrad,
    OpKind::SoftmaxGrad,
    OpKind::MaxPool2dGrad,
    OpKind::UpsampleNearestGrad,
    OpKind::SliceGrad,
    OpKind::SumTo,
    OpKind::DetectLoss,
    OpKind::DetectLossGrad,
    OpKind::Accumulate,
    OpKind::Sign,
    OpKind::GlobalNorm,
    OpKind::SgdUpdate,
    OpKind::AdamWUpdate,
    OpKind::EmaUpdate,
];

impl OpKind {
    /// The op's name in the text form.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv2d => "conv2d",
            OpKind::BatchNorm => "batch_norm",
            OpKind::Silu => "silu",
            OpKind::Sigmoid => "sigmoid",
            OpKind::Add => "add",
            OpKind::Sub => "sub",
            OpKind::Mul => "mul",
            OpKind::Div => "div",
            OpKind::Concat => "concat",
            OpKind::Split => "split",
            OpKind::Slice => "slice",
            OpKind::MaxPool2d => "max_pool2d",
            OpKind::UpsampleNearest => "upsample_nearest",
            OpKind::Reshape => "reshape",
            OpKind::Transpose => "transpose",
            OpKind::MatMul => "matmul",
            OpKind::Softmax => "softmax",
            OpKind::Anchors => "anchors",
            OpKind::Conv2dGradInput => "conv2d_grad_input",
            OpKind::Conv2dGradWeight => "conv2d_grad_weight",
            OpKind::BatchNormTrain => "batch_norm_train",
            OpKind::BatchNormGrad => "batch_norm_grad",
            OpKind::SiluGrad => "silu_grad",
            OpKind::SigmoidGrad => "sigmoid_grad",
            OpKind::SoftmaxGrad => "softmax_grad",
            OpKind::MaxPool2dGrad => "max_pool2d_grad",
            OpKind::UpsampleNearestGrad => "upsample_nearest_grad",
            OpKind::SliceGrad => "slice_grad",
            OpKind::SumTo => "sum_to",
            OpKind::DetectLoss => "detect_loss",
            OpKind::DetectLossGrad => "detect_loss_grad",
            OpKind::Accumulate => "accumulate",
            OpKind::Sign => "sign",
            OpKind::GlobalNorm => "global_norm",
            OpKind::SgdUpdate => "sgd_update",
            OpKind::AdamWUpdate => "adamw_update",
            OpKind::EmaUpdate => "ema_update",
        }
    }
    /// Looks a kind up by its text name.
    pub fn from_name(s: &str) -> Option<OpKind> {
        ALL_OP_KINDS.iter().copied().find(|k| k.name() == s)
    }
}

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
        match self {
            Attr::Int(v) => write!(f, "{v}"),
            Attr::Float(v) => write!(f, "{v:?}"),
            Attr::Ints(v) => write!(f, "[{}]", join(v.iter().map(|x| x.to_string()))),
            Attr::Floats(v) => write!(f, "[{}]", join(v.iter().map(|x| format!("{x:?}")))),
            Attr::Dims(v) => write!(
                f,
                "[{}]",
                join(v.iter().map(|d| match d {
                    ReshapeDim::Fixed(n) => n.to_string(),
                    ReshapeDim::Of { input, axis } => format!("${input}.{axis}"),
                    ReshapeDim::Infer => "?".to_string(),
                }))
            ),
        }
    }
}

fn join(it: impl Iterator<Item = String>) -> String {
    it.collect::<Vec<_>>().join(",")
}

fn usizes(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

/// Reads named attributes, each exactly once.
struct AttrReader<'a> {
    op: &'a str,
    attrs: &'a [(String, Attr)],
    used: Vec<bool>,
}

impl<'a> AttrReader<'a> {
    fn get(&mut self, key: &str) -> Result<&'a Attr> {
        for (i, (k, v)) in self.attrs.iter().enumerate() {
            if k == key {
                self.used[i] = true;
                return Ok(v);
            }
        }
        invalid(format!("{}: missing attribute `{key}`", self.op))
    }
    fn int(&mut self, key: &str) -> Result<i64> {
        match self.get(key)? {
            Attr::Int(v) => Ok(*v),
            a => invalid(format!("{}: attribute `{key}` must be an integer, found {a}", self.op)),
        }
    }
    fn usize(&mut self, key: &str) -> Result<usize> {
        let v = self.int(key)?;
        usize::try_from(v).or_else(|_| invalid(format!("{}: attribute `{key}` must be >= 0, found {v}", self.op)))
    }
    fn float(&mut self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Attr::Float(v) => Ok(*v),
            Attr::Int(v) => Ok(*v as f32),
            a => invalid(format!("{}: attribute `{key}` must be a float, found {a}", self.op)),
        }
    }
    fn ints(&mut self, key: &str) -> Result<Vec<i64>> {
        match self.get(key)? {
            Attr::Ints(v) => Ok(v.clone()),
            a => invalid(format!("{}: attribute `{key}` must be a list of integers, found {a}", self.op)),
        }
    }
    fn usizes(&mut self, key: &str) -> Result<Vec<usize>> {
        self.ints(key)?
            .into_iter()
            .map(|v| usize::try_from(v).or_else(|_| invalid(format!("{}: `{key}` must be >= 0", self.op))))
            .collect()
    }
    fn array<const K: usize>(&mut self, key: &str) -> Result<[usize; K]> {
        let v = self.usizes(key)?;
        v.as_slice()
            .try_into()
            .or_else(|_| invalid(format!("{}: attribute `{key}` needs {K} values, found {}", self.op, v.len())))
    }
    fn floats(&mut self, key: &str) -> Result<Vec<f32>> {
        match self.get(key)? {
            Attr::Floats(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            a => invalid(format!("{}: attribute `{key}` must be a list of floats, found {a}", self.op)),
        }
    }
    fn dims(&mut self, key: &str) -> Result<Vec<ReshapeDim>> {
        match self.get(key)? {
            Attr::Dims(v) => Ok(v.clone()),
            Attr::Ints(v) => Ok(v.iter().map(|&x| ReshapeDim::Fixed(x.max(0) as usize)).collect()),
            a => invalid(format!("{}: attribute `{key}` must be a list of dims, found {a}", self.op)),
        }
    }
    fn finish(self) -> Result<()> {
        for (i, (k, _)) in self.attrs.iter().enumerate() {
            if !self.used[i] {
                return invalid(format!("{}: unknown attribute `{k}`", self.op));
            }
        }
        Ok(())
    }
}

impl Op {
    /// The op's kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Conv2d(_) => OpKind::Conv2d,
            Op::BatchNorm { .. } => OpKind::BatchNorm,
            Op::Silu => OpKind::Silu,
            Op::Sigmoid => OpKind::Sigmoid,
            Op::Add => OpKind::Add,
            Op::Sub => OpKind::Sub,
            Op::Mul => OpKind::Mul,
            Op::Div => OpKind::Div,
            Op::Concat { .. } => OpKind::Concat,
            Op::Split { .. } => OpKind::Split,
            Op::Slice { .. } => OpKind::Slice,
            Op::MaxPool2d { .. } => OpKind::MaxPool2d,
            Op::UpsampleNearest { .. } => OpKind::UpsampleNearest,
            Op::Reshape { .. } => OpKind::Reshape,
            Op::Transpose { .. } => OpKind::Transpose,
            Op::MatMul => OpKind::MatMul,
            Op::Softmax { .. } => OpKind::Softmax,
            Op::Anchors { .. } => OpKind::Anchors,
            Op::Conv2dGradInput(_) => OpKind::Conv2dGradInput,
            Op::Conv2dGradWeight(_) => OpKind::Conv2dGradWeight,
            Op::BatchNormTrain { .. } => OpKind::BatchNormTrain,
            Op::BatchNormGrad => OpKind::BatchNormGrad,
            Op::SiluGrad => OpKind::SiluGrad,
            Op::SigmoidGrad => OpKind::SigmoidGrad,
            Op::SoftmaxGrad { .. } => OpKind::SoftmaxGrad,
            Op::MaxPool2dGrad { .. } => OpKind::MaxPool2dGrad,
            Op::UpsampleNearestGrad { .. } => OpKind::UpsampleNearestGrad,
            Op::SliceGrad { .. } => OpKind::SliceGrad,
            Op::SumTo => OpKind::SumTo,
            Op::DetectLoss { .. } => OpKind::DetectLoss,
            Op::DetectLossGrad { .. } => OpKind::DetectLossGrad,
            Op::Accumulate => OpKind::Accumulate,
            Op::Sign => OpKind::Sign,
            Op::GlobalNorm => OpKind::GlobalNorm,
            Op::SgdUpdate(_) => OpKind::SgdUpdate,
            Op::AdamWUpdate(_) => OpKind::AdamWUpdate,
            Op::EmaUpdate => OpKind::EmaUpdate,
        }
    }

    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The number of outputs the op produces.
    pub fn num_outputs(&self) -> usize {
        match self {
            Op::Split { sizes, .. } => sizes.len(),
            Op::Anchors { .. } | Op::DetectLoss { .. } => 2,
            Op::BatchNormTrain { .. } => 5,
            Op::BatchNormGrad | Op::AdamWUpdate(_) => 3,
            Op::Accumulate | Op::SgdUpdate(_) => 2,
            Op::DetectLossGrad { strides, .. } => strides.len(),
            _ => 1,
        }
    }

    /// Checks the attributes on their own (shapes are shape inference's business): window
    /// sizes, strides, dilations and groups at least 1, epsilons positive and finite, momenta in
    /// [0, 1], strides and offsets finite (anchor strides positive), split sizes and slice steps
    /// nonzero, `reg_max` at least 1.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let at_least_1 = |what: &str, v: &[usize]| -> std::result::Result<(), String> {
            if v.contains(&0) {
                return Err(format!("{what} {v:?} must be at least 1"));
            }
            Ok(())
        };
        match self {
            Op::Conv2d(c) | Op::Conv2dGradInput(c) | Op::Conv2dGradWeight(c) => {
                at_least_1("stride", &c.stride)?;
                at_least_1("dilation", &c.dilation)?;
                at_least_1("groups", &[c.groups])?;
            }
            Op::BatchNorm { eps, momentum } | Op::BatchNormTrain { eps, momentum } => {
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(format!("eps {eps} must be positive and finite"));
                }
                if !(0.0..=1.0).contains(momentum) {
                    return Err(format!("momentum {momentum} must be in [0, 1]"));
                }
            }
            Op::MaxPool2d { kernel, stride, .. } | Op::MaxPool2dGrad { kernel, stride, .. } => {
                at_least_1("kernel", kernel)?;
                at_least_1("stride", stride)?;
            }
            Op::UpsampleNearest { scale } | Op::UpsampleNearestGrad { scale } => at_least_1("scale", scale)?,
            Op::Split { sizes, .. } => at_least_1("split sizes", sizes)?,
            Op::Slice { steps, .. } | Op::SliceGrad { steps, .. } => {
                if steps.contains(&0) {
                    return Err(format!("slice steps {steps:?} must be nonzero"));
                }
            }
            Op::Anchors { strides, offset } => {
                if strides.iter().any(|s| !(s.is_finite() && *s > 0.0)) || !offset.is_finite() {
                    return Err(format!(
                        "anchor strides {strides:?} must be positive and finite, offset {offset} finite"
                    ));
                }
            }
            Op::DetectLoss { strides, gains, reg_max } | Op::DetectLossGrad { strides, gains, reg_max } => {
                if strides.iter().chain(gains).any(|s| !(s.is_finite() && *s > 0.0)) || *reg_max == 0 {
                    return Err(format!(
                        "strides {strides:?} and gains {gains:?} must be positive and finite, reg_max at least 1"
                    ));
                }
            }
            Op::SgdUpdate(u) | Op::AdamWUpdate(u) => {
                if u.group > 2 {
                    return Err(format!("parameter group {} must be 0, 1 or 2", u.group));
                }
                if !(u.weight_decay.is_finite() && u.weight_decay >= 0.0) {
                    return Err(format!("weight_decay {} must be finite and >= 0", u.weight_decay));
                }
                if !(u.max_norm.is_finite() && u.max_norm >= 0.0) {
                    return Err(format!("max_norm {} must be finite and >= 0", u.max_norm));
                }
                if !(0.0..1.0).contains(&u.beta1) {
                    return Err(format!("beta1 {} must be in [0, 1)", u.beta1));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The accepted number of inputs, as an inclusive range.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv2d(_) => (2, 3),
            Op::BatchNorm { .. } => (5, 5),
            Op::Silu | Op::Sigmoid | Op::Split { .. } | Op::Slice { .. } | Op::MaxPool2d { .. } => (1, 1),
            Op::UpsampleNearest { .. } | Op::Transpose { .. } | Op::Softmax { .. } => (1, 1),
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::MatMul => (2, 2),
            Op::Concat { .. } | Op::Anchors { .. } => (1, usize::MAX),
            Op::Reshape { .. } => (1, 2),
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) => (3, 3),
            Op::BatchNormTrain { .. } | Op::BatchNormGrad => (5, 5),
            Op::SiluGrad | Op::SigmoidGrad | Op::SoftmaxGrad { .. } | Op::MaxPool2dGrad { .. } => (2, 2),
            Op::SliceGrad { .. } | Op::SumTo => (2, 2),
            Op::UpsampleNearestGrad { .. } | Op::Sign => (1, 1),
            Op::Accumulate | Op::EmaUpdate => (3, 3),
            Op::GlobalNorm => (1, usize::MAX),
            Op::SgdUpdate(_) => (5, 5),
            Op::AdamWUpdate(_) => (6, 6),
            Op::DetectLoss { strides, .. } | Op::DetectLossGrad { strides, .. } => {
                (strides.len() + 1, strides.len() + 1)
            }
        }
    }

    /// The attributes in their generic form, in a fixed order.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            Op::Conv2d(c) | Op::Conv2dGradInput(c) | Op::Conv2dGradWeight(c) => vec![
                ("stride", usizes(&c.stride)),
                ("pad", usizes(&c.pad)),
                ("dilation", usizes(&c.dilation)),
                ("groups", Attr::Int(c.groups as i64)),
            ],
            Op::BatchNorm { eps, momentum } | Op::BatchNormTrain { eps, momentum } => {
                vec![("eps", Attr::Float(*eps)), ("momentum", Attr::Float(*momentum))]
            }
            Op::Silu | Op::Sigmoid | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::MatMul => vec![],
            Op::BatchNormGrad | Op::SiluGrad | Op::SigmoidGrad | Op::SumTo => vec![],
            Op::Accumulate | Op::Sign | Op::GlobalNorm | Op::EmaUpdate => vec![],
            Op::SgdUpdate(u) | Op::AdamWUpdate(u) => {
                let mut a = vec![
                    ("group", Attr::Int(u.group as i64)),
                    ("weight_decay", Attr::Float(u.weight_decay)),
                    ("max_norm", Attr::Float(u.max_norm)),
                    ("prox", Attr::Int(u.prox.map_or(-1, |k| k as i64))),
                ];
                if matches!(self, Op::AdamWUpdate(_)) {
                    a.push(("beta1", Attr::Float(u.beta1)));
                }
                a
            }
            Op::Concat { axis } => vec![("axis", Attr::Int(*axis as i64))],
            Op::Split { axis, sizes } => vec![("axis", Attr::Int(*axis as i64)), ("sizes", usizes(sizes))],
            Op::Slice { axes, starts, ends, steps } | Op::SliceGrad { axes, starts, ends, steps } => vec![
                ("axes", usizes(axes)),
                ("starts", Attr::Ints(starts.clone())),
                ("ends", Attr::Ints(ends.clone())),
                ("steps", Attr::Ints(steps.clone())),
            ],
            Op::MaxPool2d { kernel, stride, pad } | Op::MaxPool2dGrad { kernel, stride, pad } => {
                vec![("kernel", usizes(kernel)), ("stride", usizes(stride)), ("pad", usizes(pad))]
            }
            Op::UpsampleNearest { scale } | Op::UpsampleNearestGrad { scale } => vec![("scale", usizes(scale))],
            Op::Reshape { shape } => vec![("shape", Attr::Dims(shape.clone()))],
            Op::Transpose { perm } => vec![("perm", usizes(perm))],
            Op::Softmax { axis } | Op::SoftmaxGrad { axis } => vec![("axis", Attr::Int(*axis as i64))],
            Op::Anchors { strides, offset } => {
                vec![("strides", Attr::Floats(strides.clone())), ("offset", Attr::Float(*offset))]
            }
            Op::DetectLoss { strides, gains, reg_max } | Op::DetectLossGrad { strides, gains, reg_max } => vec![
                ("strides", Attr::Floats(strides.clone())),
                ("gains", Attr::Floats(gains.clone())),
                ("reg_max", Attr::Int(*reg_max as i64)),
            ],
        }
    }

    /// Builds an op from its kind and generic attributes; every attribute must be known and present.
    pub fn from_attrs(kind: OpKind, attrs: &[(String, Attr)]) -> Result<Op> {
        let mut r = AttrReader { op: kind.name(), attrs, used: vec![false; attrs.len()] };
        let conv = |r: &mut AttrReader| -> Result<Conv2d> {
            Ok(Conv2d {
                stride: r.array("stride")?,
                pad: r.array("pad")?,
                dilation: r.array("dilation")?,
                groups: r.usize("groups")?,
            })
        };
        let update = |r: &mut AttrReader, adam: bool| -> Result<Update> {
            let group = r.usize("group")?;
            let weight_decay = r.float("weight_decay")?;
            let max_norm = r.float("max_norm")?;
            let prox = r.int("prox")?;
            let prox = if prox < 0 { None } else { Some(prox as usize) };
            let beta1 = if adam { r.float("beta1")? } else { 0.0 };
            Ok(Update { group, weight_decay, max_norm, prox, beta1 })
        };
        let op = match kind {
            OpKind::Accumulate => Op::Accumulate,
            OpKind::Sign => Op::Sign,
            OpKind::GlobalNorm => Op::GlobalNorm,
            OpKind::EmaUpdate => Op::EmaUpdate,
            OpKind::SgdUpdate => Op::SgdUpdate(update(&mut r, false)?),
            OpKind::AdamWUpdate => Op::AdamWUpdate(update(&mut r, true)?),
            OpKind::Conv2d => Op::Conv2d(conv(&mut r)?),
            OpKind::Conv2dGradInput => Op::Conv2dGradInput(conv(&mut r)?),
            OpKind::Conv2dGradWeight => Op::Conv2dGradWeight(conv(&mut r)?),
            OpKind::BatchNorm => Op::BatchNorm { eps: r.float("eps")?, momentum: r.float("momentum")? },
            OpKind::BatchNormTrain => Op::BatchNormTrain { eps: r.float("eps")?, momentum: r.float("momentum")? },
            OpKind::BatchNormGrad => Op::BatchNormGrad,
            OpKind::SiluGrad => Op::SiluGrad,
            OpKind::SigmoidGrad => Op::SigmoidGrad,
            OpKind::SumTo => Op::SumTo,
            OpKind::Silu => Op::Silu,
            OpKind::Sigmoid => Op::Sigmoid,
            OpKind::Add => Op::Add,
            OpKind::Sub => Op::Sub,
            OpKind::Mul => Op::Mul,
            OpKind::Div => Op::Div,
            OpKind::MatMul => Op::MatMul,
            OpKind::Concat => Op::Concat { axis: r.usize("axis")? },
            OpKind::Split => Op::Split { axis: r.usize("axis")?, sizes: r.usizes("sizes")? },
            OpKind::Slice => Op::Slice {
                axes: r.usizes("axes")?,
                starts: r.ints("starts")?,
                ends: r.ints("ends")?,
                steps: r.ints("steps")?,
            },
            OpKind::SliceGrad => Op::SliceGrad {
                axes: r.usizes("axes")?,
                starts: r.ints("starts")?,
                ends: r.ints("ends")?,
                steps: r.ints("steps")?,
            },
            OpKind::MaxPool2d => {
                Op::MaxPool2d { kernel: r.array("kernel")?, stride: r.array("stride")?, pad: r.array("pad")? }
            }
            OpKind::MaxPool2dGrad => {
                Op::MaxPool2dGrad { kernel: r.array("kernel")?, stride: r.array("stride")?, pad: r.array("pad")? }
            }
            OpKind::UpsampleNearest => Op::UpsampleNearest { scale: r.array("scale")? },
            OpKind::UpsampleNearestGrad => Op::UpsampleNearestGrad { scale: r.array("scale")? },
            OpKind::SoftmaxGrad => Op::SoftmaxGrad { axis: r.usize("axis")? },
            OpKind::DetectLoss => Op::DetectLoss {
                strides: r.floats("strides")?,
                gains: r.floats("gains")?,
                reg_max: r.usize("reg_max")?,
            },
            OpKind::DetectLossGrad => Op::DetectLossGrad {
                strides: r.floats("strides")?,
                gains: r.floats("gains")?,
                reg_max: r.usize("reg_max")?,
            },
            OpKind::Reshape => Op::Reshape { shape: r.dims("shape")? },
            OpKind::Transpose => Op::Transpose { perm: r.usizes("perm")? },
            OpKind::Softmax => Op::Softmax { axis: r.usize("axis")? },
            OpKind::Anchors => Op::Anchors { strides: r.floats("strides")?, offset: r.float("offset")? },
        };
        r.finish()?;
        Ok(op)
    }
}
