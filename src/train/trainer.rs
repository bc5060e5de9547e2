//! `slimc train`: Ultralytics' training loop — the schedule (warm-up, accumulation to the
//! nominal batch, learning-rate decay, the EMA decay) on the host, each micro-batch one run of
//! the whole training step on the backend, validation every epoch, results.csv / results.png,
//! last.slim and best.slim written atomically, and `--resume` from the last completed epoch.

use super::optim::{choose, interp, lr_factor, warmup_iterations, Optimizer, Rule, SrMode};
use super::step::Program;
use crate::backend::Backend;
use crate::data::augment::Hyp;
use crate::data::dataset::{load_dataset_spec, scan};
use crate::data::loader::Split;
use crate::dist::shard::batches_per_rank;
use crate::dist::World;
use crate::frontend::weights::safetensors_bytes;
use crate::plot::annotate::save_train_batch;
use crate::plot::results::plot_results;
use crate::train::saver::Saver;
use crate::val::validate::{validate, validate_reusing, ValOptions, ValProgram};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use slimc_ir::{Model, Tensor};
use slimc_passes::{accumulator_name, ema_name, state_names, OptimizerOptions, Sparsity};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The names of the non-finite entries of `tensors`, at most three.
fn non_finite(tensors: &BTreeMap<String, Tensor>) -> Vec<&str> {
    tensors
        .iter()
        .filter(|(_, t)| t.f32s().is_ok_and(|v| v.iter().any(|x| !x.is_finite())))
        .map(|(n, _)| n.as_str())
        .take(3)
        .collect()
}

/// A split as the ranks compare it: its images and labels, and a hash of every image's file
/// name, size and labels (so that two ranks reading different files disagree).
fn split_fingerprint(samples: &[crate::data::dataset::Sample]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    use std::hash::{Hash, Hasher};
    for s in samples {
        s.path.file_name().hash(&mut h);
        s.shape.hash(&mut h);
        for l in &s.labels {
            l.cls.hash(&mut h);
            l.xywh.map(f32::to_bits).hash(&mut h);
        }
    }
    let labels: usize = samples.iter().map(|s| s.labels.len()).sum();
    format!("{} images, {labels} labels (hash {:016x})", samples.len(), h.finish())
}

/// Replaces `tensors[names]` on every rank with rank 0's, in one broadcast.
fn sync_tensors(tensors: &mut BTreeMap<String, Tensor>, names: &[String], world: &World) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let values =
        names.iter().map(|n| tensors.get(n).cloned().ok_or_else(|| anyhow!("no tensor {n}"))).collect::<Result<_>>()?;
    for (n, t) in names.iter().cloned().zip(super::step::broadcast(values, world)?) {
        tensors.insert(n, t);
    }
    Ok(())
}

/// results.csv: the header and one row per epoch.
fn csv_text(rows: &[String]) -> String {
    let mut csv = RESULT_COLUMNS.join(",") + "\n";
    for r in rows {
        csv += r;
        csv.push('\n');
    }
    csv
}

/// What a stopped run leaves: where the last completed epoch's weights are, if any (once the
/// files being written are).
fn kept_weights(save_dir: &Path, saver: &mut Saver) -> String {
    if let Err(e) = saver.wait() {
        return format!("the last checkpoint could not be written: {e:#}");
    }
    let last = save_dir.join("weights/last.slim");
    if last.exists() {
        format!("the last good weights are in {}", last.display())
    } else {
        "no epoch had completed, so nothing was saved".to_string()
    }
}

/// State written into `last.slim` after every epoch.
#[derive(Serialize, Deserialize)]
struct RunState {
    config: TrainConfig,
    epoch: usize,
    best_fitness: f64,
    optimizer: Optimizer,
    ema_updates: u64,
    last_opt_step: i64,
    /// results.csv rows so far (rewritten on resume, so the file matches the weights).
    results: Vec<String>,
}

/// The columns of results.csv (Ultralytics' names).
pub const RESULT_COLUMNS: [&str; 16] = [
    "epoch",
    "time",
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "lr/pg0",
    "lr/pg1",
    "lr/pg2",
    "sparsity/gamma<1e-2",
];

