//! Subcommands of slimming: bn-hist, prune, pipeline.

use super::args::{
    load_for_training, refuse_overwrite, root_run_dir, run_dir, save, sr_mode_values, train_imgsz, val_scorer,
    BudgetArgs, DeviceArg, ImportanceArg, ModelArgs, PolicyArg,
};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use slimc::commands::pipeline::{run_pipeline, PipelineConfig};
use slimc::commands::prune;
use slimc::data::dataset::load_dataset_spec;
use slimc::device::Device;
use slimc::load::{check_finite, load_model, LoadOptions};
use slimc::train::config::TrainConfig;
use slimc_ir::Model;
use slimc_passes::{PruneOptions, SrMode};
use std::path::PathBuf;

/// `slimc bn-hist`.
#[derive(Args)]
pub struct BnHistArgs {
    /// Model (.slim, YAML or .pt).
    model: String,
    /// A second model to overlay (same architecture).
    model2: Option<String>,
    /// Output image (.png or .svg).
    #[arg(short, long, default_value = "gamma.png")]
    output: PathBuf,
    /// Which BNs: all, or seed (those the seed recipe penalises).
    #[arg(long, default_value = "all")]
    scope: String,
    /// Print the numbers as JSON.
    #[arg(long)]
    json: bool,
    /// Accept models whose weights hold NaN or infinite values.
    #[arg(long)]
    allow_nonfinite: bool,
}

/// Plots the |gamma| distribution of one or two models.
pub fn bn_hist(a: BnHistArgs) -> Result<()> {
    let inputs: Vec<PathBuf> = std::iter::once(&a.model).chain(&a.model2).map(PathBuf::from).collect();
    refuse_overwrite(&a.output, std::slice::from_ref(&inputs))?;
    let mut models = vec![];
    for m in std::iter::once(&a.model).chain(&a.model2) {
        let model = load_model(m, &LoadOptions::default())?;
        if !a.allow_nonfinite {
            check_finite(&model, m)?;
        }
        models.push((m.clone(), model));
    }
    let (stats, grid) = slimc::commands::bn_hist::bn_hist(&models, &a.scope, &a.output)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    for s in &stats {
        println!(
            "{}: {} gammas, {:.1}% below 1e-2, |gamma| p10 {:.4} p50 {:.4} p90 {:.4}",
            s.model,
            s.count,
            s.share_below_1e_2 * 100.0,
            s.quantiles[0],
            s.quantiles[1],
            s.quantiles[2]
        );
    }
    println!("wrote {} and {}", a.output.display(), grid.display());
    Ok(())
}

/// `slimc prune`.
#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Fraction of the candidate channel groups to remove, in (0, 1).
    #[arg(long)]
    ratio: Option<f64>,
    #[command(flatten)]
    budget: BudgetArgs,
    /// Prune at each ratio of start:end:step and tabulate parameters, GFLOPs, onnxruntime
    /// latency and (with --data) mAP before fine-tuning; writes sweep.csv and sweep.png.
    #[arg(long)]
    sweep: Option<String>,
    /// Dataset YAML whose val split scores each ratio of a sweep.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Folder of the sweep's outputs: project/name.
    #[arg(long, default_value = "runs/prune")]
    project: PathBuf,
    /// Name of the sweep's folder (incremented if it exists).
    #[arg(long, default_value = "sweep")]
    name: String,
    /// Which channel groups are candidates.
    #[arg(long, value_enum, default_value_t = PolicyArg::Groups)]
    policy: PolicyArg,
    /// How a group's |gamma| values combine.
    #[arg(long, value_enum, default_value_t = ImportanceArg::Max)]
    importance: ImportanceArg,
    /// No layer keeps fewer channels than this.
    #[arg(long, default_value_t = 8)]
    min_channels: usize,
    /// Kept channel counts are rounded up to a multiple of this.
    #[arg(long, default_value_t = 8)]
    round_to: usize,
    /// Print the IR (and the analyses) after every pass.
    #[arg(long)]
    print_ir_after_all: bool,
    /// Output .slim file, or .pt for an Ultralytics checkpoint (prune.pt; implies
    /// --even-splits); not with --sweep.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Keep a split into equal parts equal (Ultralytics' C2f, C3k2 and C2PSA chunk their first
    /// conv's output in halves, so a model pruned otherwise has no stock Ultralytics form).
    #[arg(long)]
    even_splits: bool,
    /// Machine-readable report.
    #[arg(long)]
    json: bool,
}

