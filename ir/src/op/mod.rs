//! The closed set of IR operations, declared once in the table below.
//!
//! [`op_set!`] turns the table into [`Op`], [`OpKind`], [`ALL_OP_KINDS`], the ops' text names
//! and their generic attribute form (which the text printer and parser use, so they cannot
//! drift from the enum). Elementwise ops come in families ([`Unary`], [`UnaryGrad`],
//! [`Binary`]) whose members are kinds of their own. Everything else about an op — inputs,
//! outputs, validation, shape inference, reference semantics, gradient, kernels, ONNX — is an
//! exhaustive match over [`Op`] or [`OpKind`], so a new op does not compile until every place
//! has decided what it means there.

mod attrs;

pub use attrs::{
    Anchors, Attr, Axis, BatchNorm, Conv2d, DetectLoss, Distill, Pool, Reshape, ReshapeDim, Root, Slice, Split,
    Transpose, Update, Upsample,
};

use crate::error::Result;
use attrs::{AttrReader, AttrSet};

macro_rules! op_set {
    (@pat $a:ident, $name:ident) => { Op::$name };
    (@pat $a:ident, $name:ident, $t:ty) => { Op::$name($a) };
    (@attrs $a:ident) => { vec![] };
    (@attrs $a:ident, $t:ty) => { AttrSet::attrs($a) };
    (@build $r:ident, $name:ident) => { Op::$name };
    (@build $r:ident, $name:ident, $t:ty) => { Op::$name(<$t as AttrSet>::read(&mut $r)?) };
    (
        families {
            $( $(#[doc = $fdoc:literal])* $fam:ident {
                $( $(#[doc = $mdoc:literal])* $member:ident = $mtext:literal, )*
            } )*
        }
        ops {
            $( $(#[doc = $doc:literal])* $name:ident $( ( $attrs:ty ) )? = $text:literal, )*
        }
    ) => {
        $(
            $(#[doc = $fdoc])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
            pub enum $fam {
                $( $(#[doc = $mdoc])* $member, )*
            }
            impl $fam {
                /// Every member, in table order.
                pub const ALL: &'static [$fam] = &[$($fam::$member),*];
                /// The member's name in the text form.
                pub fn name(self) -> &'static str {
                    match self { $( $fam::$member => $mtext, )* }
                }
            }
        )*

        /// An IR operation. Inputs and outputs are listed on each variant.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Op {
            $( $(#[doc = $fdoc])* $fam($fam), )*
            $( $(#[doc = $doc])* $name $( ($attrs) )?, )*
        }

        /// The kind of an op, without attributes; a family's members are kinds of their own.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum OpKind {
            $( $(#[doc = $fdoc])* $fam($fam), )*
            $( $(#[doc = $doc])* $name, )*
        }

        /// Every op kind, in table order.
        pub const ALL_OP_KINDS: &[OpKind] = &[ $( $( OpKind::$fam($fam::$member), )* )* $( OpKind::$name, )* ];

        impl OpKind {
            /// The op's name in the text form.
            pub fn name(self) -> &'static str {
                match self {
                    $( OpKind::$fam(m) => m.name(), )*
                    $( OpKind::$name => $text, )*
                }
            }
        }

        impl Op {
            /// The op's kind.
            pub fn kind(&self) -> OpKind {
                match self {
                    $( Op::$fam(m) => OpKind::$fam(*m), )*
                    $( Op::$name { .. } => OpKind::$name, )*
                }
            }

            /// The attributes in their generic form, in declaration order.
            pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
                match self {
                    $( Op::$fam(_) => vec![], )*
                    $( op_set!(@pat a, $name $(, $attrs)?) => op_set!(@attrs a $(, $attrs)?), )*
                }
            }

            /// Builds an op from its kind and generic attributes; every attribute must be known
            /// and present.
            pub fn from_attrs(kind: OpKind, attrs: &[(String, Attr)]) -> Result<Op> {
                let mut r = AttrReader::new(kind.name(), attrs);
                let op = match kind {
                    $( OpKind::$fam(m) => Op::$fam(m), )*
                    $( OpKind::$name => op_set!(@build r, $name $(, $attrs)?), )*
                };
                r.finish()?;
                Ok(op)
            }
        }
    };
}

op_set! {
    families {
        /// Elementwise functions of one input. Input: `x`. Output: shaped like `x`.
        Unary {
            /// `x * sigmoid(x)`.
            Silu = "silu",
            /// `1 / (1 + exp(-x))`.
            Sigmoid = "sigmoid",
            /// Elementwise sign, 0 at 0 (`torch.sign`).
            Sign = "sign",
        }
        /// Gradients of the activations. Inputs: `dy` and what the rule needs. Output: `dx`.
        UnaryGrad {
            /// Of silu; the second input is `x`: `dy·s·(1 + x·(1 − s))`, `s = sigmoid(x)`.
            Silu = "silu_grad",
            /// Of sigmoid; the second input is the forward result `y`: `dy·y·(1 − y)`.
            Sigmoid = "sigmoid_grad",
        }
        /// Elementwise arithmetic of two inputs with NumPy broadcasting.
        Binary {
            /// Sum.
            Add = "add",
            /// Difference.
            Sub = "sub",
            /// Product.
            Mul = "mul",
            /// Quotient (integer division truncates).
            Div = "div",
        }
    }
    ops {
        /// Convolution; see [`Conv2d`].
        Conv2d(Conv2d) = "conv2d",
        /// Batch normalisation over axis 1 with the running statistics. Inputs: x, gamma, beta,
        /// running_mean, running_var.
        BatchNorm(BatchNorm) = "batch_norm",
        /// Concatenation of all inputs along the axis.
        Concat(Axis) = "concat",
        /// Split along the axis into pieces; one output per piece.
        Split(Split) = "split",
        /// Strided slice; see [`Slice`].
        Slice(Slice) = "slice",
        /// 2-D max pooling; see [`Pool`].
        MaxPool2d(Pool) = "max_pool2d",
        /// Nearest-neighbour upsampling by integer factors (h, w): `out[y,x] = in[y/s, x/s]`.
        UpsampleNearest(Upsample) = "upsample_nearest",
        /// Reshape; inputs: data and optionally a tensor whose dims the target refers to.
        Reshape(Reshape) = "reshape",
        /// Axis permutation.
        Transpose(Transpose) = "transpose",
        /// Batched matrix product over the last two axes, batch axes broadcast.
        MatMul = "matmul",
        /// Softmax along the axis.
        Softmax(Axis) = "softmax",
        /// Detect-head anchors. Inputs: one feature map per level `[N,C,h,w]`. Outputs: anchor
        /// points `[2,A]` (x then y, in grid units, `+offset`) and per-anchor strides `[1,A]`;
        /// levels in order, row-major within a level.
        Anchors(Anchors) = "anchors",
        /// Gradient of [`Op::Conv2d`] with respect to its input. Inputs: `dy`, `w`, `x` (for its
        /// shape). Output: `dx`.
        Conv2dGradInput(Conv2d) = "conv2d_grad_input",
        /// Gradient of [`Op::Conv2d`] with respect to its weight, summed over the batch. Inputs:
        /// `dy`, `x`, `w` (for its shape). Output: `dw`.
        Conv2dGradWeight(Conv2d) = "conv2d_grad_weight",
        /// Training-mode batch normalisation over axis 1: normalises with the batch mean and
        /// biased variance. Inputs as [`Op::BatchNorm`]. Outputs: `y`, the batch mean `[C]`,
        /// `1/sqrt(var+eps)` `[C]`, and the next running mean and running variance
        /// (`(1-momentum)·running + momentum·batch`, the variance unbiased).
        BatchNormTrain(BatchNorm) = "batch_norm_train",
        /// Gradient of [`Op::BatchNormTrain`]. Inputs: `dy`, `x`, `gamma`, batch mean, batch
        /// inverse std. Outputs: `dx`, `dgamma`, `dbeta`.
        BatchNormGrad = "batch_norm_grad",
        /// Gradient of [`Op::Softmax`]. Inputs: `dy`, `y` (the forward result). Output:
        /// `y·(dy − Σ_axis dy·y)`.
        SoftmaxGrad(Axis) = "softmax_grad",
        /// Gradient of [`Op::MaxPool2d`]: each output gradient goes to the first maximum of its
        /// window. Inputs: `dy`, `x`. Output: `dx`.
        MaxPool2dGrad(Pool) = "max_pool2d_grad",
        /// Gradient of [`Op::UpsampleNearest`]: sums each `scale` block. Input: `dy`. Output: `dx`.
        UpsampleNearestGrad(Upsample) = "upsample_nearest_grad",
        /// Gradient of [`Op::Slice`]: scatters `dy` into zeros shaped like `x`. Inputs: `dy`, `x`.
        SliceGrad(Slice) = "slice_grad",
        /// Sums `x` over the axes along which `like` was broadcast to `x`'s shape (the gradient
        /// of broadcasting). Inputs: `x`, `like`. Output: shaped like `like`.
        SumTo = "sum_to",
        /// Ultralytics' `v8DetectionLoss` on the Detect head's raw level maps. Inputs: one map
        /// `[N, 4·reg_max + nc, h, w]` per level, then `targets [M, 6]` (batch index, class,
        /// normalised cx, cy, w, h). Outputs: the components `[3]` (box, cls, dfl, after their
        /// `gains`, divided by the target-score sum) and the total (a scalar) = their sum times
        /// the batch size.
        DetectLoss(DetectLoss) = "detect_loss",
        /// Gradient of [`Op::DetectLoss`]'s total with respect to every level map (seed 1).
        /// Inputs as `detect_loss`; one output per level map.
        DetectLossGrad(DetectLoss) = "detect_loss_grad",
        /// Knowledge distillation from a frozen teacher (`slimc_ir::eval::distill`). Inputs: the
        /// student's level maps `[N, 4·reg_max + nc, h, w]`, then the teacher's, shaped alike.
        /// Outputs: the class and box terms `[2]` (after their gains) and the total (a scalar) =
        /// their sum times the batch size.
        DistillLoss(Distill) = "distill_loss",
        /// Gradient of [`Op::DistillLoss`]'s total with respect to every student level map (seed
        /// 1). Inputs as `distill_loss`; one output per student map.
        DistillLossGrad(Distill) = "distill_loss_grad",
        /// Gradient accumulation to the nominal batch. Inputs: the accumulator, this
        /// micro-batch's gradient, the [`crate::step_scalars`]. Outputs: the sum (the gradient
        /// alone on an epoch's first micro-batch) and the accumulator's next value (the sum, or
        /// zeros when the optimizer steps).
        Accumulate = "accumulate",
        /// The L2 norm of all inputs taken together, a scalar (`clip_grad_norm_`'s total norm).
        GlobalNorm = "global_norm",
        /// SGD with Nesterov momentum (dampening 0) and L2 weight decay, PyTorch's update; see
        /// [`Update`]. Inputs: parameter, gradient, gradient norm, [`crate::step_scalars`],
        /// momentum buffer. Outputs: the next parameter and buffer (the inputs when the step
        /// flag is 0).
        SgdUpdate(Update) = "sgd_update",
        /// AdamW with decoupled weight decay, PyTorch's update; see [`Update`]. Inputs:
        /// parameter, gradient, gradient norm, [`crate::step_scalars`], first and second
        /// moments. Outputs: the next parameter and moments (the inputs when the step flag is 0).
        AdamWUpdate(Update) = "adamw_update",
        /// Ultralytics' model EMA. Inputs: the average, the model's tensor,
        /// [`crate::step_scalars`]. Output: `d·ema + (1 − d)·x` when the step flag is set, else
        /// the average.
        EmaUpdate = "ema_update",
        /// Data-parallel gradient sum. Inputs: tensors `x_1..x_k`, then the
        /// [`crate::step_scalars`]. Outputs: `y_i` shaped like `x_i`: the sum of `x_i` over every
        /// rank of the world when the step flag is set (one collective over all `x_i` taken as
        /// one bucket), else `x_i`. In a world of one rank (the reference semantics) `y_i = x_i`.
        AllReduce = "all_reduce",
        /// Data-parallel broadcast. Inputs: tensors `x_1..x_k`. Outputs: `y_i` shaped like `x_i`:
        /// rank `root`'s `x_i` on every rank. In a world of one rank `y_i = x_i`.
        Broadcast(Root) = "broadcast",
    }
}

/// Ultralytics' three parameter groups (`build_optimizer`'s g[2], g[0], g[1]); an update op's
/// [`Update::group`] is the group's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    /// Addends (conv biases, BN shifts): no decay, the bias warm-up.
    Bias,
    /// Everything else that multiplies: decay.
    Weight,
    /// BN scales: no decay; network slimming's L1 term acts on them.
    Gamma,
}

impl ParamGroup {
    /// The group's index, which selects its learning rate among the step scalars.
    pub fn index(self) -> usize {
        match self {
            ParamGroup::Bias => 0,
            ParamGroup::Weight => 1,
            ParamGroup::Gamma => 2,
        }
    }
}

/// What a collective op exchanges between the ranks ([`Op::collective`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collective {
    /// [`Op::AllReduce`]: every operand but the last (the step scalars) summed over the ranks,
    /// on a step that updates.
    AllReduce,
    /// [`Op::Broadcast`]: every operand replaced by rank `root`'s.
    Broadcast {
        /// The rank whose operands everyone gets.
        root: usize,
    },
}

impl OpKind {
    /// Looks a kind up by its text name.
    pub fn from_name(s: &str) -> Option<OpKind> {
        ALL_OP_KINDS.iter().copied().find(|k| k.name() == s)
    }
}

impl Op {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The number of outputs the op produces when given `inputs` operands.
    pub fn num_outputs(&self, inputs: usize) -> usize {
        match self {
            Op::Split(s) => s.sizes.len(),
            Op::DetectLossGrad(d) => d.strides.len(),
            Op::DistillLossGrad(_) => inputs / 2,
            Op::BatchNormTrain(_) => 5,
            Op::BatchNormGrad | Op::AdamWUpdate(_) => 3,
            Op::Anchors(_) | Op::DetectLoss(_) | Op::DistillLoss(_) | Op::Accumulate | Op::SgdUpdate(_) => 2,
            Op::Unary(_) | Op::UnaryGrad(_) | Op::Binary(_) | Op::Conv2d(_) | Op::BatchNorm(_) | Op::Concat(_) => 1,
            Op::Slice(_) | Op::MaxPool2d(_) | Op::UpsampleNearest(_) | Op::Reshape(_) | Op::Transpose(_) => 1,
            Op::MatMul | Op::Softmax(_) | Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) => 1,
            Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) => 1,
            Op::SumTo | Op::GlobalNorm | Op::EmaUpdate => 1,
            Op::AllReduce => inputs.saturating_sub(1),
            Op::Broadcast(_) => inputs,
        }
    }

    /// The parameter operands whose group the op decides, as (input slot, group): a
    /// convolution's bias and a batch norm's shift are [`ParamGroup::Bias`], a batch norm's
    /// scale is [`ParamGroup::Gamma`]. A trained parameter no op claims is a
    /// [`ParamGroup::Weight`]; a gradient op's operands are its forward op's business.
    pub fn param_groups(&self) -> &'static [(usize, ParamGroup)] {
        match self {
            Op::Conv2d(_) => &[(2, ParamGroup::Bias)],
            Op::BatchNorm(_) | Op::BatchNormTrain(_) => &[(1, ParamGroup::Gamma), (2, ParamGroup::Bias)],
            // No parameter operand of a role of its own.
            Op::Unary(_) | Op::UnaryGrad(_) | Op::Binary(_) | Op::Concat(_) | Op::Split(_) | Op::Slice(_) => &[],
            Op::MaxPool2d(_) | Op::UpsampleNearest(_) | Op::Reshape(_) | Op::Transpose(_) | Op::MatMul => &[],
            Op::Softmax(_) | Op::Anchors(_) | Op::DetectLoss(_) | Op::SumTo | Op::AllReduce | Op::Broadcast(_) => &[],
            // Gradients and the optimizer's ops.
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormGrad | Op::SoftmaxGrad(_) => &[],
            Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) | Op::DetectLossGrad(_) => &[],
            Op::Accumulate | Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => &[],
            // The distillation loss reads level maps; the teacher's parameters are its convs'.
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => &[],
        }
    }

    /// The collective the op is, if it is one: it exchanges its operands between the ranks of
    /// a data-parallel world, so a backend runs it through its communicator (on the host)
    /// rather than as a kernel. Its reference semantics is the world of one rank.
    pub fn collective(&self) -> Option<Collective> {
        match self {
            Op::AllReduce => Some(Collective::AllReduce),
            Op::Broadcast(Root { root }) => Some(Collective::Broadcast { root: *root }),
            Op::Unary(_) | Op::UnaryGrad(_) | Op::Binary(_) | Op::Conv2d(_) | Op::BatchNorm(_) | Op::Concat(_) => None,
            Op::Split(_) | Op::Slice(_) | Op::MaxPool2d(_) | Op::UpsampleNearest(_) | Op::Reshape(_) => None,
            Op::Transpose(_) | Op::MatMul | Op::Softmax(_) | Op::Anchors(_) | Op::DetectLoss(_) | Op::SumTo => None,
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) | Op::BatchNormGrad => None,
            Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) => None,
            Op::DetectLossGrad(_) | Op::Accumulate | Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) => None,
            Op::EmaUpdate | Op::DistillLoss(_) | Op::DistillLossGrad(_) => None,
        }
    }

    /// The accepted number of inputs, as an inclusive range.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv2d(_) => (2, 3),
            Op::Unary(_) | Op::Split(_) | Op::Slice(_) | Op::MaxPool2d(_) => (1, 1),
            Op::UpsampleNearest(_) | Op::Transpose(_) | Op::Softmax(_) | Op::UpsampleNearestGrad(_) => (1, 1),
            Op::Binary(_) | Op::UnaryGrad(_) | Op::MatMul | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) => (2, 2),
            Op::SliceGrad(_) | Op::SumTo => (2, 2),
            Op::Concat(_) | Op::Anchors(_) | Op::GlobalNorm | Op::Broadcast(_) => (1, usize::MAX),
            Op::AllReduce | Op::DistillLoss(_) | Op::DistillLossGrad(_) => (2, usize::MAX),
            Op::Reshape(_) => (1, 2),
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::Accumulate | Op::EmaUpdate => (3, 3),
            Op::BatchNorm(_) | Op::BatchNormTrain(_) | Op::BatchNormGrad | Op::SgdUpdate(_) => (5, 5),
            Op::AdamWUpdate(_) => (6, 6),
            Op::DetectLoss(d) | Op::DetectLossGrad(d) => (d.strides.len() + 1, d.strides.len() + 1),
        }
    }

    /// Checks the attributes on their own (shapes are shape inference's business): window
    /// sizes, strides, dilations and groups at least 1, epsilons positive and finite, momenta in
    /// [0, 1], strides and offsets finite (anchor strides positive), split sizes and slice steps
    /// nonzero, `reg_max` at least 1, SGD without a β1.
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
            Op::BatchNorm(BatchNorm { eps, momentum }) | Op::BatchNormTrain(BatchNorm { eps, momentum }) => {
                if !(eps.is_finite() && *eps > 0.0) {
                    return Err(format!("eps {eps} must be positive and finite"));
                }
                if !(0.0..=1.0).contains(momentum) {
                    return Err(format!("momentum {momentum} must be in [0, 1]"));
                }
            }
            Op::MaxPool2d(p) | Op::MaxPool2dGrad(p) => {
                at_least_1("kernel", &p.kernel)?;
                at_least_1("stride", &p.stride)?;
            }
            Op::UpsampleNearest(u) | Op::UpsampleNearestGrad(u) => at_least_1("scale", &u.scale)?,
            Op::Split(s) => at_least_1("split sizes", &s.sizes)?,
            Op::Slice(s) | Op::SliceGrad(s) => {
                if s.steps.contains(&0) {
                    return Err(format!("slice steps {:?} must be nonzero", s.steps));
                }
            }
            Op::Anchors(Anchors { strides, offset }) => {
                if strides.iter().any(|s| !(s.is_finite() && *s > 0.0)) || !offset.is_finite() {
                    return Err(format!(
                        "anchor strides {strides:?} must be positive and finite, offset {offset} finite"
                    ));
                }
            }
            Op::DetectLoss(DetectLoss { strides, gains, reg_max })
            | Op::DetectLossGrad(DetectLoss { strides, gains, reg_max }) => {
                if strides.iter().chain(gains).any(|s| !(s.is_finite() && *s > 0.0)) || *reg_max == 0 {
                    return Err(format!(
                        "strides {strides:?} and gains {gains:?} must be positive and finite, reg_max at least 1"
                    ));
                }
            }
            Op::DistillLoss(Distill { gains, temperature, reg_max })
            | Op::DistillLossGrad(Distill { gains, temperature, reg_max }) => {
                if gains.len() != 2 || gains.iter().any(|g| !(g.is_finite() && *g >= 0.0)) {
                    return Err(format!("gains {gains:?} must be two finite numbers >= 0 (class, box)"));
                }
                if !(temperature.is_finite() && *temperature > 0.0) || *reg_max == 0 {
                    return Err(format!("temperature {temperature} must be positive and finite, reg_max at least 1"));
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
                if matches!(self, Op::SgdUpdate(_)) && u.beta1 != 0.0 {
                    return Err(format!("sgd_update has no beta1 (found {})", u.beta1));
                }
            }
            // No attributes, or none with a constraint of their own.
            Op::Unary(_) | Op::UnaryGrad(_) | Op::Binary(_) | Op::Concat(_) | Op::Reshape(_) | Op::Transpose(_) => {}
            Op::MatMul | Op::Softmax(_) | Op::SoftmaxGrad(_) | Op::BatchNormGrad | Op::SumTo => {}
            Op::Accumulate | Op::GlobalNorm | Op::EmaUpdate | Op::AllReduce | Op::Broadcast(_) => {}
        }
        Ok(())
    }
}