fn pack_state(
    state: &RunState,
    model: &BTreeMap<String, Tensor>,
    acc: &BTreeMap<String, Tensor>,
    opt: &BTreeMap<String, Vec<f32>>,
) -> Result<Vec<u8>> {
    let mut arrays = vec![];
    for (prefix, tensors) in [("model", model), ("acc", acc)] {
        for (n, t) in tensors {
            arrays.push((format!("{prefix}/{n}"), t.shape.clone(), t.f32s()?));
        }
    }
    for (n, v) in opt {
        arrays.push((format!("opt/{n}"), vec![v.len()], v.as_slice()));
    }
    let meta = std::collections::HashMap::from([("run".to_string(), serde_json::to_string(state)?)]);
    safetensors_bytes(arrays, Some(meta))
}

/// A run's saved state: the run, the raw weights and buffers, the gradient accumulators (empty in
/// files written before they were saved) and the optimizer state.
type Unpacked = (RunState, BTreeMap<String, Tensor>, BTreeMap<String, Tensor>, BTreeMap<String, Vec<f32>>);

/// The training state a `last.slim` (or `epochN.slim`) holds besides its EMA weights.
pub struct SavedState {
    /// The last completed epoch, from 0.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// The trained weights and BN running statistics as the optimizer left them.
    pub raw: BTreeMap<String, Tensor>,
    /// Per trained parameter, its optimizer state (SGD's momentum, or AdamW's two moments one
    /// after the other).
    pub optimizer: BTreeMap<String, Vec<f32>>,
}

/// Reads the training state of `model` (a `last.slim` of an unfinished run).
pub fn saved_state(model: &Model) -> Result<SavedState> {
    if model.training_state.is_empty() {
        bail!("no training state (not a last.slim of an unfinished run)");
    }
    let (state, raw, _, optimizer) = unpack_state(&model.training_state)?;
    Ok(SavedState { epoch: state.epoch, steps: state.optimizer.steps, raw, optimizer })
}

fn unpack_state(bytes: &[u8]) -> Result<Unpacked> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let run = meta.metadata().as_ref().and_then(|m| m.get("run")).ok_or_else(|| anyhow!("no run state"))?;
    let state: RunState = serde_json::from_str(run)?;
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let (mut model, mut acc, mut opt) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (name, view) in st.tensors() {
        let v: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(n) = name.strip_prefix("model/") {
            model.insert(n.to_string(), Tensor::from_f32(view.shape().to_vec(), v)?);
        } else if let Some(n) = name.strip_prefix("acc/") {
            acc.insert(n.to_string(), Tensor::from_f32(view.shape().to_vec(), v)?);
        } else if let Some(n) = name.strip_prefix("opt/") {
            opt.insert(n.to_string(), v);
        }
    }
    Ok((state, model, acc, opt))
}

/// A training run.
pub struct Trainer {
    cfg: TrainConfig,
    backend: Box<dyn Backend>,
    names: Vec<String>,
    /// The BN gammas under the L1 term and the sparsity share.
    sr_gammas: Vec<String>,
    /// The whole training step, holding the weights, the optimizer state and the EMA.
    program: Program,
    /// The inference model whose tensors the EMA replaces for validation and saving.
    model: Model,
    /// The host's schedule.
    opt: Optimizer,
    /// EMA updates so far.
    ema_updates: u64,
    train: Arc<Split>,
    val: Split,
    start_epoch: usize,
    best_fitness: f64,
    last_opt_step: i64,
    results: Vec<String>,
    /// Whether the accumulators hold this run's gradients (false until the first micro-batch,
    /// and after resuming a file that did not save them).
    accumulating: bool,
    /// The processes of the run; rank 0 prints and writes the run's files.
    world: World,
    /// Data-parallel ranks the epoch is sharded among (the world's, or `--emulate-ranks`).
    ranks: usize,
    /// The ranks whose micro-batches this process runs.
    hosted: std::ops::Range<usize>,
    /// The validation program, compiled at the first epoch's end and reused by the others.
    val_program: ValProgram,
}