/// Prunes at a ratio or to a budget, or sweeps ratios.
pub fn prune(a: PruneArgs) -> Result<()> {
    let budget = a.budget.budget()?;
    let modes = a.ratio.is_some() as usize + budget.is_some() as usize + a.sweep.is_some() as usize;
    if modes != 1 {
        bail!("give exactly one of --ratio, a --target-* budget and --sweep");
    }
    let model = a.m.load()?;
    let opts = PruneOptions {
        ratio: a.ratio.unwrap_or(0.5),
        policy: a.policy.into(),
        importance: a.importance.into(),
        min_channels: a.min_channels,
        round_to: a.round_to,
        // An Ultralytics checkpoint runs only with even C2f/C3k2/C2PSA halves.
        even_splits: a.even_splits || a.output.as_ref().is_some_and(|o| o.extension().is_some_and(|e| e == "pt")),
    };
    if let Some(text) = &a.sweep {
        if a.output.is_some() {
            bail!("--sweep writes sweep.csv and sweep.png under --project/--name; -o does not apply");
        }
        return sweep(&a, &model, &opts, text);
    }
    let Some(output) = &a.output else { bail!("-o/--output (the pruned .slim or .pt) is required") };
    refuse_overwrite(output, &[a.m.input_files()])?;
    let r = match budget {
        Some(b) => {
            let r = prune::prune_to_budget(&model, &opts, b).map_err(|e| anyhow!("{}: {e:#}", a.m.model))?;
            eprintln!("budget {}", r.describe());
            r.pruned
        }
        None => prune::prune(&model, opts, a.print_ir_after_all).map_err(|e| anyhow!("{}: {e:#}", a.m.model))?,
    };
    save(&r.model, output)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.summary)?);
    } else {
        for c in &r.summary.clamped {
            eprintln!("WARNING {c}");
        }
        print!("{}", r.summary.table());
        println!("wrote {}", output.display());
    }
    Ok(())
}

