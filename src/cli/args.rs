//! Arguments and helpers shared by several subcommands.

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use slimc::commands::prune::{Budget, Metric};
use slimc::data::augment::Hyp;
use slimc::data::dataset::{load_dataset_spec, scan, DatasetSpec};
use slimc::data::loader::Loader;
use slimc::device::Device;
use slimc::distributed::World;
use slimc::load::{check_finite, format_of, load_model, LoadOptions, ModelFormat};
use slimc::train::config::{TrainConfig, MAX_IMGSZ};
use slimc::val::validate::{validate, ValOptions};
use slimc_ir::Model;
use slimc_passes::{Importance, Policy, SrMode};
use std::path::{Path, PathBuf};

/// How a model argument is read or built.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a .slim file, an Ultralytics YAML (yolo11n.yaml ships inside slimc) or .pt checkpoint, or an .onnx file.
    pub model: String,
    /// Number of classes (YAML models; for a .pt of another class count, the tensors that fit are transferred).
    #[arg(long)]
    pub nc: Option<usize>,
    /// State dict to load into a YAML model: safetensors or a .pt (Ultralytics names, e.g. model.0.conv.weight).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Image size, `S` or `H,W`: a YAML model's reference size, or what fixes an ONNX file's symbolic input.
    #[arg(long, value_parser = parse_imgsz)]
    pub imgsz: Option<[usize; 2]>,
    /// Seed of the weight initialisation (YAML models).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Accept a model whose weights hold NaN or infinite values.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

impl ModelArgs {
    /// Loads the model as given; one with non-finite weights is refused unless allowed.
    pub fn load(&self) -> Result<Model> {
        let m = load_model(&self.model, &self.options())?;
        if !self.allow_nonfinite {
            check_finite(&m, &self.model)?;
        }
        Ok(m)
    }

    /// The files the model argument reads: the model and its --weights.
    pub fn input_files(&self) -> Vec<PathBuf> {
        std::iter::once(PathBuf::from(&self.model)).chain(self.weights.clone()).collect()
    }

    /// The load options as given.
    pub fn options(&self) -> LoadOptions {
        LoadOptions { nc: self.nc, weights: self.weights.clone(), imgsz: self.imgsz, seed: self.seed }
    }
}

/// Loads a model to train on a dataset of `nc` classes at `imgsz`: a YAML or .pt is built for
/// them (with `opts`' weights and seed); a .slim or ONNX file is read with `opts`.
pub fn load_for_training(model: &str, nc: usize, imgsz: usize, opts: LoadOptions) -> Result<Model> {
    match format_of(model)? {
        ModelFormat::Yaml | ModelFormat::Pt => {
            load_model(model, &LoadOptions { nc: Some(nc), imgsz: Some([imgsz; 2]), ..opts })
        }
        _ => load_model(model, &opts),
    }
}

/// Pruning to a budget instead of a ratio: `N` or a share of the unpruned model's `F%`.
#[derive(Args, Clone, Default)]
pub struct BudgetArgs {
    /// Prune until parameters are at most N (or F% of the model's).
    #[arg(long, value_name = "N|F%")]
    target_params: Option<String>,
    /// Prune until GFLOPs at the model's image size are at most G (or F%).
    #[arg(long, value_name = "G|F%")]
    target_gflops: Option<String>,
    /// Prune until onnxruntime latency (batch 1, median of 30 after warm-up) is at most MS (or F%).
    #[arg(long, value_name = "MS|F%")]
    target_latency: Option<String>,
}

impl BudgetArgs {
    /// The budget given, if any (at most one).
    pub fn budget(&self) -> Result<Option<Budget>> {
        let given: Vec<Budget> = [
            (Metric::Parameters, &self.target_params, "--target-params"),
            (Metric::Gflops, &self.target_gflops, "--target-gflops"),
            (Metric::LatencyMs, &self.target_latency, "--target-latency"),
        ]
        .into_iter()
        .filter_map(|(m, v, flag)| v.as_ref().map(|v| Budget::parse(m, v, flag)))
        .collect::<Result<_>>()?;
        if given.len() > 1 {
            bail!("give one of --target-params, --target-gflops and --target-latency");
        }
        Ok(given.into_iter().next())
    }
}