impl Trainer {
    /// Prepares a run of `model` (built with the dataset's class count) under `cfg`, training and
    /// validating on `backend`, as one rank of `world` (rank 0's weights are everyone's).
    pub fn new(model: Model, cfg: TrainConfig, backend: Box<dyn Backend>, world: World) -> Result<Trainer> {
        cfg.validate()?;
        let (ranks, hosted) = match (world.size(), cfg.emulate_ranks) {
            (1, n) => (n, 0..n),
            (n, 1) => (n, world.rank()..world.rank() + 1),
            (n, e) => bail!("--emulate-ranks {e} reproduces a run of several ranks in one process; this run has {n}"),
        };
        if !cfg.batch.is_multiple_of(ranks) {
            bail!("--batch {} (the global batch) does not divide among {ranks} ranks", cfg.batch);
        }
        let root = world.is_root();
        let data = cfg.data.as_ref().ok_or_else(|| anyhow!("--data is required (a dataset YAML)"))?;
        let spec = load_dataset_spec(data)?;
        let nc = spec.names.len();
        // Rank 0 reports the data; another rank's differences come out in the check below.
        let (train, rep) = scan(&spec.train, nc, "train")?;
        if root {
            for w in &rep.warnings {
                eprintln!("WARNING {w}");
            }
            eprintln!("{}", rep.summary("train"));
        }
        world.agree("the train set", &split_fingerprint(&train), &rep.warnings.join("; "))?;
        if rep.found == 0 {
            bail!("train: no image has labels; training needs labelled objects");
        }
        let (val, rep) = scan(&spec.val, nc, "val")?;
        if root {
            for w in &rep.warnings {
                eprintln!("WARNING {w}");
            }
            eprintln!("{}", rep.summary("val"));
        }
        world.agree("the val set", &split_fingerprint(&val), &rep.warnings.join("; "))?;
        let train = Arc::new(Split::new(train, cfg.imgsz, cfg.cache)?);
        let val = Split::new(val, cfg.imgsz, cfg.cache)?;
        let nb = batches_per_rank(train.samples.len(), ranks, cfg.batch / ranks);
        let iterations = train.samples.len().div_ceil(cfg.batch.max(cfg.nbs)) * cfg.epochs;
        let choice = choose(&cfg.optimizer, cfg.lr0, cfg.momentum, cfg.warmup_bias_lr, iterations, nc)
            .map_err(|e| anyhow!(e))?;
        let accumulate = ((cfg.nbs as f64 / cfg.batch as f64).round() as usize).max(1);
        let decay = cfg.weight_decay * cfg.batch as f64 * accumulate as f64 / cfg.nbs as f64;
        let clip = match cfg.max_norm() {
            c if c > 0.0 => format!("clip {c}"),
            _ => "no clipping".to_string(),
        };
        if root {
            eprintln!(
                "optimizer: {:?}(lr={}, momentum={}) with parameter groups (no decay: biases, BN gammas; decay {decay}: weights), {clip}; {nb} batches per epoch",
                choice.rule, choice.lr, choice.momentum
            );
            if ranks > 1 {
                let how = if world.size() > 1 { "" } else { ", emulated in one process" };
                eprintln!("data parallel over {ranks} ranks{how}: {} images per rank and batch, the gradient summed across ranks once per optimizer step", cfg.batch / ranks);
            }
        }
        let gammas = slimc_passes::bn_gammas(&model.graph);
        let sr_gammas = match cfg.sr_scope.as_str() {
            "all" => gammas,
            "seed" => {
                let keep = slimc_passes::seed_unprunable(&model.graph);
                gammas.into_iter().filter(|g| !keep.contains(g.trim_end_matches(".weight"))).collect()
            }
            s => bail!("--sr-scope {s}: expected all or seed"),
        };
        let opt = Optimizer::new(choice, decay);
        let options = OptimizerOptions {
            rule: opt.rule(),
            weight_decay: decay as f32,
            max_norm: cfg.max_norm(),
            sparsity: (cfg.sr > 0.0).then(|| Sparsity {
                gammas: Some(sr_gammas.clone()),
                proximal: cfg.sr_mode == SrMode::Proximal,
                keep: cfg.sr_keep,
            }),
            ema: true,
            world_size: world.size(),
        };
        let program = Program::with_optimizer_in(&model, &*backend, options, world.comm.clone())
            .context("building the training program")?;
        Ok(Trainer {
            names: spec.names,
            sr_gammas,
            model,
            program,
            opt,
            ema_updates: 0,
            train,
            val,
            start_epoch: 0,
            best_fitness: f64::NEG_INFINITY,
            last_opt_step: -1,
            results: vec![],
            accumulating: false,
            cfg,
            backend,
            world,
            ranks,
            hosted,
            val_program: ValProgram::default(),
        })
    }