/// `slimc prune --sweep`: the table, sweep.csv and sweep.png.
fn sweep(a: &PruneArgs, model: &Model, opts: &PruneOptions, text: &str) -> Result<()> {
    let ratios = prune::parse_sweep(text)?;
    let mut scorer = match &a.data {
        Some(d) => Some(val_scorer(d, model.meta.imgsz[0].max(model.meta.imgsz[1]), Device::Auto)?),
        None => None,
    };
    let rows =
        prune::sweep(model, opts, &ratios, scorer.as_mut().map(|f| f as &mut dyn FnMut(&Model) -> Result<(f64, f64)>))
            .map_err(|e| anyhow!("{}: {e:#}", a.m.model))?;
    let dir = run_dir(&a.project, &a.name)?;
    slimc_ir::write_atomic(&dir.join("sweep.csv"), prune::sweep_csv(&rows).as_bytes())?;
    prune::plot_sweep(&rows, &dir.join("sweep.png"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", prune::sweep_table(&rows));
        println!("wrote {} and {}", dir.join("sweep.csv").display(), dir.join("sweep.png").display());
    }
    Ok(())
}

/// `slimc pipeline`.
#[derive(Args)]
pub struct PipelineArgs {
    /// Model to start from (YAML, Ultralytics .pt, or .slim).
    #[arg(long, default_value = "yolo11n.yaml")]
    model: String,
    /// Dataset YAML.
    #[arg(long, default_value = "datasets/trees/trees.yaml")]
    data: PathBuf,
    /// Image size.
    #[arg(long, default_value_t = 320)]
    imgsz: usize,
    /// Where training, validation and the verification reference run.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Epochs of the first training stage.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Epochs of sparse training (default: --epochs).
    #[arg(long)]
    sparse_epochs: Option<usize>,
    /// Epochs of fine-tuning (default: --epochs).
    #[arg(long)]
    finetune_epochs: Option<usize>,
    /// L1 rate on BN gammas during sparse training.
    #[arg(long, default_value_t = 1e-2)]
    sr: f32,
    /// all or seed.
    #[arg(long, default_value = "all")]
    sr_scope: String,
    /// How the L1 term acts: subgradient (the seed recipe) or proximal (exact zeros).
    #[arg(long, value_parser = sr_mode_values(), default_value = SrMode::Subgradient.name())]
    sr_mode: SrMode,
    /// Proximal mode: gammas per BN left out of the L1 step (no layer is zeroed whole).
    #[arg(long, default_value_t = 0)]
    sr_keep: usize,
    /// Clip the gradient's global norm at this value in every stage (default: 10 in the train
    /// and fine-tune stages, none in sparse training, as the seed recipe trains it).
    #[arg(long)]
    clip: Option<f32>,
    /// Prune ratio in (0, 1) (unless a --target-* budget is given).
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    #[command(flatten)]
    budget: BudgetArgs,
    /// Which channel groups are candidates.
    #[arg(long, value_enum, default_value_t = PolicyArg::Groups)]
    policy: PolicyArg,
    /// Start from this trained .slim instead of the first training stage.
    #[arg(long)]
    trained: Option<PathBuf>,
    /// Optimizer of every training stage: auto, SGD or AdamW.
    #[arg(long, default_value = "auto")]
    optimizer: String,
    /// Initial learning rate (SGD/AdamW; auto picks its own).
    #[arg(long, default_value_t = 0.01)]
    lr0: f64,
    /// Nominal batch of the train and fine-tune stages: gradients accumulate to it.
    #[arg(long, default_value_t = 64)]
    nbs: usize,
    /// Nominal batch of sparse training (default: --batch, an optimizer step per batch; the
    /// L1 term acts once per step, so a small dataset needs many of them).
    #[arg(long)]
    sparse_nbs: Option<usize>,
    /// Parent folder of runs.
    #[arg(long, default_value = "runs/pipeline")]
    project: PathBuf,
    /// Run name (a number is appended if it exists).
    #[arg(long, default_value = "run")]
    name: String,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Runs the whole slimming pipeline and prints its summary.
pub fn pipeline(a: PipelineArgs) -> Result<()> {
    let world = slimc::distributed::world()?;
    let spec = load_dataset_spec(&a.data)?;
    let imgsz = train_imgsz(a.imgsz);
    let opts = LoadOptions { seed: a.seed, ..Default::default() };
    let mut m = load_for_training(&a.model, spec.names.len(), imgsz, opts)?;
    check_finite(&m, &a.model)?;
    m.meta.names = spec.names.clone();
    let train = TrainConfig {
        data: Some(a.data),
        epochs: a.epochs,
        imgsz,
        batch: a.batch,
        seed: a.seed,
        sr: a.sr,
        sr_scope: a.sr_scope,
        sr_mode: a.sr_mode,
        sr_keep: a.sr_keep,
        clip: a.clip,
        optimizer: a.optimizer,
        lr0: a.lr0,
        nbs: a.nbs,
        ..TrainConfig::default()
    };
    if !(a.ratio > 0.0 && a.ratio < 1.0) {
        bail!("--ratio {} is outside (0, 1)", a.ratio);
    }
    train.validate()?;
    if a.sparse_epochs == Some(0) || a.finetune_epochs == Some(0) {
        bail!("--sparse-epochs and --finetune-epochs must be at least 1");
    }
    let cfg = PipelineConfig {
        train,
        sparse_epochs: a.sparse_epochs.unwrap_or(a.epochs),
        sparse_nbs: a.sparse_nbs.unwrap_or(a.batch),
        finetune_epochs: a.finetune_epochs.unwrap_or(a.epochs),
        // Even C2f/C3k2/C2PSA halves, so pruned.pt and final.pt run in stock Ultralytics.
        prune: PruneOptions { ratio: a.ratio, policy: a.policy.into(), even_splits: true, ..Default::default() },
        budget: a.budget.budget()?,
        trained: a.trained,
        dir: root_run_dir(&world, &a.project, &a.name)?,
        device: a.device.into(),
    };
    if run_pipeline(m, &cfg, &world)?.is_some() {
        print!("{}", std::fs::read_to_string(cfg.dir.join("summary.md"))?);
    }
    Ok(())
}
