//! The optimizer's ops: gradient accumulation, the global gradient norm and PyTorch's
//! `clip_grad_norm_`, SGD with Nesterov momentum and AdamW (PyTorch's updates) with network
//! slimming's proximal L1 step, and Ultralytics' model EMA. Arithmetic is in f64 on f32 storage;
//! elementwise loops run in parallel chunks (each element's result does not depend on the split).

use crate::layout::sized;
use crate::{op::Update, step_scalars as s};
use rayon::prelude::*;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// `out = x`, in parallel chunks, reusing `out`'s allocation.
fn copy_into(out: &mut Vec<f32>, x: &[f32]) {
    sized(out, x.len()).par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| o.copy_from_slice(x));
}

/// [`crate::Op::Accumulate`]: the sum (`g` alone when `FRESH` is set) and the accumulator's next
/// value (zeros when `STEP` is set).
pub fn accumulate(acc: &[f32], g: &[f32], scalars: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut sum, mut next) = (vec![], vec![]);
    accumulate_into(acc, g, scalars, [&mut sum, &mut next]);
    (sum, next)
}

/// [`accumulate`] into reused buffers.
pub fn accumulate_into(acc: &[f32], g: &[f32], scalars: &[f32], [sum, next]: [&mut Vec<f32>; 2]) {
    let (fresh, step) = (scalars[s::FRESH] != 0.0, scalars[s::STEP] != 0.0);
    if fresh {
        copy_into(sum, g);
    } else {
        let dst = sized(sum, g.len());
        dst.par_chunks_mut(CHUNK).zip(acc.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
            o.iter_mut().zip(a).zip(b).for_each(|((o, a), b)| *o = a + b);
        });
    }
    if step {
        sized(next, g.len()).par_chunks_mut(CHUNK).for_each(|o| o.fill(0.0));
    } else {
        copy_into(next, sum);
    }
}

/// For an update whose step flag is off (operands `inputs`), the operand each result equals:
/// the update leaves the parameter and its state as they are, so a backend may hand the
/// operands on instead of computing. None for other ops, or when the update steps.
pub fn idle_results<'a>(
    op: &crate::Op,
    inputs: impl Fn(usize) -> Option<&'a crate::Tensor>,
) -> Option<&'static [usize]> {
    use crate::Op;
    let (scalars, results): (usize, &'static [usize]) = match op {
        Op::SgdUpdate(_) => (3, &[0, 4]),
        Op::AdamWUpdate(_) => (3, &[0, 4, 5]),
        Op::EmaUpdate => (2, &[0]),
        // Every other op computes its results (the accumulator changes whether or not the
        // optimizer steps).
        Op::Accumulate | Op::GlobalNorm | Op::AllReduce | Op::Broadcast(_) => return None,
        Op::Unary(_) | Op::UnaryGrad(_) | Op::Binary(_) | Op::Conv2d(_) | Op::BatchNorm(_) | Op::Concat(_) => {
            return None
        }
        Op::Split(_) | Op::Slice(_) | Op::MaxPool2d(_) | Op::UpsampleNearest(_) | Op::Reshape(_) => return None,
        Op::Transpose(_) | Op::MatMul | Op::Softmax(_) | Op::Anchors(_) | Op::DetectLoss(_) | Op::SumTo => return None,
        Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) | Op::BatchNormTrain(_) | Op::BatchNormGrad => return None,
        Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) | Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) => return None,
        Op::DetectLossGrad(_) | Op::DistillLoss(_) | Op::DistillLossGrad(_) => return None,
    };
    let step = inputs(scalars)?.f32s().ok()?.get(s::STEP)?;
    (*step == 0.0).then_some(results)
}

/// [`crate::Op::GlobalNorm`]: `sqrt(Σ x²)` over every part, each part summed in order in f64 and
/// the parts added in order.
pub fn global_norm(parts: &[&[f32]]) -> f32 {
    let sums: Vec<f64> = parts.par_iter().map(|p| p.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).collect();
    sums.iter().sum::<f64>().sqrt() as f32
}