    /// Continues the run saved in `last.slim` on `backend`: weights, optimizer, EMA and
    /// schedule state. Of several ranks, rank 0 reads the file and sends it to the others (a
    /// file written by a run of any number of ranks resumes on any number).
    pub fn resume(
        last: &Path,
        backend: Box<dyn Backend>,
        world: World,
        emulate_ranks: Option<usize>,
    ) -> Result<Trainer> {
        let saved = world.model_from_root(|| Ok(Model::load(last)?))?;
        if saved.training_state.is_empty() {
            bail!("{}: no training state to resume (it is not a last.slim of an unfinished run)", last.display());
        }
        let (state, raw, acc, opt) =
            unpack_state(&saved.training_state).with_context(|| format!("{}: training state", last.display()))?;
        if state.epoch + 1 >= state.config.epochs {
            bail!("{}: the run already finished all {} epochs", last.display(), state.config.epochs);
        }
        let mut model = saved.clone();
        model.training_state.clear();
        let mut config = state.config;
        if let Some(n) = emulate_ranks {
            config.emulate_ranks = n;
        }
        if world.size() > 1 {
            // The world decides the ranks; a run that emulated some is now run by them.
            config.emulate_ranks = 1;
        }
        let mut t = Trainer::new(model, config, backend, world)?;
        let p = &mut t.program;
        for n in p.params.clone().iter().chain(&p.buffers.clone()) {
            p.write(&ema_name(n), &saved.tensors[n])?;
        }
        for (n, v) in &raw {
            p.write(n, v)?;
        }
        // Gradients accumulated since the last step carry on, as in an uninterrupted run.
        for (n, v) in &acc {
            p.write(&accumulator_name(n), v)?;
        }
        // Optimizer state as saved: SGD's momentum buffer, or AdamW's moments one after the other.
        let rule = state.optimizer.rule();
        for (n, v) in opt {
            let slots = state_names(&n, rule);
            let shape = raw
                .get(&n)
                .map(|t| t.shape.clone())
                .ok_or_else(|| anyhow!("optimizer state for {n}, which is not trained"))?;
            let len: usize = shape.iter().product();
            if v.len() != len * slots.len() {
                bail!(
                    "{}: optimizer state of {n} has {} values, expected {}",
                    last.display(),
                    v.len(),
                    len * slots.len()
                );
            }
            for (slot, part) in slots.iter().zip(v.chunks_exact(len.max(1))) {
                p.write(slot, &Tensor::from_f32(shape.clone(), part.to_vec())?)?;
            }
        }
        t.ema_updates = state.ema_updates;
        t.opt = state.optimizer;
        t.start_epoch = state.epoch + 1;
        t.best_fitness = state.best_fitness;
        t.last_opt_step = state.last_opt_step;
        t.results = state.results;
        t.accumulating = !acc.is_empty();
        if t.world.is_root() {
            eprintln!("resuming {} from epoch {} of {}", t.cfg.save_dir.display(), t.start_epoch + 1, t.cfg.epochs);
        }
        Ok(t)
    }

    /// The program's current tensors named `names`, by name.
    fn read_all<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Result<BTreeMap<String, Tensor>> {
        names.into_iter().map(|n| Ok((n.clone(), self.program.read(n)?))).collect()
    }

    /// The share of the selected BN gammas among `raw` (the trained weights) with |gamma| below
    /// `t`.
    fn gamma_share_below(&self, raw: &BTreeMap<String, Tensor>, t: f32) -> Result<f64> {
        let (mut below, mut all) = (0usize, 0usize);
        for g in &self.sr_gammas {
            let v = raw.get(g).ok_or_else(|| anyhow!("no BN gamma {g}"))?.f32s()?;
            below += v.iter().filter(|x| x.abs() < t).count();
            all += v.len();
        }
        Ok(below as f64 / all.max(1) as f64)
    }

