//! Plain reference definitions of convolution, batch normalisation and max pooling and of their
//! training forms and gradients: direct loops over the NCHW definition with f64 accumulation,
//! written for clarity, not speed, and the logistic function the activations and the detection
//! loss use. Backends' fast kernels are tested against these.

use crate::op::Conv2d;

/// Output size of a conv or pool window along one axis.
pub fn window_out(i: usize, k: usize, stride: usize, dil: usize, p0: usize, p1: usize) -> usize {
    (i + p0 + p1 - dil * (k - 1) - 1) / stride + 1
}

/// `count / (count − 1)`: turns a biased variance over `count` values into the unbiased one the
/// running statistics take (PyTorch's; 1 value counts as 2).
pub fn unbiased_factor(count: usize) -> f64 {
    count as f64 / (count.max(2) - 1) as f64
}

/// `γ / sqrt(var + eps)` per channel: the factor that folds an inference batch norm into what
/// precedes it.
pub fn bn_scale(gamma: &[f32], var: &[f32], eps: f32) -> Vec<f32> {
    gamma.iter().zip(var).map(|(g, v)| g / (v + eps).sqrt()).collect()
}

/// Input index of output position `o` at kernel tap `k` along one axis, if inside the input.
pub fn tap(o: usize, k: usize, stride: usize, dil: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (i >= 0 && i < size as isize).then_some(i as usize)
}

/// The geometry of one convolution: input `[n, cin, h, w]`, weight `[cout, cin/g, kh, kw]`,
/// output `[n, cout, oh, ow]`, `g` groups of `og` output channels.
pub struct ConvGeometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Groups.
    pub g: usize,
    /// Output channels per group.
    pub og: usize,
}

impl ConvGeometry {
    /// The geometry of `c` on an input of shape `xs` with a weight of shape `ws`.
    pub fn new(xs: &[usize], ws: &[usize], c: &Conv2d) -> ConvGeometry {
        ConvGeometry {
            n: xs[0],
            cin: xs[1],
            h: xs[2],
            w: xs[3],
            cout: ws[0],
            cg: ws[1],
            kh: ws[2],
            kw: ws[3],
            oh: window_out(xs[2], ws[2], c.stride[0], c.dilation[0], c.pad[0], c.pad[2]),
            ow: window_out(xs[3], ws[3], c.stride[1], c.dilation[1], c.pad[1], c.pad[3]),
            g: c.groups,
            og: ws[0] / c.groups,
        }
    }

    /// One input channel per group, one output channel per input channel.
    pub fn depthwise(&self) -> bool {
        self.g == self.cin && self.cg == 1 && self.cout == self.cin
    }

    /// A 1×1 kernel with stride 1 and no padding: the conv is a plain matrix product.
    pub fn pointwise(&self, c: &Conv2d) -> bool {
        c.pointwise([self.kh, self.kw])
    }