/// The factor `clip_grad_norm_` scales gradients by: `max / (norm + 1e-6)` when below 1.
fn clip_coef(norm: f32, max_norm: f32) -> Option<f64> {
    let coef = max_norm as f64 / (norm as f64 + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef)
}

/// Soft-thresholding, the proximal operator of `t·|x|`: `sign(x)·max(|x| − t, 0)`.
pub fn soft_threshold(x: f64, t: f64) -> f64 {
    x.signum() * (x.abs() - t).max(0.0)
}

/// Which entries the proximal step leaves alone: the `keep` largest by magnitude (the first of
/// equal ones).
fn kept_largest(p: &[f32], keep: usize) -> Vec<bool> {
    let mut out = vec![false; p.len()];
    if keep > 0 {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].abs().total_cmp(&p[a].abs()).then(a.cmp(&b)));
        for &i in order.iter().take(keep) {
            out[i] = true;
        }
    }
    out
}

/// What every update shares: the group's learning rate, the clipped gradient and the proximal
/// step.
struct Common<'a> {
    lr: f64,
    g: &'a [f32],
    coef: Option<f64>,
    /// The L1 rate where the proximal step applies (`None`: it does not).
    sr: Option<f64>,
    /// The elements the proximal step leaves alone (empty without it).
    kept: Vec<bool>,
}

impl Common<'_> {
    fn new<'a>(p: &[f32], g: &'a [f32], norm: f32, scalars: &[f32], u: &Update) -> Common<'a> {
        Common {
            lr: scalars[s::LR + u.group] as f64,
            g,
            coef: clip_coef(norm, u.max_norm),
            sr: u.prox.map(|_| scalars[s::SR] as f64),
            kept: u.prox.map(|keep| kept_largest(p, keep)).unwrap_or_default(),
        }
    }
    /// The gradient of element `i` after clipping (rounded to f32 as the clipped gradient is
    /// stored).
    fn grad(&self, i: usize) -> f64 {
        match self.coef {
            Some(c) => (self.g[i] as f64 * c) as f32 as f64,
            None => self.g[i] as f64,
        }
    }
    /// The proximal step for element `i` of a parameter the update moved to `w` with step size
    /// `eta`.
    fn prox(&self, i: usize, w: f64, eta: f64) -> f32 {
        match self.sr {
            Some(sr) if !self.kept[i] => soft_threshold(w, eta * sr) as f32,
            _ => w as f32,
        }
    }
}

/// Runs `f(i)` for every element, in parallel chunks, writing element `i` of each output (each
/// resized to `n`).
fn each_element<const K: usize>(outs: [&mut Vec<f32>; K], n: usize, f: impl Fn(usize) -> [f32; K] + Sync) {
    let mut chunks: Vec<Vec<&mut [f32]>> = (0..n.div_ceil(CHUNK)).map(|_| Vec::with_capacity(K)).collect();
    for o in outs {
        for (c, part) in sized(o, n).chunks_mut(CHUNK).enumerate() {
            chunks[c].push(part);
        }
    }
    chunks.into_par_iter().enumerate().for_each(|(c, mut parts)| {
        for j in 0..parts[0].len() {
            let r = f(c * CHUNK + j);
            for (k, v) in r.into_iter().enumerate() {
                parts[k][j] = v;
            }
        }
    });
}

/// Buffers for the results of an op computed by allocation.
fn fresh<const K: usize>() -> [Vec<f32>; K] {
    std::array::from_fn(|_| vec![])
}

/// [`crate::Op::SgdUpdate`]: PyTorch's SGD with Nesterov momentum (dampening 0; the buffer
/// starts at zero, so the first step's buffer is the gradient) and L2 decay, then the proximal
/// step with step size lr. Returns the next parameter and buffer.
pub fn sgd_update(p: &[f32], g: &[f32], norm: f32, scalars: &[f32], buf: &[f32], u: &Update) -> [Vec<f32>; 2] {
    let mut outs = fresh();
    let [a, b] = &mut outs;
    sgd_update_into(p, g, norm, scalars, buf, u, [a, b]);
    outs
}