    /// The EMA weights in the inference model, ready to validate or save.
    fn ema_model(&self) -> Result<Model> {
        let mut m = self.model.clone();
        for n in self.program.params.iter().chain(&self.program.buffers) {
            m.tensors.insert(n.clone(), self.program.read(&ema_name(n))?);
        }
        Ok(m)
    }

    /// The optimizer state to save: per trained parameter, its state tensors one after the other.
    fn optimizer_state(&self) -> Result<BTreeMap<String, Vec<f32>>> {
        let rule = self.opt.rule();
        let mut out = BTreeMap::new();
        for n in &self.program.params {
            let mut v = vec![];
            for s in state_names(n, rule) {
                v.extend_from_slice(self.program.read(&s)?.f32s()?);
            }
            out.insert(n.clone(), v);
        }
        Ok(out)
    }

    /// Runs the remaining epochs; returns the best fitness (mAP50-95).
    pub fn run(mut self) -> Result<f64> {
        let cfg = self.cfg.clone();
        let root = self.world.is_root();
        let wdir = cfg.save_dir.join("weights");
        if root {
            std::fs::create_dir_all(&wdir).with_context(|| format!("{}: cannot create", wdir.display()))?;
        }
        // Every rank starts from rank 0's weights, optimizer state, EMA and accumulators.
        self.program.sync_from_root(&self.world)?;
        let csv_path = cfg.save_dir.join("results.csv");
        if root {
            slimc_ir::write_atomic(&csv_path, csv_text(&self.results).as_bytes())?;
        }
        if root && self.start_epoch == 0 {
            std::fs::write(cfg.save_dir.join("args.json"), serde_json::to_string_pretty(&cfg)?)?;
        }
        let micro = cfg.batch / self.ranks;
        let nb = batches_per_rank(self.train.samples.len(), self.ranks, micro);
        let nw = warmup_iterations(cfg.warmup_epochs, nb);
        let hosted = self.hosted.len();
        let accumulate_final = ((cfg.nbs as f64 / cfg.batch as f64).round() as usize).max(1);
        let mut accumulate = accumulate_final;
        let t0 = std::time::Instant::now();
        let nc = self.names.len();
        // The epoch's model files are written while the next epoch trains.
        let mut saver = Saver::default();
        for epoch in self.start_epoch..cfg.epochs {
            let mut hyp = cfg.augment;
            if epoch + cfg.close_mosaic >= cfg.epochs {
                hyp.mosaic = 0.0;
            }
            let lf = lr_factor(epoch, cfg.epochs, cfg.lrf, cfg.cos_lr);
            let base = self.opt.choice.lr * lf;
            self.opt.lr = [base; 3];
            let pb = if root { ProgressBar::new(nb as u64) } else { ProgressBar::hidden() };
            pb.set_style(
                ProgressStyle::with_template("{prefix:>9} {msg} {bar:24} {pos}/{len} [{elapsed}<{eta}, {per_sec}]")
                    .expect("template"),
            );
            pb.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            let mut mean = [0.0f64; 3];
            let rx = self.train.train_epoch(micro, hyp, cfg.seed, epoch, self.ranks, self.hosted.clone());
            let mut seen = 0;
            let sr = if cfg.sr_decay { cfg.sr * (1.0 - 0.9 * epoch as f32 / cfg.epochs as f32) } else { cfg.sr };
            let mut seen_batches = 0;
            for (k, batch) in rx.iter().enumerate() {
                let batch = batch?;
                seen_batches += 1;
                // Iteration i runs one micro-batch of each hosted rank; the last of them steps.
                let (i, last) = (k / hosted, k % hosted + 1 == hosted);
                let ni = (i + nb * epoch) as i64;
                if k % hosted == 0 && ni <= nw {
                    let x = ni as f64;
                    accumulate =
                        (interp(x, 0.0, nw as f64, 1.0, cfg.nbs as f64 / cfg.batch as f64).round() as usize).max(1);
                    for g in 0..3 {
                        let start = if g == 0 { self.opt.choice.warmup_bias_lr } else { 0.0 };
                        self.opt.lr[g] = interp(x, 0.0, nw as f64, start, base);
                    }
                    if self.opt.choice.rule == Rule::Sgd {
                        self.opt.momentum = interp(x, 0.0, nw as f64, cfg.warmup_momentum, cfg.momentum);
                    }
                }
                if root && epoch == self.start_epoch && k < 3 {
                    let path = cfg.save_dir.join(format!("train_batch{k}.jpg"));
                    if let Err(e) = save_train_batch(&batch.images, &batch.targets, &self.names, &path) {
                        eprintln!("WARNING {}: {e:#}", path.display());
                    }
                }
                // Accumulated gradients carry over an epoch's end (Ultralytics 8.3.253 zeroes them
                // once, before its epoch loop); the optimizer steps once `accumulate`
                // micro-batches have passed since its last step.
                let steps = last && ni - self.last_opt_step >= accumulate as i64;
                if steps {
                    self.opt.steps += 1;
                    self.ema_updates += 1;
                }
                let scalars = self.opt.scalars(steps, !self.accumulating, sr, self.ema_updates);
                self.accumulating = true;
                let r = self.program.train_step(&batch.images, &batch.targets, &scalars)?;
                // A non-finite loss or gradient stops the run: the weights of the last completed
                // epoch stay in last.slim (Ultralytics reloads last.pt and retries up to three
                // times; slimc's steps are deterministic, so a retry would meet the same values).
                let at = || format!("epoch {}, batch {}", epoch + 1, i + 1);
                if let Some(k) = (0..3).find(|&k| !r.items[k].is_finite()) {
                    let (at, kept) = (at(), kept_weights(&cfg.save_dir, &mut saver));
                    bail!("{at}: the {} loss is {}; stopping ({kept})", ["box", "cls", "dfl"][k], r.items[k]);
                }
                if !r.grad_norm.is_finite() {
                    // The accumulators hold the bad gradient unless this micro-batch stepped, in
                    // which case it reached the parameters.
                    let names: Vec<String> = if steps {
                        self.program.params.clone()
                    } else {
                        self.program.params.iter().map(|p| accumulator_name(p)).collect()
                    };
                    let read = self.read_all(&names)?;
                    let bad = non_finite(&read);
                    let (at, kept) = (at(), kept_weights(&cfg.save_dir, &mut saver));
                    let which = bad.iter().map(|n| n.trim_end_matches(".grad_acc")).collect::<Vec<_>>().join(", ");
                    bail!("{at}: non-finite gradient (norm {}) of {which}; stopping ({kept})", r.grad_norm);
                }
                for (c, m) in mean.iter_mut().enumerate() {
                    *m = (*m * k as f64 + r.items[c] as f64) / (k + 1) as f64;
                }
                if steps {
                    self.last_opt_step = ni;
                }
                seen += batch.images.shape[0];
                pb.set_message(format!(
                    "box {:.4} cls {:.4} dfl {:.4} inst {:>3} {}",
                    mean[0], mean[1], mean[2], batch.targets.shape[0], cfg.imgsz
                ));
                if last {
                    pb.inc(1);
                }
            }
            if seen_batches != nb * hosted {
                bail!("epoch {}: the data loader stopped after {seen_batches} of {} batches", epoch + 1, nb * hosted);
            }
            let train_secs = pb.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let raw = self.read_all(self.program.params.iter().chain(&self.program.buffers))?;
            let bad = non_finite(&raw);
            if !bad.is_empty() {
                let kept = kept_weights(&cfg.save_dir, &mut saver);
                bail!("epoch {}: the updates made {} non-finite; stopping ({kept})", epoch + 1, bad.join(", "));
            }
            let mut ema_model = self.ema_model()?;
            // Rank 0's model is the run's: the EMA of the weights is the same on every rank, that
            // of the BN statistics (per rank) is taken from rank 0; the ranks validate it together.
            sync_tensors(&mut ema_model.tensors, &self.program.buffers, &self.world)?;
            let v = validate_reusing(
                &*self.backend,
                &ema_model,
                &self.val,
                nc,
                &ValOptions { bar: root, ..ValOptions::quiet(cfg.batch * 2) },
                &self.world,
                &mut self.val_program,
            )?;
            let m = &v.metrics;
            let fitness = m.map;
            let sparse = self.gamma_share_below(&raw, 1e-2)?;
            let lrs = self.opt.lr;
            let row = [
                (epoch + 1) as f64,
                t0.elapsed().as_secs_f64(),
                mean[0],
                mean[1],
                mean[2],
                m.mp,
                m.mr,
                m.map50,
                m.map,
                v.loss.map_or(f64::NAN, |l| l[0] as f64),
                v.loss.map_or(f64::NAN, |l| l[1] as f64),
                v.loss.map_or(f64::NAN, |l| l[2] as f64),
                lrs[0],
                lrs[1],
                lrs[2],
                sparse,
            ];
            let rate = seen as f64 * (self.ranks / hosted) as f64 / train_secs;
            let line = format!(
                "epoch {}/{}: box {:.4} cls {:.4} dfl {:.4} | P {:.3} R {:.3} mAP50 {:.3} mAP50-95 {:.3} | gamma<1e-2 {:.1}% | {:.1} img/s",
                epoch + 1,
                cfg.epochs,
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                sparse * 100.0,
                rate
            );
            if root {
                eprintln!("{line}");
            }
            self.results.push(row.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join(","));
            let improved = fitness >= self.best_fitness;
            if improved {
                self.best_fitness = fitness;
            }
            let mut last = ema_model;
            let state = RunState {
                config: cfg.clone(),
                epoch,
                best_fitness: self.best_fitness,
                optimizer: self.opt.clone(),
                ema_updates: self.ema_updates,
                last_opt_step: self.last_opt_step,
                results: self.results.clone(),
            };
            if !root {
                continue;
            }
            let mut files = vec![];
            if improved {
                files.push((last.clone(), wdir.join("best.slim")));
            }
            if epoch + 1 < cfg.epochs {
                let acc = self.program.params.iter().map(|n| Ok((n.clone(), self.program.read(&accumulator_name(n))?)));
                let acc = acc.collect::<Result<BTreeMap<_, _>>>()?;
                last.training_state = pack_state(&state, &raw, &acc, &self.optimizer_state()?)?;
            }
            if cfg.save_period > 0 && (epoch + 1) % cfg.save_period == 0 {
                files.push((last.clone(), wdir.join(format!("epoch{}.slim", epoch + 1))));
            }
            files.push((last, wdir.join("last.slim")));
            // The epoch's row once its model files are whole (a run killed in between resumes
            // from the previous epoch, whose row the CSV then still ends with).
            let (csv, csv_path, png) = (csv_text(&self.results), csv_path.clone(), cfg.save_dir.join("results.png"));
            saver.save(files, move || {
                slimc_ir::write_atomic(&csv_path, csv.as_bytes())?;
                if let Err(e) = plot_results(&csv_path, &png) {
                    eprintln!("WARNING results.png: {e:#}");
                }
                Ok(())
            })?;
        }
        saver.wait()?;
        if !root {
            return Ok(self.best_fitness);
        }
        eprintln!(
            "{} epochs completed in {:.3} hours; results in {}",
            cfg.epochs - self.start_epoch,
            t0.elapsed().as_secs_f64() / 3600.0,
            cfg.save_dir.display()
        );
        if !cfg.no_plots {
            // As Ultralytics' final evaluation: best.slim validated once more, with its plots. The
            // run has finished by now, so a failure here is a warning.
            let plots = || -> Result<()> {
                let best = Model::load(&wdir.join("best.slim"))?;
                let opts = ValOptions { plot_batches: 3, ..ValOptions::quiet(cfg.batch * 2) };
                let v = validate(&*self.backend, &best, &self.val, nc, &opts)?;
                crate::plot::val::save_val_plots(&v, &self.names, &cfg.save_dir)?;
                Ok(())
            };
            if let Err(e) = plots() {
                eprintln!("WARNING validation plots: {e:#}");
            }
        }
        Ok(self.best_fitness)
    }
}
