//! The WGSL kernels: the shader files (`shaders/`, one op family per file, each with
//! `common.wgsl` in front), their entry points as [`Entry`] values, the binding numbers of their
//! variables, and the grids that dispatch them.

use anyhow::{bail, Result};

/// The shader files by name.
pub const SHADERS: &[(&str, &str)] = &[
    ("activation", include_str!("../../../shaders/activation.wgsl")),
    ("anchors", include_str!("../../../shaders/anchors.wgsl")),
    ("batch_norm", include_str!("../../../shaders/batch_norm.wgsl")),
    ("conv", include_str!("../../../shaders/conv.wgsl")),
    ("conv_packed", include_str!("../../../shaders/conv_packed.wgsl")),
    ("detect_loss", include_str!("../../../shaders/detect_loss.wgsl")),
    ("distill", include_str!("../../../shaders/distill.wgsl")),
    ("elementwise", include_str!("../../../shaders/elementwise.wgsl")),
    ("layout", include_str!("../../../shaders/layout.wgsl")),
    ("matmul", include_str!("../../../shaders/matmul.wgsl")),
    ("optimizer", include_str!("../../../shaders/optimizer.wgsl")),
    ("pooling", include_str!("../../../shaders/pooling.wgsl")),
    ("softmax", include_str!("../../../shaders/softmax.wgsl")),
];

const COMMON: &str = include_str!("../../../shaders/common.wgsl");

/// The source of shader file `file`, `common.wgsl` first.
pub fn source(file: &str) -> String {
    let body = SHADERS.iter().find(|(n, _)| *n == file).map(|(_, s)| *s).expect("a shader file of SHADERS");
    format!("{COMMON}\n{body}")
}

/// Invocations per workgroup of the flat (one element per invocation) kernels.
pub const WG: u64 = 256;

/// Lays `groups` workgroups out on a grid whose dimensions hold at most `limit` each: x, and y
/// when x would exceed it (the kernels index `y · x_count + x`).
pub fn grid(groups: u64, limit: u32) -> Result<[u32; 3]> {
    let limit = limit as u64;
    if groups <= limit {
        return Ok([groups as u32, 1, 1]);
    }
    let rows = groups.div_ceil(limit);
    if rows > limit {
        bail!("{groups} workgroups exceed a {limit}×{limit} grid");
    }
    Ok([limit as u32, rows as u32, 1])
}

/// The grid of a flat kernel over `n` elements.
pub fn flat_grid(n: usize, limit: u32) -> Result<[u32; 3]> {
    grid((n as u64).div_ceil(WG), limit)
}

/// The binding number of variable `name` in shader file `file` (group 0), read from the shader
/// itself, so the lowering names operands and never numbers them.
pub fn binding(file: &str, name: &str) -> Option<u32> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<(&'static str, String), u32>> =
        std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = std::collections::HashMap::new();
        for (f, _) in SHADERS {
            let module = wgpu::naga::front::wgsl::parse_str(&source(f)).expect("the shipped shaders parse");
            for (_, var) in module.global_variables.iter() {
                if let (Some(b), Some(n)) = (&var.binding, &var.name) {
                    t.insert((*f, n.clone()), b.binding);
                }
            }
        }
        t
    });
    table.get(&(file, name.to_string())).copied()
}