/// [`sgd_update`] into reused buffers.
pub fn sgd_update_into(
    p: &[f32],
    g: &[f32],
    norm: f32,
    scalars: &[f32],
    buf: &[f32],
    u: &Update,
    outs: [&mut Vec<f32>; 2],
) {
    if scalars[s::STEP] == 0.0 {
        let [op, ob] = outs;
        copy_into(op, p);
        copy_into(ob, buf);
        return;
    }
    let c = Common::new(p, g, norm, scalars, u);
    let (mu, wd) = (scalars[s::MOMENTUM] as f64, u.weight_decay as f64);
    each_element(outs, p.len(), |i| {
        let d = c.grad(i) + wd * p[i] as f64;
        let b = mu * buf[i] as f64 + d;
        let w = p[i] as f64 - c.lr * (d + mu * b);
        [c.prox(i, w, c.lr), b as f32]
    })
}

/// [`crate::Op::AdamWUpdate`]: PyTorch's AdamW (β2 0.999, ε 1e-8, bias corrections from the step
/// scalars), then the proximal step with each element's own step size `lr / (sqrt(v̂) + ε)` (the
/// update moves the element by that times m̂, so the threshold follows Adam's per-element
/// scaling). Returns the next parameter and moments.
pub fn adamw_update(
    p: &[f32],
    g: &[f32],
    norm: f32,
    scalars: &[f32],
    moments: [&[f32]; 2],
    u: &Update,
) -> [Vec<f32>; 3] {
    let mut outs = fresh();
    let [a, b, c] = &mut outs;
    adamw_update_into(p, g, norm, scalars, moments, u, [a, b, c]);
    outs
}

/// [`adamw_update`] into reused buffers.
pub fn adamw_update_into(
    p: &[f32],
    g: &[f32],
    norm: f32,
    scalars: &[f32],
    [m, v]: [&[f32]; 2],
    u: &Update,
    outs: [&mut Vec<f32>; 3],
) {
    if scalars[s::STEP] == 0.0 {
        let [op, om, ov] = outs;
        copy_into(op, p);
        copy_into(om, m);
        copy_into(ov, v);
        return;
    }
    let c = Common::new(p, g, norm, scalars, u);
    let (b1, b2, eps, wd) = (u.beta1 as f64, 0.999f64, 1e-8, u.weight_decay as f64);
    // The bias corrections' reciprocals: one division per element fewer each.
    let (r1, r2) = (1.0 / scalars[s::ADAM_C1] as f64, 1.0 / scalars[s::ADAM_C2] as f64);
    each_element(outs, p.len(), |i| {
        let gi = c.grad(i);
        let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
        let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
        let eta = c.lr / ((vi * r2).sqrt() + eps);
        let w = p[i] as f64 * (1.0 - c.lr * wd) - eta * (mi * r1);
        [c.prox(i, w, eta), mi as f32, vi as f32]
    })
}

/// [`crate::Op::EmaUpdate`]: `d·ema + (1 − d)·x` when `STEP` is set.
pub fn ema_update(ema: &[f32], x: &[f32], scalars: &[f32]) -> Vec<f32> {
    let mut out = vec![];
    ema_update_into(ema, x, scalars, &mut out);
    out
}

