//! Ultralytics' optimizer set-up and schedule: 'auto' choice, three parameter groups, SGD with
//! Nesterov (PyTorch's update) or AdamW, warm-up, linear or cosine decay, gradient clipping and
//! the model EMA.

use serde::{Deserialize, Serialize};
use slimc_ir::{Graph, Op, ParamKind, Tensor, ValueDef};
use std::collections::BTreeMap;

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// SGD with Nesterov momentum (dampening 0), L2 weight decay.
    Sgd,
    /// AdamW (eps 1e-8), decoupled weight decay.
    AdamW,
}

/// The resolved optimizer choice.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Choice {
    /// Update rule.
    pub rule: Rule,
    /// Initial learning rate of every group.
    pub lr: f64,
    /// SGD momentum, or AdamW's beta1.
    pub momentum: f64,
    /// Bias learning rate at the start of warm-up.
    pub warmup_bias_lr: f64,
}

/// Ultralytics' `build_optimizer`: `auto` picks SGD (lr 0.01, momentum 0.9) above 10k
/// iterations and AdamW (lr `round(0.002·5/(4+nc), 6)`, beta1 0.9) otherwise, and then starts
/// the bias warm-up at 0; an explicit choice uses `lr0` and `momentum`.
pub fn choose(
    name: &str,
    lr0: f64,
    momentum: f64,
    warmup_bias_lr: f64,
    iterations: usize,
    nc: usize,
) -> Result<Choice, String> {
    match name.to_ascii_lowercase().as_str() {
        "auto" => {
            let c = if iterations > 10000 {
                Choice { rule: Rule::Sgd, lr: 0.01, momentum: 0.9, warmup_bias_lr: 0.0 }
            } else {
                let lr = (0.002 * 5.0 / (4.0 + nc as f64) * 1e6).round() / 1e6;
                Choice { rule: Rule::AdamW, lr, momentum: 0.9, warmup_bias_lr: 0.0 }
            };
            Ok(c)
        }
        "sgd" => Ok(Choice { rule: Rule::Sgd, lr: lr0, momentum, warmup_bias_lr }),
        "adamw" => Ok(Choice { rule: Rule::AdamW, lr: lr0, momentum, warmup_bias_lr }),
        other => Err(format!("unknown optimizer `{other}` (auto, SGD, AdamW)")),
    }
}

/// Ultralytics' three parameter groups (`build_optimizer`'s g[2], g[0], g[1]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    /// Addends (conv biases, BN betas): no decay, the bias warm-up.
    Bias,
    /// Everything else that multiplies: decay.
    Weight,
    /// BN scales: no decay.
    Gamma,
}

impl ParamGroup {
    /// The index of the group's learning rate.
    fn index(self) -> usize {
        match self {
            ParamGroup::Bias => 0,
            ParamGroup::Weight => 1,
            ParamGroup::Gamma => 2,
        }
    }
}

/// The group of every trainable parameter of `g`, by its role in the graph rather than its
/// name: the bias of a conv and the shift of a BN are [`ParamGroup::Bias`], the scale of a BN
/// is [`ParamGroup::Gamma`], every other weight [`ParamGroup::Weight`].
pub fn param_groups(g: &Graph) -> BTreeMap<String, ParamGroup> {
    let mut out = BTreeMap::new();
    for &p in &g.params {
        if g.value(p).def == ValueDef::Param(ParamKind::Weight) {
            out.insert(g.value(p).name.clone(), ParamGroup::Weight);
        }
    }
    for n in &g.nodes {
        let roles: &[(usize, ParamGroup)] = match n.op {
            Op::Conv2d(_) => &[(2, ParamGroup::Bias)],
            Op::BatchNorm { .. } | Op::BatchNormTrain { .. } => &[(1, ParamGroup::Gamma), (2, ParamGroup::Bias)],
            _ => &[],
        };
        for &(slot, group) in roles {
            if let Some(v) = n.inputs.get(slot) {
                if let Some(e) = out.get_mut(&g.value(*v).name) {
                    *e = group;
                }
            }
        }
    }
    out
}

