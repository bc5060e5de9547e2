//! Ultralytics' optimizer set-up and schedule on the host: the 'auto' choice, warm-up, linear
//! or cosine decay, the EMA decay, and the step scalars each micro-batch gives the training
//! program. The updates themselves are IR ops the `optimizer` pass appends
//! (`slimc_ir::eval::optim` defines them).

use super::config::TrainConfig;
use serde::{Deserialize, Serialize};
use slimc_ir::{step_scalars as s, Tensor};
use slimc_passes::UpdateRule;

/// The resolved optimizer choice.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Choice {
    /// Update rule.
    pub rule: UpdateRule,
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
                Choice { rule: UpdateRule::Sgd, lr: 0.01, momentum: 0.9, warmup_bias_lr: 0.0 }
            } else {
                let lr = (0.002 * 5.0 / (4.0 + nc as f64) * 1e6).round() / 1e6;
                Choice { rule: UpdateRule::AdamW, lr, momentum: 0.9, warmup_bias_lr: 0.0 }
            };
            Ok(c)
        }
        "sgd" => Ok(Choice { rule: UpdateRule::Sgd, lr: lr0, momentum, warmup_bias_lr }),
        "adamw" => Ok(Choice { rule: UpdateRule::AdamW, lr: lr0, momentum, warmup_bias_lr }),
        other => Err(format!("unknown optimizer `{other}` (auto, SGD, AdamW)")),
    }
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

/// The optimizer's schedule: the rule, the current learning rate of each group and momentum,
/// and the steps taken (the per-parameter state lives in the training program).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Schedule {
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

impl Schedule {
    /// A fresh schedule.
    pub fn new(choice: Choice, decay: f64) -> Schedule {
        Schedule { choice, lr: [choice.lr; 3], momentum: choice.momentum, decay, steps: 0 }
    }

    /// The update rule.
    pub fn rule(&self) -> UpdateRule {
        self.choice.rule
    }

    /// AdamW's β1 as the `optimizer` pass takes it: the choice's momentum.
    pub fn beta1(&self) -> f32 {
        self.choice.momentum as f32
    }

    /// The start of epoch `epoch`: every group's learning rate set to the decayed base rate,
    /// which it returns (warm-up ramps toward it).
    pub fn start_epoch(&mut self, epoch: usize, cfg: &TrainConfig) -> f64 {
        let base = self.choice.lr * lr_factor(epoch, cfg.epochs, cfg.lrf, cfg.cos_lr);
        self.lr = [base; 3];
        base
    }

    /// Warm-up at iteration `ni` of `nw`: the learning rates ramp from their start (the bias
    /// group's from `warmup_bias_lr`, the others' from 0) to `base`, SGD's momentum from
    /// `warmup_momentum`; returns the micro-batches per optimizer step, ramped from 1 to the
    /// nominal batch's.
    pub fn warm_up(&mut self, ni: i64, nw: i64, base: f64, cfg: &TrainConfig) -> usize {
        let x = ni as f64;
        let accumulate = (interp(x, 0.0, nw as f64, 1.0, cfg.nbs as f64 / cfg.batch as f64).round() as usize).max(1);
        for g in 0..3 {
            let start = if g == 0 { self.choice.warmup_bias_lr } else { 0.0 };
            self.lr[g] = interp(x, 0.0, nw as f64, start, base);
        }
        if self.choice.rule == UpdateRule::Sgd {
            self.momentum = interp(x, 0.0, nw as f64, cfg.warmup_momentum, cfg.momentum);
        }
        accumulate
    }

    /// The step scalars ([`slimc_ir::step_scalars`]) of one micro-batch: the current learning
    /// rates and momentum, the L1 rate `sr`, whether this micro-batch steps (then `steps` and
    /// `ema_updates` already count this step) and whether the accumulator starts afresh (the run's first micro-batch).
    pub fn scalars(&self, step: bool, fresh: bool, sr: f32, ema_updates: u64) -> Tensor {
        let mut v = vec![0.0f32; s::LEN];
        for g in 0..3 {
            v[s::LR + g] = self.lr[g] as f32;
        }
        v[s::MOMENTUM] = self.momentum as f32;
        v[s::SR] = sr;
        let d = ema_decay(ema_updates);
        v[s::EMA_DECAY] = d as f32;
        v[s::EMA_REST] = (1.0 - d) as f32;
        v[s::STEP] = step as u8 as f32;
        v[s::FRESH] = fresh as u8 as f32;
        // The bias corrections use β1 as the program holds it (f32).
        let t = self.steps.max(1) as i32;
        v[s::ADAM_C1] = (1.0 - (self.choice.momentum as f32 as f64).powi(t)) as f32;
        v[s::ADAM_C2] = (1.0 - 0.999f64.powi(t)) as f32;
        Tensor::from_f32(vec![s::LEN], v).expect("LEN values")
    }
}

/// Ultralytics' `ModelEMA` decay after `updates` updates: `0.9999·(1 − exp(−updates/2000))`.
pub fn ema_decay(updates: u64) -> f64 {
    0.9999 * (1.0 - (-(updates as f64) / 2000.0).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_rule_and_schedule_follow_ultralytics() {
        let c = choose("auto", 0.01, 0.937, 0.1, 120, 1).unwrap();
        assert_eq!((c.rule, c.lr, c.warmup_bias_lr), (UpdateRule::AdamW, 0.002, 0.0));
        assert_eq!(choose("auto", 0.01, 0.937, 0.1, 120, 80).unwrap().lr, 0.000119);
        assert_eq!(choose("auto", 0.01, 0.937, 0.1, 184_900, 80).unwrap().rule, UpdateRule::Sgd);
        assert!((lr_factor(0, 60, 0.01, false) - 1.0).abs() < 1e-12);
        assert!((lr_factor(30, 60, 0.01, false) - 0.505).abs() < 1e-12);
        assert!((lr_factor(60, 60, 0.01, true) - 0.01).abs() < 1e-12);
        // nw = max(round(warmup_epochs·nb), 100) if warmup_epochs > 0 else -1.
        assert_eq!(warmup_iterations(3.0, 12), 100);
        assert_eq!(warmup_iterations(3.0, 1000), 3000);
        assert_eq!(warmup_iterations(0.0, 1000), -1);
    }
}