/// [`ema_update`] into a reused buffer.
pub fn ema_update_into(ema: &[f32], x: &[f32], scalars: &[f32], out: &mut Vec<f32>) {
    if scalars[s::STEP] == 0.0 {
        return copy_into(out, ema);
    }
    let (d, rest) = (scalars[s::EMA_DECAY] as f64, scalars[s::EMA_REST] as f64);
    each_element([out], ema.len(), |i| [(d * ema[i] as f64 + rest * x[i] as f64) as f32]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Step scalars with every group at `lr`, momentum `mu`, L1 rate `sr`, stepping.
    fn scalars(lr: f32, mu: f32, sr: f32) -> Vec<f32> {
        let mut v = vec![0.0; s::LEN];
        v[s::LR..s::LR + 3].fill(lr);
        (v[s::MOMENTUM], v[s::SR], v[s::STEP], v[s::ADAM_C1], v[s::ADAM_C2]) = (mu, sr, 1.0, 1.0, 1.0);
        v
    }

    fn update(weight_decay: f32, prox: Option<usize>, beta1: f32) -> Update {
        Update { group: 1, weight_decay, max_norm: 0.0, prox, beta1 }
    }

    /// AdamW's bias corrections for step `t` at β1 0.9.
    fn adam_step(v: &mut [f32], t: i32) {
        v[s::ADAM_C1] = (1.0 - (0.9f32 as f64).powi(t)) as f32;
        v[s::ADAM_C2] = (1.0 - 0.999f64.powi(t)) as f32;
    }

    #[test]
    fn sgd_nesterov_matches_pytorch_by_hand() {
        // p = 1, g = 0.5, lr 0.1, mu 0.9, wd 0.01: d = 0.51; buf = 0.51;
        // p = 1 − 0.1·(0.51 + 0.9·0.51) = 0.9031. Second step with g = 0.5: d = 0.5 + 0.01·0.9031,
        // buf = 0.9·0.51 + d, p −= 0.1·(d + 0.9·buf).
        let (sc, u) = (scalars(0.1, 0.9, 0.0), update(0.01, None, 0.0));
        let [p, b] = sgd_update(&[1.0], &[0.5], 0.5, &sc, &[0.0], &u);
        assert!((p[0] - 0.9031).abs() < 1e-6 && (b[0] - 0.51).abs() < 1e-7);
        let [p2, _] = sgd_update(&p, &[0.5], 0.5, &sc, &b, &u);
        let d = 0.5 + 0.01 * 0.9031f64;
        let buf = 0.9 * 0.51 + d;
        assert!((p2[0] as f64 - (0.9031 - 0.1 * (d + 0.9 * buf))).abs() < 1e-6);
        // The step flag off: nothing moves.
        let mut off = sc.clone();
        off[s::STEP] = 0.0;
        assert_eq!(sgd_update(&p, &[0.5], 0.5, &off, &b, &u), [p.clone(), b.clone()]);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_and_decays() {
        let mut sc = scalars(0.01, 0.0, 0.0);
        adam_step(&mut sc, 1);
        let [p, m, v] =
            adamw_update(&[1.0, -2.0], &[3.0, -0.001], 3.0, &sc, [&[0.0; 2], &[0.0; 2]], &update(0.1, None, 0.9));
        // Bias-corrected first step is lr·sign(g) (up to eps), after the decoupled decay.
        assert!((p[0] as f64 - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6);
        assert!((p[1] as f64 - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-5);
        assert!((m[0] - 0.3).abs() < 1e-6 && (v[0] - 0.009).abs() < 1e-6);
    }

    #[test]
    fn soft_threshold_is_the_l1_proximal_operator() {
        assert_eq!(soft_threshold(0.5, 0.2), 0.3);
        assert_eq!(soft_threshold(-0.5, 0.2), -0.3);
        assert_eq!(soft_threshold(0.1, 0.2), 0.0);
        assert_eq!(soft_threshold(-0.1, 0.2), 0.0);
        assert_eq!(soft_threshold(0.0, 0.2), 0.0);
        // It minimises t·|y| + (y − x)²/2: no nearby point does better.
        for &(x, t) in &[(0.7, 0.25), (-0.3, 0.1), (0.05, 0.2)] {
            let f = |y: f64| t * y.abs() + (y - x) * (y - x) / 2.0;
            let y = soft_threshold(x, t);
            for d in [-1e-3, 1e-3] {
                assert!(f(y) <= f(y + d) + 1e-15, "x {x} t {t}");
            }
        }
    }

    #[test]
    fn proximal_gammas_held_by_no_loss_reach_exact_zero() {
        // SGD, zero gradient: momentum stays 0, so each step only shrinks |γ| by lr·sr.
        // From γ = ±0.0105 with lr 0.1, sr 0.01 (0.001 a step): 10 steps leave 0.0005, the 11th 0.
        let (sc, u) = (scalars(0.1, 0.9, 0.01), update(0.0, Some(0), 0.0));
        let (mut p, mut b) = (vec![0.0105, -0.0105, 0.5], vec![0.0; 3]);
        for _ in 0..10 {
            [p, b] = sgd_update(&p, &[0.0; 3], 0.0, &sc, &b, &u);
        }
        assert!((p[0] - 0.0005).abs() < 1e-6 && (p[1] + 0.0005).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.49).abs() < 1e-6, "{p:?}");
        [p, _] = sgd_update(&p, &[0.0; 3], 0.0, &sc, &b, &u);
        assert_eq!((p[0], p[1]), (0.0, 0.0));
        // AdamW with a constant gradient g: the update moves γ by lr·g/(|g| + eps) ≈ lr and the
        // threshold is lr·sr/(|g| + eps); with g = sr both are lr, so γ = 0.0105 at lr 0.001
        // falls by 0.002 a step and is exactly 0 after ceil(0.0105 / 0.002) = 6 steps.
        let mut sc = scalars(0.001, 0.0, 0.01);
        let u = update(0.0, Some(0), 0.9);
        let (mut p, mut m, mut v) = (vec![0.0105f32], vec![0.0], vec![0.0]);
        for step in 1..=6 {
            adam_step(&mut sc, step);
            [p, m, v] = adamw_update(&p, &[0.01], 0.01, &sc, [&m, &v], &u);
            let want = (0.0105 - 0.002 * step as f64).max(0.0);
            assert!((p[0] as f64 - want).abs() < 1e-7, "step {step}: {} vs {want}", p[0]);
        }
        assert_eq!(p[0], 0.0);
    }

    #[test]
    fn proximal_keep_leaves_each_bns_largest_gammas_alone() {
        let (sc, u) = (scalars(0.1, 0.9, 0.01), update(0.0, Some(1), 0.0));
        let (mut p, mut b) = (vec![0.004, -0.005, 0.003, 0.002], vec![0.0; 4]);
        for _ in 0..10 {
            [p, b] = sgd_update(&p, &[0.0; 4], 0.0, &sc, &b, &u);
        }
        // The largest, -0.005, is untouched; the others reach exactly 0.
        assert_eq!(p, [0.0, -0.005, 0.0, 0.0]);
    }

    #[test]
    fn clipping_accumulation_and_ema() {
        // |(30, 40)| = 50 > 10: the update uses the gradient times 10/50 (lr 1, SGD without momentum).
        assert_eq!(global_norm(&[&[30.0], &[40.0]]), 50.0);
        let u = Update { max_norm: 10.0, ..update(0.0, None, 0.0) };
        let [p, _] = sgd_update(&[0.0, 0.0], &[30.0, 40.0], 50.0, &scalars(1.0, 0.0, 0.0), &[0.0; 2], &u);
        assert!((p[0] + 6.0).abs() < 1e-4 && (p[1] + 8.0).abs() < 1e-4, "{p:?}");
        // Below the threshold the gradient is used as it is.
        let [p, _] = sgd_update(&[0.0], &[3.0], 3.0, &scalars(1.0, 0.0, 0.0), &[0.0], &u);
        assert_eq!(p[0], -3.0);
        // Accumulation: a fresh micro-batch starts from its own gradient; a step empties it.
        let mut sc = scalars(0.0, 0.0, 0.0);
        (sc[s::STEP], sc[s::FRESH]) = (0.0, 1.0);
        assert_eq!(accumulate(&[5.0], &[1.0], &sc), (vec![1.0], vec![1.0]));
        (sc[s::STEP], sc[s::FRESH]) = (1.0, 0.0);
        assert_eq!(accumulate(&[5.0], &[1.0], &sc), (vec![6.0], vec![0.0]));
        // EMA: d·ema + (1 − d)·x on steps only.
        (sc[s::EMA_DECAY], sc[s::EMA_REST]) = (0.9, 0.1);
        assert!((ema_update(&[1.0], &[3.0], &sc)[0] - 1.2).abs() < 1e-6);
        sc[s::STEP] = 0.0;
        assert_eq!(ema_update(&[1.0], &[3.0], &sc), [1.0]);
    }
}
