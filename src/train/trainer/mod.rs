//! `slimc train`: Ultralytics' training loop — the schedule (warm-up, accumulation to the
//! nominal batch, learning-rate decay, the EMA decay) on the host, each micro-batch one run of
//! the whole training step on the backend, validation every epoch, results.csv / results.png,
//! last.slim and best.slim written atomically, and `--resume` from the last completed epoch.
//! A [`Trainer`] is set up (or resumed) here; [`epoch`] runs the epochs.

mod epoch;

use super::config::TrainConfig;
use super::resume::{restore, unpack_state};
use super::schedule::{choose, Schedule};
use super::step::Program;
use crate::backend::Backend;
use crate::data::dataset::{load_dataset_spec, scan};
use crate::data::loader::Loader;
use crate::distributed::shard::batches_per_rank;
use crate::distributed::World;
use crate::val::validate::ValProgram;
use anyhow::{anyhow, bail, Context, Result};
use slimc_ir::{Model, Tensor};
use slimc_passes::{ema_name, OptimizerOptions, Sparsity};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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
    schedule: Schedule,
    /// EMA updates so far.
    ema_updates: u64,
    train: Arc<Loader>,
    val: Loader,
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
        let train = Arc::new(Loader::new(train, cfg.imgsz, cfg.cache)?);
        let val = Loader::new(val, cfg.imgsz, cfg.cache)?;
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
        let schedule = Schedule::new(choice, decay);
        let options = OptimizerOptions {
            rule: schedule.rule(),
            beta1: schedule.beta1(),
            weight_decay: decay as f32,
            max_norm: cfg.max_norm(),
            sparsity: (cfg.sr > 0.0).then(|| Sparsity {
                gammas: Some(sr_gammas.clone()),
                mode: cfg.sr_mode,
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
            schedule,
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
        restore(&mut t.program, &saved, state.schedule.rule(), &raw, &acc, opt, last)?;
        t.ema_updates = state.ema_updates;
        t.schedule = state.schedule;
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
}