    /// Calls `f(x index, w index, y index)` for every product term of the convolution.
    fn each_term(&self, c: &Conv2d, mut f: impl FnMut(usize, usize, usize)) {
        for b in 0..self.n {
            for co in 0..self.cout {
                let gi = co / self.og;
                for oy in 0..self.oh {
                    for ox in 0..self.ow {
                        let yi = ((b * self.cout + co) * self.oh + oy) * self.ow + ox;
                        for k in 0..self.cg {
                            let ci = gi * self.cg + k;
                            for ky in 0..self.kh {
                                let Some(iy) = tap(oy, ky, c.stride[0], c.dilation[0], c.pad[0], self.h) else {
                                    continue;
                                };
                                for kx in 0..self.kw {
                                    let Some(ix) = tap(ox, kx, c.stride[1], c.dilation[1], c.pad[1], self.w) else {
                                        continue;
                                    };
                                    let xi = ((b * self.cin + ci) * self.h + iy) * self.w + ix;
                                    let wi = ((co * self.cg + k) * self.kh + ky) * self.kw + kx;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[b, co, oy, ox] = bias[co] + Σ x[b, ci, iy, ix]·w[co, k, ky, kx]` over the group's input
/// channels and the taps inside the input (zero padding). Returns `y` and its shape.
pub fn conv2d(
    x: &[f32],
    xs: &[usize],
    w: &[f32],
    ws: &[usize],
    bias: Option<&[f32]>,
    c: &Conv2d,
) -> (Vec<f32>, Vec<usize>) {
    let g = ConvGeometry::new(xs, ws, c);
    let mut acc = vec![0.0f64; g.n * g.cout * g.oh * g.ow];
    g.each_term(c, |xi, wi, yi| acc[yi] += x[xi] as f64 * w[wi] as f64);
    let plane = g.oh * g.ow;
    let y = acc.iter().enumerate().map(|(i, &v)| (v + bias.map_or(0.0, |b| b[(i / plane) % g.cout] as f64)) as f32);
    (y.collect(), vec![g.n, g.cout, g.oh, g.ow])
}

/// The gradient of [`conv2d`] with respect to its input of shape `xs`.
pub fn conv2d_grad_input(dy: &[f32], w: &[f32], ws: &[usize], xs: &[usize], c: &Conv2d) -> Vec<f32> {
    let g = ConvGeometry::new(xs, ws, c);
    let mut dx = vec![0.0f64; xs.iter().product()];
    g.each_term(c, |xi, wi, yi| dx[xi] += dy[yi] as f64 * w[wi] as f64);
    dx.into_iter().map(|v| v as f32).collect()
}

/// The gradient of [`conv2d`] with respect to its weight of shape `ws`.
pub fn conv2d_grad_weight(dy: &[f32], x: &[f32], xs: &[usize], ws: &[usize], c: &Conv2d) -> Vec<f32> {
    let g = ConvGeometry::new(xs, ws, c);
    let mut dw = vec![0.0f64; ws.iter().product()];
    g.each_term(c, |xi, wi, yi| dw[wi] += dy[yi] as f64 * x[xi] as f64);
    dw.into_iter().map(|v| v as f32).collect()
}

/// Channel `ch` of element `i` of a tensor of `shape` (channels on axis 1).
fn channel(shape: &[usize], i: usize) -> usize {
    let inner: usize = shape[2..].iter().product();
    (i / inner.max(1)) % shape[1]
}

/// Inference batch norm over axis 1: `γ·(x − mean)/sqrt(var + eps) + β`.
pub fn batch_norm(
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Vec<f32> {
    let at = |i: usize| channel(shape, i);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = at(i);
            ((v as f64 - mean[c] as f64) / (var[c] as f64 + eps as f64).sqrt() * gamma[c] as f64 + beta[c] as f64)
                as f32
        })
        .collect()
}

/// Per-channel means of `f(element index, value)` over a tensor of `shape`.
fn channel_mean(x: &[f32], shape: &[usize], f: impl Fn(usize, f32) -> f64) -> Vec<f64> {
    let c = shape[1];
    let mut s = vec![0.0f64; c];
    for (i, &v) in x.iter().enumerate() {
        s[channel(shape, i)] += f(i, v);
    }
    let count = (x.len() / c.max(1)).max(1) as f64;
    s.into_iter().map(|v| v / count).collect()
}

/// What training-mode batch norm produces: `[y, batch mean, 1/sqrt(biased var + eps), next
/// running mean, next running var]`; the running variance takes the unbiased batch variance
/// (PyTorch's update with `momentum`).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    momentum: f32,
) -> [Vec<f32>; 5] {
    let mean = channel_mean(x, shape, |_, v| v as f64);
    let var = channel_mean(x, shape, |i, v| (v as f64 - mean[channel(shape, i)]).powi(2));
    let invstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + eps as f64).sqrt()).collect();
    let y = x.iter().enumerate().map(|(i, &v)| {
        let c = channel(shape, i);
        ((v as f64 - mean[c]) * invstd[c] * gamma[c] as f64 + beta[c] as f64) as f32
    });
    let [next_mean, next_var] =
        running_update(running_mean, running_var, &mean, &var, x.len() / shape[1].max(1), momentum);
    [
        y.collect(),
        mean.iter().map(|&v| v as f32).collect(),
        invstd.iter().map(|&v| v as f32).collect(),
        next_mean,
        next_var,
    ]
}

/// PyTorch's running-statistic update from a batch's per-channel `mean` and biased `var` over
/// `count` elements per channel: `(1 − momentum)·running + momentum·batch`, the variance
/// unbiased first. Returns the next running mean and variance.
pub fn running_update(
    running_mean: &[f32],
    running_var: &[f32],
    mean: &[f64],
    var: &[f64],
    count: usize,
    momentum: f32,
) -> [Vec<f32>; 2] {
    let unbiased = unbiased_factor(count);
    let m = momentum as f64;
    let next = |r: &[f32], b: &[f64], k: f64| -> Vec<f32> {
        r.iter().zip(b).map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b * k) as f32).collect()
    };
    [next(running_mean, mean, 1.0), next(running_var, var, unbiased)]
}

/// The gradient of training-mode batch norm from the saved batch mean and `invstd`:
/// `[dx, dγ, dβ]`.
pub fn batch_norm_grad(
    dy: &[f32],
    x: &[f32],
    shape: &[usize],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
) -> [Vec<f32>; 3] {
    let c = shape[1];
    let count = (x.len() / c.max(1)) as f64;
    let xhat = |i: usize| {
        let ch = channel(shape, i);
        (x[i] as f64 - mean[ch] as f64) * invstd[ch] as f64
    };
    let dbeta: Vec<f64> = channel_mean(dy, shape, |_, g| g as f64).into_iter().map(|v| v * count).collect();
    let dgamma: Vec<f64> = channel_mean(dy, shape, |i, g| g as f64 * xhat(i)).into_iter().map(|v| v * count).collect();
    let dx = dy.iter().enumerate().map(|(i, &g)| {
        let ch = channel(shape, i);
        (gamma[ch] as f64 * invstd[ch] as f64 / count * (count * g as f64 - dbeta[ch] - xhat(i) * dgamma[ch])) as f32
    });
    [dx.collect(), dgamma.iter().map(|&v| v as f32).collect(), dbeta.iter().map(|&v| v as f32).collect()]
}

/// For every output position of a 2-D max pool over `xs` (-inf padding), the flat input index of
/// the first maximum of its window in scan order (PyTorch's choice), in output order.
fn pool_argmax(x: &[f32], xs: &[usize], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> (Vec<usize>, Vec<usize>) {
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let oh = window_out(h, k[0], s[0], 1, p[0], p[2]);
    let ow = window_out(w, k[1], s[1], 1, p[1], p[3]);
    let mut at = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<usize> = None;
                for ky in 0..k[0] {
                    let Some(iy) = tap(oy, ky, s[0], 1, p[0], h) else { continue };
                    for kx in 0..k[1] {
                        let Some(ix) = tap(ox, kx, s[1], 1, p[1], w) else { continue };
                        let i = (plane * h + iy) * w + ix;
                        if best.is_none_or(|b| x[i] > x[b]) {
                            best = Some(i);
                        }
                    }
                }
                at.push(best.unwrap_or(usize::MAX));
            }
        }
    }
    (at, vec![n, c, oh, ow])
}

/// 2-D max pooling with -inf padding. Returns the output and its shape.
pub fn max_pool2d(x: &[f32], xs: &[usize], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> (Vec<f32>, Vec<usize>) {
    let (at, shape) = pool_argmax(x, xs, k, s, p);
    (at.iter().map(|&i| x.get(i).copied().unwrap_or(f32::NEG_INFINITY)).collect(), shape)
}

/// The gradient of [`max_pool2d`]: each output's gradient goes to its window's first maximum.
pub fn max_pool2d_grad(dy: &[f32], x: &[f32], xs: &[usize], k: [usize; 2], s: [usize; 2], p: [usize; 4]) -> Vec<f32> {
    let (at, _) = pool_argmax(x, xs, k, s, p);
    let mut dx = vec![0.0f32; x.len()];
    for (&i, &g) in at.iter().zip(dy) {
        if let Some(d) = dx.get_mut(i) {
            *d += g;
        }
    }
    dx
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