/// `lf(e)`: the learning-rate factor of epoch `e` of `epochs` (linear or cosine to `lrf`).
pub fn lr_factor(e: usize, epochs: usize, lrf: f64, cos: bool) -> f64 {
    let x = e as f64 / epochs as f64;
    if cos {
        ((1.0 - (x * std::f64::consts::PI).cos()) / 2.0) * (lrf - 1.0) + 1.0
    } else {
        (1.0 - x).max(0.0) * (1.0 - lrf) + lrf
    }
}

/// Ultralytics' warm-up length in iterations for `nb` batches per epoch: at least 100, and -1
/// (no warm-up) when `warmup_epochs` is 0.
pub fn warmup_iterations(warmup_epochs: f64, nb: usize) -> i64 {
    if warmup_epochs > 0.0 {
        ((warmup_epochs * nb as f64).round() as i64).max(100)
    } else {
        -1
    }
}

/// `np.interp` on two points.
pub fn interp(x: f64, x0: f64, x1: f64, y0: f64, y1: f64) -> f64 {
    if x <= x0 {
        y0
    } else if x >= x1 {
        y1
    } else {
        y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    }
}

/// How network slimming's L1 term `sr·|γ|` on BN gammas enters training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SrMode {
    /// The seed recipe's subgradient: `sr·sign(γ)` added to γ's gradient before the update.
    #[default]
    Subgradient,
    /// A proximal step after the update: γ ← sign(γ)·max(|γ| − η·sr, 0), with η the step size the
    /// optimizer applied to γ. Gammas the loss does not hold reach exact zeros.
    Proximal,
}

/// The proximal L1 step of [`SrMode::Proximal`] for one optimizer update.
#[derive(Clone, Copy, Debug)]
pub struct Prox<'a> {
    /// The BN gammas under the L1 term.
    pub gammas: &'a [String],
    /// The L1 rate.
    pub sr: f64,
    /// In each BN, this many gammas of largest magnitude are left alone, so no layer is ever
    /// zeroed whole: a layer of zero gammas outputs constants, which the next BN removes, and
    /// a BN reading constants gets no gradient, so fine-tuning could not revive the path.
    pub keep: usize,
}

/// Which elements of a BN's gammas the proximal step leaves alone: the `keep` largest by
/// magnitude (the first of equal ones).
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

/// Soft-thresholding, the proximal operator of `t·|x|`: `sign(x)·max(|x| − t, 0)`.
pub fn soft_threshold(x: f64, t: f64) -> f64 {
    x.signum() * (x.abs() - t).max(0.0)
}

