//! Batch normalisation: inference (its coefficients for the convolution epilogue), training-mode
//! statistics and the gradient.

use super::buffers::sized;
use super::simd;
use rayon::prelude::*;
use slimc_ir::eval::nn::running_update;

/// Inference batch norm over axis 1 with running statistics, into `out`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    out: &mut Vec<f32>,
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) {
    let coef: Vec<[f32; 3]> = bn_coefficients(gamma, beta, mean, var, eps).iter().map(|&[a, c]| [a, 0.0, c]).collect();
    per_channel(sized(out, x.len()), shape, x, None, &coef);
}

/// Inference batch norm as per-channel `(a, c)` of `a·x + c`.
pub fn bn_coefficients(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> Vec<[f32; 2]> {
    let scale = slimc_ir::eval::nn::bn_scale(gamma, var, eps);
    scale.iter().zip(beta).zip(mean).map(|((&s, &b), &m)| [s, b - m * s]).collect()
}

/// Applies `o = coef(ch)(x, y)` plane by plane, in parallel: `coef` gives each channel's
/// `(a, b, c)` of `a·x + b·y + c` (with `y` absent, `b` is ignored).
pub(crate) fn per_channel(out: &mut [f32], shape: &[usize], x: &[f32], y: Option<&[f32]>, coef: &[[f32; 3]]) {
    let c = shape[1];
    let inner = shape[2..].iter().product::<usize>().max(1);
    out.par_chunks_mut(inner).enumerate().for_each(|(i, dst)| {
        let [a, b, k] = coef[i % c];
        let src = &x[i * inner..(i + 1) * inner];
        match y {
            Some(y) => simd::affine2(dst, src, &y[i * inner..(i + 1) * inner], a, b, k),
            None => simd::affine(dst, src, a, k),
        }
    });
}

/// The per-channel results of [`batch_norm_train`].
pub struct BnStats {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// `1/sqrt(biased batch variance + eps)` per channel.
    pub invstd: Vec<f32>,
    /// Next running mean.
    pub running_mean: Vec<f32>,
    /// Next running variance (updated with the unbiased batch variance).
    pub running_var: Vec<f32>,
}

/// Per-channel `(Σa, Σa·b)` over the batch and spatial axes of NCHW-like tensors, in f64, in
/// parallel over channels.
fn channel_sums(shape: &[usize], a: &[f32], b: &[f32]) -> Vec<[f64; 2]> {
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = [0.0f64; 2];
            for i in 0..n {
                let at = (i * c + ch) * inner;
                let [s, d] = simd::sum_and_dot(&a[at..at + inner], &b[at..at + inner]);
                acc = [acc[0] + s, acc[1] + d];
            }
            acc
        })
        .collect()
}

/// Training-mode batch norm over axis 1 (batch statistics; PyTorch's running-statistic update),
/// the output into `y`. One pass gathers each channel's sum and sum of squares (in f64), one
/// applies the normalisation.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    y: &mut Vec<f32>,
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    momentum: f32,
) -> BnStats {
    let count = (x.len() / shape[1].max(1)) as f64;
    let sums = channel_sums(shape, x, x);
    let mean: Vec<f64> = sums.iter().map(|s| s[0] / count).collect();
    let var: Vec<f64> = sums.iter().zip(&mean).map(|(s, &m)| (s[1] / count - m * m).max(0.0)).collect();
    let invstd: Vec<f32> = var.iter().map(|&v| (1.0 / (v + eps as f64).sqrt()) as f32).collect();
    let coef: Vec<[f32; 3]> = (0..shape[1])
        .map(|ch| {
            let s = gamma[ch] as f64 * invstd[ch] as f64;
            [s as f32, 0.0, (beta[ch] as f64 - mean[ch] * s) as f32]
        })
        .collect();
    per_channel(sized(y, x.len()), shape, x, None, &coef);
    let [running_mean, running_var] =
        running_update(running_mean, running_var, &mean, &var, x.len() / shape[1].max(1), momentum);
    BnStats { mean: mean.iter().map(|&v| v as f32).collect(), invstd, running_mean, running_var }
}

/// The gradient of training-mode batch norm: `dx` into its buffer, `(dgamma, dbeta)` returned.
/// One pass gathers `Σdy` and `Σdy·x` per channel; `dx` is then `a·dy + b·x + c` per channel.
pub fn batch_norm_grad(
    dx: &mut Vec<f32>,
    dy: &[f32],
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let count = (x.len() / shape[1].max(1)) as f64;
    let sums = channel_sums(shape, dy, x);
    let (mut dgamma, mut dbeta) = (vec![], vec![]);
    let coef: Vec<[f32; 3]> = sums
        .iter()
        .enumerate()
        .map(|(ch, &[sdy, sdyx])| {
            let (m, r) = (mean[ch] as f64, invstd[ch] as f64);
            // dγ = Σ dy·x̂ = r·(Σdy·x − m·Σdy); dx = k·(N·dy − dβ − x̂·dγ) with k = γ·r/N.
            let dg = r * (sdyx - m * sdy);
            dgamma.push(dg as f32);
            dbeta.push(sdy as f32);
            let k = gamma[ch] as f64 * r / count;
            [(k * count) as f32, (-k * dg * r) as f32, (k * (dg * r * m - sdy)) as f32]
        })
        .collect();
    per_channel(sized(dx, x.len()), shape, dy, Some(x), &coef);
    (dgamma, dbeta)
}