macro_rules! entries {
    ($( $file:literal { $( $(#[doc = $doc:literal])* $variant:ident = $name:literal, )* } )*) => {
        /// A kernel: an entry point of one shader file. Lowerings name kernels by these values,
        /// never by strings; the unit tests check that each is a compute entry point of its file
        /// and that every entry point of every file has one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Entry {
            $( $( $(#[doc = $doc])* $variant, )* )*
        }

        impl Entry {
            /// Every kernel, file by file.
            #[cfg(test)]
            const ALL: &'static [Entry] = &[$( $( Entry::$variant, )* )*];

            /// The shader file (a name of [`SHADERS`]).
            pub fn file(self) -> &'static str {
                match self {
                    $( $( Entry::$variant => $file, )* )*
                }
            }

            /// The entry point's name in its file.
            pub fn name(self) -> &'static str {
                match self {
                    $( $( Entry::$variant => $name, )* )*
                }
            }
        }
    };
}

entries! {
    "activation" {
        /// SiLU.
        Silu = "silu",
        /// The logistic function.
        Sigmoid = "sigmoid",
        /// SiLU's gradient.
        SiluGrad = "silu_grad",
        /// The sigmoid's gradient.
        SigmoidGrad = "sigmoid_grad",
        /// The sign (0 at 0).
        Sign = "sign_",
    }
    "anchors" {
        /// One level's anchor points and strides.
        Anchors = "anchors",
    }
    "batch_norm" {
        /// Inference-mode batch norm.
        BatchNorm = "batch_norm",
        /// Training mode: the per-channel batch statistics and the next running ones.
        BnStats = "bn_stats",
        /// Training mode: normalisation with the batch statistics.
        BnTrainApply = "bn_train_apply",
        /// The gradient's per-channel sums.
        BnGradStats = "bn_grad_stats",
        /// The input gradient from those sums.
        BnGradApply = "bn_grad_apply",
    }
    "conv" {
        /// The implicit GEMM tiled in workgroup memory.
        ConvTiled = "conv_tiled",
        /// One output per invocation: depthwise convolutions, whose GEMMs have a single row.
        ConvDirect = "conv_direct",
        /// The weight gradient's partial sums added in order.
        ConvReduce = "conv_reduce",
        /// The epilogue's per-channel (scale, shift) from the bias and a folded batch norm.
        ConvCoefficients = "conv_coefficients",
    }
    "conv_packed" {
        /// Windows of the input packed into a matrix (im2col).
        PackedIm2col = "packed_im2col",
        /// A weight (or its transpose) or the output gradient's channels in the padded layout.
        PackedMatrix = "packed_matrix",
        /// The register-blocked GEMM on vec4 loads.
        PackedGemm = "packed_gemm",
        /// The input gradient gathered from the column gradient (col2im, no atomics).
        PackedCol2im = "packed_col2im",
    }
    "detect_loss" {
        /// Pass 1, per anchor: the distributions' expectations and the decoded box.
        DlDecode = "dl_decode",
        /// Pass 2, per (box, anchor): overlap and the alignment metric.
        DlMetrics = "dl_metrics",
        /// Pass 3, per box: its best anchors by the metric.
        DlTopk = "dl_topk",
        /// Pass 4, per anchor: an anchor claimed by several boxes goes to the one it overlaps most.
        DlResolve = "dl_resolve",
        /// Pass 5, per box: the best metric and overlap among its positive anchors.
        DlRowMax = "dl_row_max",
        /// Pass 6, per anchor: the assigned score and the anchor's share of each loss.
        DlScore = "dl_score",
        /// Pass 7: the sums over every anchor, in a fixed order.
        DlSum = "dl_sum",
        /// The gradient with respect to the level maps.
        DlGrad = "dl_grad",
    }
    "distill" {
        /// Pass 1, per anchor: the teacher's confidence, the class and box terms (and their
        /// derivatives, for the gradient).
        KdAnchor = "kd_anchor",
        /// Pass 2: the sums over every anchor, in a fixed order.
        KdSum = "kd_sum",
        /// Pass 3, per element: the derivatives scaled into the gradient.
        KdScale = "kd_scale",
    }
    "elementwise" {
        /// Broadcast arithmetic ([`super::uniforms::View`]'s `code` picks the op).
        Binary = "binary",
        /// The sum over broadcast axes.
        SumTo = "sum_to",
    }
    "layout" {
        /// A strided copy (slices, transposes, concat and split parts, upsampling).
        StridedCopy = "strided_copy",
        /// A constant fill (before a strided copy that writes only some elements).
        Fill = "fill",
        /// Nearest upsampling's gradient: each block summed.
        UpsampleNearestGrad = "upsample_nearest_grad",
    }
    "matmul" {
        /// Batched matrix product.
        MatMul = "matmul",
    }
    "optimizer" {
        /// SGD with Nesterov momentum.
        SgdUpdate = "sgd_update",
        /// AdamW.
        AdamWUpdate = "adamw_update",
        /// The model EMA.
        EmaUpdate = "ema_update",
        /// Gradient accumulation.
        Accumulate = "accumulate",
        /// Partial sums of squares of the global norm.
        SumSquares = "sum_squares",
        /// The global norm from those partial sums.
        NormOfPartials = "norm_of_partials",
    }
    "pooling" {
        /// Max pooling.
        MaxPool2d = "max_pool2d",
        /// Max pooling's gradient.
        MaxPool2dGrad = "max_pool2d_grad",
    }
    "softmax" {
        /// Softmax along one axis.
        Softmax = "softmax",
        /// Softmax's gradient.
        SoftmaxGrad = "softmax_grad",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use wgpu::naga;

    #[test]
    fn bindings_are_read_from_the_shaders() {
        assert_eq!(binding("activation", "out"), Some(3));
        assert_eq!(binding("batch_norm", "next_var"), Some(17));
        assert_eq!(binding("conv", "P"), Some(0));
        assert_eq!(binding("activation", "missing"), None);
        assert_eq!(binding("no_such_file", "out"), None);
    }

    #[test]
    fn every_entry_is_a_compute_entry_point_of_its_file_and_every_entry_point_has_one() {
        let named: BTreeSet<(&str, &str)> = Entry::ALL.iter().map(|e| (e.file(), e.name())).collect();
        assert_eq!(named.len(), Entry::ALL.len(), "two kernels name the same entry point");
        let mut declared = BTreeSet::new();
        for &(file, _) in SHADERS {
            let module = naga::front::wgsl::parse_str(&source(file)).unwrap_or_else(|e| panic!("{file}.wgsl: {e}"));
            for ep in &module.entry_points {
                assert_eq!(ep.stage, naga::ShaderStage::Compute, "{file}.wgsl: {} is not a compute entry", ep.name);
                declared.insert((file, ep.name.clone()));
            }
        }
        let declared: BTreeSet<(&str, &str)> = declared.iter().map(|(f, n)| (*f, n.as_str())).collect();
        let missing: Vec<_> = named.difference(&declared).collect();
        let unnamed: Vec<_> = declared.difference(&named).collect();
        assert!(missing.is_empty(), "kernels with no entry point in their shader file: {missing:?}");
        assert!(unnamed.is_empty(), "shader entry points no Entry names: {unnamed:?}");
    }
}