/// `--policy`: which channels may be pruned.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PolicyArg {
    /// The BNs the YOLOv11-Prune recipe prunes, each on its own.
    Seed,
    /// Also residual- and concat-coupled groups, as units.
    Groups,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Policy {
        match p {
            PolicyArg::Seed => Policy::Seed,
            PolicyArg::Groups => Policy::Groups,
        }
    }
}

/// `--importance`: how a group's |gamma| values combine.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ImportanceArg {
    /// The largest.
    Max,
    /// The sum.
    Sum,
    /// The mean.
    Mean,
}

impl From<ImportanceArg> for Importance {
    fn from(i: ImportanceArg) -> Importance {
        match i {
            ImportanceArg::Max => Importance::Max,
            ImportanceArg::Sum => Importance::Sum,
            ImportanceArg::Mean => Importance::Mean,
        }
    }
}

/// Parses `S` or `H,W`.
pub fn parse_imgsz(s: &str) -> std::result::Result<[usize; 2], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.parse::<usize>().map_err(|_| format!("`{s}` is not S or H,W")))
        .collect::<std::result::Result<_, _>>()?;
    let ok = |v: usize| (1..=MAX_IMGSZ).contains(&v);
    match nums.as_slice() {
        [s] if ok(*s) => Ok([*s, *s]),
        [h, w] if ok(*h) && ok(*w) => Ok([*h, *w]),
        _ => Err(format!("`{s}` is not S or H,W with sides in 1..={MAX_IMGSZ}")),
    }
}

/// The training image size: the larger side, rounded up to the largest stride (32), as
/// Ultralytics' `check_imgsz` does.
pub fn train_imgsz(side: usize) -> usize {
    side.div_ceil(32) * 32
}

/// A dataset's val split at `imgsz`, its warnings printed; with the spec.
pub fn val_split(data: &Path, imgsz: usize) -> Result<(DatasetSpec, Loader)> {
    let spec = load_dataset_spec(data)?;
    let (samples, rep) = scan(&spec.val, spec.names.len(), "val")?;
    for w in &rep.warnings {
        eprintln!("WARNING {w}");
    }
    eprintln!("{}", rep.summary("val"));
    let split = Loader::new(samples, imgsz, false)?;
    Ok((spec, split))
}

/// Scores a model on a dataset's val split at `imgsz` on `device`: (mAP50, mAP50-95).
pub fn val_scorer(data: &Path, imgsz: usize, device: Device) -> Result<impl FnMut(&Model) -> Result<(f64, f64)>> {
    let (spec, split) = val_split(data, imgsz)?;
    let nc = spec.names.len();
    let backend = device.backend()?;
    Ok(move |m: &Model| {
        let r = validate(&*backend, m, &split, nc, &ValOptions::quiet(16))?;
        Ok((r.metrics.map50, r.metrics.map))
    })
}

/// Refuses to write `output` over one of the command's input files (`inputs`, in groups).
pub fn refuse_overwrite(output: &Path, inputs: &[Vec<PathBuf>]) -> Result<()> {
    let Ok(out) = std::fs::canonicalize(output) else { return Ok(()) };
    for input in inputs.iter().flatten() {
        if std::fs::canonicalize(input).is_ok_and(|i| i == out) {
            bail!("{}: this is also an input of the command; write the output to another file", output.display());
        }
    }
    Ok(())
}

/// Writes a model file: a `.slim`, or by its extension an Ultralytics `.pt` checkpoint.
pub fn save(model: &Model, path: &Path) -> Result<()> {
    match format_of(&path.display().to_string())? {
        ModelFormat::Slim => Ok(model.save(path)?),
        ModelFormat::Pt => slimc::export::pt::save_pt(model, path, Default::default()),
        _ => bail!("{}: the output must be a .slim file or an Ultralytics .pt checkpoint", path.display()),
    }
}