/// The optimizer: per-group learning rate and momentum, per-parameter state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Optimizer {
    /// The rule and its constants.
    pub choice: Choice,
    /// Current learning rate of groups 0, 1, 2.
    pub lr: [f64; 3],
    /// Current SGD momentum (ramped during warm-up).
    pub momentum: f64,
    /// Weight decay of group 1.
    pub decay: f64,
    /// Steps taken (AdamW's bias correction).
    pub steps: u64,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(choice: Choice, decay: f64) -> Optimizer {
        Optimizer { choice, lr: [choice.lr; 3], momentum: choice.momentum, decay, steps: 0 }
    }

    /// One update of `params` from `grads`; `state` holds each parameter's buffers (momentum,
    /// or AdamW's two moments), created on first use. With `prox`, each of its gammas then takes
    /// the proximal L1 step [`soft_threshold`]`(γ, η·sr)`, where η is the step size this update
    /// applied to that element: the group's lr for SGD (whose step is lr times the Nesterov
    /// direction), and for AdamW the element's `lr / (sqrt(v̂) + eps)` (its step is that times
    /// the bias-corrected first moment m̂), so the threshold follows Adam's per-element scaling.
    pub fn step(
        &mut self,
        params: &mut BTreeMap<String, Tensor>,
        grads: &BTreeMap<String, Tensor>,
        state: &mut BTreeMap<String, Vec<f32>>,
        groups: &BTreeMap<String, ParamGroup>,
        prox: Option<Prox<'_>>,
    ) -> anyhow::Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (name, g) in grads {
            let grp = groups.get(name).copied().unwrap_or(ParamGroup::Weight);
            let lr = self.lr[grp.index()];
            let wd = if grp == ParamGroup::Weight { self.decay } else { 0.0 };
            let prox = prox.filter(|x| x.gammas.contains(name));
            let p = params.get_mut(name).ok_or_else(|| anyhow::anyhow!("no parameter {name}"))?.f32s_mut()?;
            let kept = kept_largest(p, prox.map_or(0, |x| x.keep));
            let sr = |i: usize| prox.filter(|_| !kept[i]).map(|x| x.sr);
            let g = g.f32s()?;
            match self.choice.rule {
                Rule::Sgd => {
                    let mu = self.momentum;
                    let first = !state.contains_key(name);
                    let buf = state.entry(name.clone()).or_insert_with(|| vec![0.0; p.len()]);
                    for i in 0..p.len() {
                        let d = g[i] as f64 + wd * p[i] as f64;
                        let b = if first { d } else { mu * buf[i] as f64 + d };
                        buf[i] = b as f32;
                        let w = p[i] as f64 - lr * (d + mu * b);
                        p[i] = sr(i).map_or(w, |sr| soft_threshold(w, lr * sr)) as f32;
                    }
                }
                Rule::AdamW => {
                    let (b1, b2, eps) = (self.choice.momentum, 0.999f64, 1e-8);
                    let mv = state.entry(name.clone()).or_insert_with(|| vec![0.0; 2 * p.len()]);
                    let (m, v) = mv.split_at_mut(p.len());
                    let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
                    for i in 0..p.len() {
                        let gi = g[i] as f64;
                        let mut w = p[i] as f64 * (1.0 - lr * wd);
                        let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
                        let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
                        m[i] = mi as f32;
                        v[i] = vi as f32;
                        let eta = lr / ((vi / c2).sqrt() + eps);
                        w -= eta * (mi / c1);
                        p[i] = sr(i).map_or(w, |sr| soft_threshold(w, eta * sr)) as f32;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Scales all gradients so that their global L2 norm is at most `max` (PyTorch's
/// `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max: f64) -> anyhow::Result<f64> {
    let mut sq = 0.0f64;
    for g in grads.values() {
        sq += g.f32s()?.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
    }
    let norm = sq.sqrt();
    let coef = max / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            g.f32s_mut()?.iter_mut().for_each(|v| *v = (*v as f64 * coef) as f32);
        }
    }
    Ok(norm)
}

/// Ultralytics' `ModelEMA`: `ema = d·ema + (1−d)·model` over weights and buffers with
/// `d = 0.9999·(1 − exp(−updates/2000))`.
#[derive(Clone, Debug)]
pub struct Ema {
    /// The averaged tensors.
    pub tensors: BTreeMap<String, Tensor>,
    /// Updates so far.
    pub updates: u64,
}

impl Ema {
    /// Folds the current model into the average.
    pub fn update(&mut self, model: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        self.updates += 1;
        let d = 0.9999 * (1.0 - (-(self.updates as f64) / 2000.0).exp());
        for (name, e) in self.tensors.iter_mut() {
            let m = model.get(name).ok_or_else(|| anyhow::anyhow!("EMA: no tensor {name}"))?.f32s()?;
            for (a, &b) in e.f32s_mut()?.iter_mut().zip(m) {
                *a = (d * *a as f64 + (1.0 - d) * b as f64) as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_rule_and_schedule_follow_ultralytics() {
        let c = choose("auto", 0.01, 0.937, 0.1, 120, 1).unwrap();
        assert_eq!((c.rule, c.lr, c.warmup_bias_lr), (Rule::AdamW, 0.002, 0.0));
        assert_eq!(choose("auto", 0.01, 0.937, 0.1, 120, 80).unwrap().lr, 0.000119);
        assert_eq!(choose("auto", 0.01, 0.937, 0.1, 184_900, 80).unwrap().rule, Rule::Sgd);
        assert!((lr_factor(0, 60, 0.01, false) - 1.0).abs() < 1e-12);
        assert!((lr_factor(30, 60, 0.01, false) - 0.505).abs() < 1e-12);
        assert!((lr_factor(60, 60, 0.01, true) - 0.01).abs() < 1e-12);
        // nw = max(round(warmup_epochs·nb), 100) if warmup_epochs > 0 else -1.
        assert_eq!(warmup_iterations(3.0, 12), 100);
        assert_eq!(warmup_iterations(3.0, 1000), 3000);
        assert_eq!(warmup_iterations(0.0, 1000), -1);
    }

    #[test]
    fn sgd_nesterov_matches_pytorch_by_hand() {
        // p = 1, g = 0.5, lr 0.1, mu 0.9, wd 0.01 (group 1): d = 0.51; buf = 0.51;
        // p = 1 − 0.1·(0.51 + 0.9·0.51) = 0.9031. Second step with g = 0.5: d = 0.5 + 0.01·0.9031,
        // buf = 0.9·0.51 + d, p −= 0.1·(d + 0.9·buf).
        let choice = Choice { rule: Rule::Sgd, lr: 0.1, momentum: 0.9, warmup_bias_lr: 0.0 };
        let mut opt = Optimizer::new(choice, 0.01);
        let mut params = BTreeMap::from([("w".to_string(), Tensor::from_f32(vec![1], vec![1.0]).unwrap())]);
        let grads = BTreeMap::from([("w".to_string(), Tensor::from_f32(vec![1], vec![0.5]).unwrap())]);
        let mut state = BTreeMap::new();
        opt.step(&mut params, &grads, &mut state, &BTreeMap::new(), None).unwrap();
        assert!((params["w"].f32s().unwrap()[0] - 0.9031).abs() < 1e-6);
        opt.step(&mut params, &grads, &mut state, &BTreeMap::new(), None).unwrap();
        let d = 0.5 + 0.01 * 0.9031f64;
        let buf = 0.9 * 0.51 + d;
        let want = 0.9031 - 0.1 * (d + 0.9 * buf);
        assert!((params["w"].f32s().unwrap()[0] as f64 - want).abs() < 1e-6);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_and_decays() {
        let choice = Choice { rule: Rule::AdamW, lr: 0.01, momentum: 0.9, warmup_bias_lr: 0.0 };
        let mut opt = Optimizer::new(choice, 0.1);
        let mut params = BTreeMap::from([("w".to_string(), Tensor::from_f32(vec![2], vec![1.0, -2.0]).unwrap())]);
        let grads = BTreeMap::from([("w".to_string(), Tensor::from_f32(vec![2], vec![3.0, -0.001]).unwrap())]);
        opt.step(&mut params, &grads, &mut BTreeMap::new(), &BTreeMap::new(), None).unwrap();
        // Bias-corrected first step is lr·sign(g) (up to eps), after the decoupled decay.
        let p = params["w"].f32s().unwrap();
        assert!((p[0] as f64 - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6);
        assert!((p[1] as f64 - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-5);
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
        let gammas = ["bn.weight".to_string()];
        let groups = BTreeMap::from([(gammas[0].clone(), ParamGroup::Gamma)]);
        let choice = Choice { rule: Rule::Sgd, lr: 0.1, momentum: 0.9, warmup_bias_lr: 0.0 };
        let mut opt = Optimizer::new(choice, 0.0005);
        let mut params =
            BTreeMap::from([(gammas[0].clone(), Tensor::from_f32(vec![3], vec![0.0105, -0.0105, 0.5]).unwrap())]);
        let grads = BTreeMap::from([(gammas[0].clone(), Tensor::from_f32(vec![3], vec![0.0; 3]).unwrap())]);
        let mut state = BTreeMap::new();
        let prox = Some(Prox { gammas: &gammas, sr: 0.01, keep: 0 });
        for _ in 0..10 {
            opt.step(&mut params, &grads, &mut state, &groups, prox).unwrap();
        }
        let p = params[&gammas[0]].f32s().unwrap().to_vec();
        assert!((p[0] - 0.0005).abs() < 1e-6 && (p[1] + 0.0005).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.49).abs() < 1e-6, "{p:?}");
        opt.step(&mut params, &grads, &mut state, &groups, prox).unwrap();
        let p = params[&gammas[0]].f32s().unwrap();
        assert_eq!((p[0], p[1]), (0.0, 0.0));
        // AdamW with a constant gradient g: the update moves γ by lr·g/(|g| + eps) ≈ lr and the
        // threshold is lr·sr/(|g| + eps); with g = sr both are lr, so γ = 0.0105 at lr 0.001
        // falls by 0.002 a step and is exactly 0 after ceil(0.0105 / 0.002) = 6 steps.
        let choice = Choice { rule: Rule::AdamW, lr: 0.001, momentum: 0.9, warmup_bias_lr: 0.0 };
        let mut opt = Optimizer::new(choice, 0.0);
        let mut params = BTreeMap::from([(gammas[0].clone(), Tensor::from_f32(vec![1], vec![0.0105]).unwrap())]);
        let grads = BTreeMap::from([(gammas[0].clone(), Tensor::from_f32(vec![1], vec![0.01]).unwrap())]);
        let mut state = BTreeMap::new();
        for step in 1..=6 {
            opt.step(&mut params, &grads, &mut state, &groups, prox).unwrap();
            let g = params[&gammas[0]].f32s().unwrap()[0] as f64;
            let want = (0.0105 - 0.002 * step as f64).max(0.0);
            assert!((g - want).abs() < 1e-7, "step {step}: {g} vs {want}");
        }
        assert_eq!(params[&gammas[0]].f32s().unwrap()[0], 0.0);
    }

    #[test]
    fn proximal_keep_leaves_each_bns_largest_gammas_alone() {
        // SGD, zero gradient, lr 0.1, sr 0.01: each step shrinks an unprotected |γ| by 0.001.
        let gammas = ["bn.weight".to_string()];
        let groups = BTreeMap::from([(gammas[0].clone(), ParamGroup::Gamma)]);
        let choice = Choice { rule: Rule::Sgd, lr: 0.1, momentum: 0.9, warmup_bias_lr: 0.0 };
        let mut opt = Optimizer::new(choice, 0.0);
        let mut params = BTreeMap::from([(
            gammas[0].clone(),
            Tensor::from_f32(vec![4], vec![0.004, -0.005, 0.003, 0.002]).unwrap(),
        )]);
        let grads = BTreeMap::from([(gammas[0].clone(), Tensor::from_f32(vec![4], vec![0.0; 4]).unwrap())]);
        let mut state = BTreeMap::new();
        let prox = Some(Prox { gammas: &gammas, sr: 0.01, keep: 1 });
        for _ in 0..10 {
            opt.step(&mut params, &grads, &mut state, &groups, prox).unwrap();
        }
        // The largest, -0.005, is untouched; the others reach exactly 0.
        assert_eq!(params[&gammas[0]].f32s().unwrap(), &[0.0, -0.005, 0.0, 0.0]);
    }

    #[test]
    fn clipping_and_ema() {
        let mut g = BTreeMap::from([("a".to_string(), Tensor::from_f32(vec![2], vec![30.0, 40.0]).unwrap())]);
        assert!((clip_grad_norm(&mut g, 10.0).unwrap() - 50.0).abs() < 1e-9);
        assert!((g["a"].f32s().unwrap()[0] - 6.0).abs() < 1e-4);
        let mut ema = Ema { tensors: BTreeMap::from([("a".to_string(), Tensor::scalar(0.0))]), updates: 0 };
        ema.update(&BTreeMap::from([("a".to_string(), Tensor::scalar(1.0))])).unwrap();
        let d = 0.9999 * (1.0 - (-1.0f64 / 2000.0).exp());
        assert!((ema.tensors["a"].f32s().unwrap()[0] as f64 - (1.0 - d)).abs() < 1e-7);
    }
}
