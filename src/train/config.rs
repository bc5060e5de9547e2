//! A training run's settings ([`TrainConfig`]): Ultralytics' names and defaults, checked before
//! any work, saved with the run so that `--resume` continues it.

use crate::data::augment::Hyp;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use slimc_passes::SrMode;
use std::path::PathBuf;

/// Every setting of a training run (saved with the run so that `--resume` continues it), with
/// Ultralytics' names and defaults; `slimc train`'s options set them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Dataset YAML (path, train, val, names); required unless resuming.
    pub data: Option<PathBuf>,
    /// Epochs.
    pub epochs: usize,
    /// Training image size (the model argument's --imgsz, rounded up to a multiple of 32).
    pub imgsz: usize,
    /// Batch size.
    pub batch: usize,
    /// auto, SGD or AdamW.
    pub optimizer: String,
    /// Initial learning rate (SGD/AdamW; auto picks its own).
    pub lr0: f64,
    /// Final learning rate as a fraction of lr0.
    pub lrf: f64,
    /// SGD momentum / AdamW beta1 (explicit optimizers).
    pub momentum: f64,
    /// Weight decay at the nominal batch.
    pub weight_decay: f64,
    /// Warm-up length in epochs (at least 100 iterations; 0 turns warm-up off).
    pub warmup_epochs: f64,
    /// SGD momentum at the start of warm-up.
    pub warmup_momentum: f64,
    /// Bias learning rate at the start of warm-up (explicit optimizers; auto starts at 0).
    pub warmup_bias_lr: f64,
    /// Cosine instead of linear learning-rate decay.
    pub cos_lr: bool,
    /// Final epochs trained without mosaic.
    pub close_mosaic: usize,
    /// Nominal batch size: gradients accumulate to it.
    pub nbs: usize,
    /// Seed of shuffling and augmentation (the model argument's --seed).
    pub seed: u64,
    /// Keep decoded images in RAM.
    pub cache: bool,
    /// Network slimming: L1 rate on BN gammas, applied once per optimizer step (0: off).
    pub sr: f32,
    /// Which BN gammas the L1 term (and the sparsity share) covers: all, or seed (those the
    /// YOLOv11-Prune recipe penalises).
    pub sr_scope: String,
    /// Decay the L1 rate linearly from sr to 0.1·sr over the epochs (the seed recipe's schedule).
    pub sr_decay: bool,
    /// How the L1 term acts: subgradient (the seed recipe: sr·sign(γ) added to the gradient) or
    /// proximal (soft-thresholding γ after each update, so gammas reach exact zeros).
    #[serde(default)]
    pub sr_mode: SrMode,
    /// Proximal mode: in each BN, leave this many largest gammas out of the L1 step, so no layer
    /// is zeroed whole (a wholly zero layer cannot be revived by fine-tuning).
    #[serde(default)]
    pub sr_keep: usize,
    /// Clip the gradient's global norm at this value. Default 10 (Ultralytics), and off under
    /// --sr: the seed recipe trains sparsely without clipping.
    #[serde(default)]
    pub clip: Option<f32>,
    /// Skip the validation plots of the final model (PR, F1, P and R curves, confusion
    /// matrices, val_batchN mosaics in the run folder).
    #[serde(default)]
    pub no_plots: bool,
    /// Training augmentation (Ultralytics' hsv_h … mosaic).
    #[serde(default, flatten)]
    pub augment: Hyp,
    /// Also keep this epoch's `last.slim` as `weights/epochN.slim` every this many epochs (0: off).
    #[serde(default)]
    pub save_period: usize,
    /// Train in one process on the micro-batches a run of this many data-parallel ranks feeds
    /// its ranks (1: off): each rank's batch in turn, accumulated as the ranks' all-reduce sums
    /// them, so an N-rank run can be reproduced, or checked, on one device.
    #[serde(default = "one")]
    pub emulate_ranks: usize,
    /// Run folder (from --project and --name).
    pub save_dir: PathBuf,
}

fn one() -> usize {
    1
}

impl Default for TrainConfig {
    /// Ultralytics' defaults (the command line's).
    fn default() -> Self {
        TrainConfig {
            data: None,
            epochs: 100,
            imgsz: 0,
            batch: 16,
            optimizer: "auto".into(),
            lr0: 0.01,
            lrf: 0.01,
            momentum: 0.937,
            weight_decay: 5e-4,
            warmup_epochs: 3.0,
            warmup_momentum: 0.8,
            warmup_bias_lr: 0.1,
            cos_lr: false,
            close_mosaic: 10,
            nbs: 64,
            seed: 0,
            cache: false,
            sr: 0.0,
            sr_scope: "all".into(),
            sr_decay: false,
            sr_mode: SrMode::Subgradient,
            sr_keep: 0,
            clip: None,
            no_plots: false,
            augment: Hyp::default(),
            save_period: 0,
            emulate_ranks: 1,
            save_dir: PathBuf::new(),
        }
    }
}

/// The largest training image size (pixels per side).
pub const MAX_IMGSZ: usize = 8192;

impl TrainConfig {
    /// Checks every setting before any work: counts at least 1, rates finite and in range.
    pub fn validate(&self) -> Result<()> {
        let count = |what: &str, v: usize| if v == 0 { bail!("--{what} must be at least 1") } else { Ok(()) };
        count("epochs", self.epochs)?;
        count("batch", self.batch)?;
        count("nbs", self.nbs)?;
        count("emulate-ranks", self.emulate_ranks)?;
        self.augment.validate()?;
        if self.imgsz == 0 || self.imgsz > MAX_IMGSZ {
            bail!("--imgsz {} is outside 32..={MAX_IMGSZ}", self.imgsz);
        }
        let finite = |what: &str, v: f64, lo: f64, hi: f64| {
            if !(v.is_finite() && v >= lo && v <= hi) {
                bail!("--{what} {v} must be a finite number in [{lo}, {hi}]");
            }
            Ok(())
        };
        finite("lr0", self.lr0, f64::MIN_POSITIVE, 10.0)?;
        finite("lrf", self.lrf, 0.0, 1.0)?;
        finite("momentum", self.momentum, 0.0, 1.0)?;
        finite("weight-decay", self.weight_decay, 0.0, 1.0)?;
        finite("warmup-epochs", self.warmup_epochs, 0.0, 1e6)?;
        finite("warmup-momentum", self.warmup_momentum, 0.0, 1.0)?;
        finite("warmup-bias-lr", self.warmup_bias_lr, 0.0, 10.0)?;
        finite("sr", self.sr as f64, 0.0, 1e3)?;
        if let Some(c) = self.clip {
            finite("clip", c as f64, 0.0, 1e9)?;
        }
        if !matches!(self.sr_scope.as_str(), "all" | "seed") {
            bail!("--sr-scope {}: expected all or seed", self.sr_scope);
        }
        Ok(())
    }

    /// The gradient-norm threshold in force: `--clip`, else 10 without the L1 term and none
    /// with it.
    pub fn max_norm(&self) -> f32 {
        self.clip.unwrap_or(if self.sr > 0.0 { 0.0 } else { 10.0 })
    }
}