/// `project/name`, or `project/name2`, `name3`, ... if it exists (as Ultralytics increments
/// runs), created.
pub fn run_dir(project: &Path, name: &str) -> Result<PathBuf> {
    let first = project.join(name);
    let dir = if first.exists() {
        (2..).map(|i| project.join(format!("{name}{i}"))).find(|p| !p.exists()).expect("some name is free")
    } else {
        first
    };
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// [`run_dir`] as rank 0 of `world` picks it (the others would find it taken and number theirs).
pub fn root_run_dir(world: &World, project: &Path, name: &str) -> Result<PathBuf> {
    let mine = if world.is_root() { run_dir(project, name)?.display().to_string() } else { String::new() };
    Ok(PathBuf::from(String::from_utf8(world.from_root(mine.into_bytes())?)?))
}

/// `--device` on the command line: where graphs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU backend.
    Cpu,
    /// The wgpu backend on the best adapter there is, a software one (lavapipe) included.
    Gpu,
    /// The wgpu backend when there is a hardware GPU, else the CPU.
    Auto,
}

impl From<DeviceArg> for Device {
    fn from(d: DeviceArg) -> Device {
        match d {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Auto => Device::Auto,
        }
    }
}

/// `--sr-mode`: how the L1 term on BN gammas acts, one value per [`SrMode`] with its help.
pub fn sr_mode_values() -> impl clap::builder::TypedValueParser<Value = SrMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let help = |m: SrMode| match m {
        SrMode::Subgradient => "The seed recipe's subgradient: sr·sign(γ) added to γ's gradient before the update",
        SrMode::Proximal => "A proximal step after the update (soft-thresholding), so gammas reach exact zeros",
    };
    PossibleValuesParser::new(SrMode::ALL.map(|m| PossibleValue::new(m.name()).help(help(m))))
        .map(|s| SrMode::ALL.into_iter().find(|m| m.name() == s).expect("one of the possible values"))
}

/// `slimc train`'s training options, with Ultralytics' names and defaults ([`TrainConfig`]'s).
#[derive(Clone, Debug, clap::Args)]
pub struct TrainOptions {
    /// Dataset YAML (path, train, val, names); required unless resuming.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    pub batch: usize,
    /// auto, SGD or AdamW.
    #[arg(long, default_value_t = TrainConfig::default().optimizer)]
    pub optimizer: String,
    /// Initial learning rate (SGD/AdamW; auto picks its own).
    #[arg(long, default_value_t = TrainConfig::default().lr0)]
    pub lr0: f64,
    /// Final learning rate as a fraction of lr0.
    #[arg(long, default_value_t = TrainConfig::default().lrf)]
    pub lrf: f64,
    /// SGD momentum / AdamW beta1 (explicit optimizers).
    #[arg(long, default_value_t = TrainConfig::default().momentum)]
    pub momentum: f64,
    /// Weight decay at the nominal batch.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// Warm-up length in epochs (at least 100 iterations; 0 turns warm-up off).
    #[arg(long, default_value_t = TrainConfig::default().warmup_epochs)]
    pub warmup_epochs: f64,
    /// SGD momentum at the start of warm-up.
    #[arg(long, default_value_t = TrainConfig::default().warmup_momentum)]
    pub warmup_momentum: f64,
    /// Bias learning rate at the start of warm-up (explicit optimizers; auto starts at 0).
    #[arg(long, default_value_t = TrainConfig::default().warmup_bias_lr)]
    pub warmup_bias_lr: f64,
    /// Cosine instead of linear learning-rate decay.
    #[arg(long)]
    pub cos_lr: bool,
    /// Final epochs trained without mosaic.
    #[arg(long, default_value_t = TrainConfig::default().close_mosaic)]
    pub close_mosaic: usize,
    /// Nominal batch size: gradients accumulate to it.
    #[arg(long, default_value_t = TrainConfig::default().nbs)]
    pub nbs: usize,
    /// Keep decoded images in RAM.
    #[arg(long)]
    pub cache: bool,
    /// Network slimming: L1 rate on BN gammas, applied once per optimizer step (0: off).
    #[arg(long, default_value_t = TrainConfig::default().sr)]
    pub sr: f32,
    /// Which BN gammas the L1 term (and the sparsity share) covers: all, or seed (those the
    /// YOLOv11-Prune recipe penalises).
    #[arg(long, default_value_t = TrainConfig::default().sr_scope)]
    pub sr_scope: String,
    /// Decay the L1 rate linearly from sr to 0.1·sr over the epochs (the seed recipe's schedule).
    #[arg(long)]
    pub sr_decay: bool,
    /// How the L1 term acts: subgradient (the seed recipe: sr·sign(γ) added to the gradient) or
    /// proximal (soft-thresholding γ after each update, so gammas reach exact zeros).
    #[arg(long, value_parser = sr_mode_values(), default_value = TrainConfig::default().sr_mode.name())]
    pub sr_mode: SrMode,
    /// Proximal mode: in each BN, leave this many largest gammas out of the L1 step, so no layer
    /// is zeroed whole (a wholly zero layer cannot be revived by fine-tuning).
    #[arg(long, default_value_t = TrainConfig::default().sr_keep)]
    pub sr_keep: usize,
    /// Clip the gradient's global norm at this value. Default 10 (Ultralytics), and off under
    /// --sr: the seed recipe trains sparsely without clipping.
    #[arg(long)]
    pub clip: Option<f32>,
    /// Skip the validation plots of the final model (PR, F1, P and R curves, confusion
    /// matrices, val_batchN mosaics in the run folder).
    #[arg(long)]
    pub no_plots: bool,
    /// HSV hue augmentation gain (0: off).
    #[arg(long, default_value_t = Hyp::default().hsv_h)]
    pub hsv_h: f32,
    /// HSV saturation augmentation gain.
    #[arg(long, default_value_t = Hyp::default().hsv_s)]
    pub hsv_s: f32,
    /// HSV value augmentation gain.
    #[arg(long, default_value_t = Hyp::default().hsv_v)]
    pub hsv_v: f32,
    /// Random rotation range in degrees.
    #[arg(long, default_value_t = Hyp::default().degrees)]
    pub degrees: f32,
    /// Random translation as a fraction of the image.
    #[arg(long, default_value_t = Hyp::default().translate)]
    pub translate: f32,
    /// Random scale gain.
    #[arg(long, default_value_t = Hyp::default().scale)]
    pub scale: f32,
    /// Probability of a left-right flip.
    #[arg(long, default_value_t = Hyp::default().fliplr)]
    pub fliplr: f32,
    /// Probability of a mosaic (until --close-mosaic).
    #[arg(long, default_value_t = Hyp::default().mosaic)]
    pub mosaic: f32,
    /// Reproduce a run of N data-parallel ranks in this one process: each optimizer step
    /// accumulates the N ranks' micro-batches (batch/N images each) in turn, as `mpirun -np N`
    /// would feed and all-reduce them.
    #[arg(long, default_value_t = 1)]
    pub emulate_ranks: usize,
    /// Also keep every N-th epoch's last.slim as weights/epochN.slim (0: off).
    #[arg(long, default_value_t = 0)]
    pub save_period: usize,
}

impl From<TrainOptions> for TrainConfig {
    fn from(a: TrainOptions) -> Self {
        TrainConfig {
            data: a.data,
            epochs: a.epochs,
            batch: a.batch,
            optimizer: a.optimizer,
            lr0: a.lr0,
            lrf: a.lrf,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            warmup_epochs: a.warmup_epochs,
            warmup_momentum: a.warmup_momentum,
            warmup_bias_lr: a.warmup_bias_lr,
            cos_lr: a.cos_lr,
            close_mosaic: a.close_mosaic,
            nbs: a.nbs,
            cache: a.cache,
            sr: a.sr,
            sr_scope: a.sr_scope,
            sr_decay: a.sr_decay,
            sr_mode: a.sr_mode,
            sr_keep: a.sr_keep,
            clip: a.clip,
            no_plots: a.no_plots,
            augment: Hyp {
                hsv_h: a.hsv_h,
                hsv_s: a.hsv_s,
                hsv_v: a.hsv_v,
                degrees: a.degrees,
                translate: a.translate,
                scale: a.scale,
                fliplr: a.fliplr,
                mosaic: a.mosaic,
            },
            emulate_ranks: a.emulate_ranks,
            save_period: a.save_period,
            ..TrainConfig::default()
        }
    }
}
