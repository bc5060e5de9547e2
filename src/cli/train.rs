//! Subcommands that train and evaluate: train, step, val.

use super::args::{
    load_for_training, refuse_overwrite, root_run_dir, run_dir, train_imgsz, val_split, DeviceArg, ModelArgs,
    TrainOptions,
};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use slimc::data::dataset::load_dataset_spec;
use slimc::device::Device;
use slimc::distributed::world;
use slimc::frontend::weights::write_safetensors;
use slimc::io;
use slimc::train::config::TrainConfig;
use slimc::train::step;
use slimc::train::trainer::Trainer;
use slimc::val::validate::{validate_ranks, ValOptions};
use slimc_ir::{Binary, Unary};
use std::path::{Path, PathBuf};

/// `slimc train`.
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    m: ModelArgs,
    #[command(flatten)]
    cfg: TrainOptions,
    /// Where to train and validate.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Continue the interrupted run whose last.slim is the model argument.
    #[arg(long)]
    resume: bool,
    /// Parent folder of runs.
    #[arg(long, default_value = "runs/detect")]
    project: PathBuf,
    /// Run name (a number is appended if it exists).
    #[arg(long, default_value = "train")]
    name: String,
}

/// Trains (or resumes) a run.
pub fn train(a: TrainArgs) -> Result<()> {
    let world = world()?;
    let backend = Device::from(a.device).backend_in(&world)?;
    if a.resume {
        // A resumed run keeps its settings; --emulate-ranks alone may change how it is fed.
        let emulate = (a.cfg.emulate_ranks != 1).then_some(a.cfg.emulate_ranks);
        let t = Trainer::resume(Path::new(&a.m.model), backend, world.clone(), emulate)?;
        if world.is_root() {
            eprintln!("device: {}", Device::from(a.device).describe());
        }
        t.run()?;
        return Ok(());
    }
    let mut cfg = TrainConfig::from(a.cfg);
    let Some(data) = cfg.data.clone() else { bail!("--data is required (a dataset YAML), unless --resume") };
    if cfg.batch == 0 || cfg.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    let spec = load_dataset_spec(&data)?;
    if let Some(nc) = a.m.nc.filter(|&nc| nc != spec.names.len()) {
        bail!("--nc {nc}, but {} names {} classes", data.display(), spec.names.len());
    }
    cfg.imgsz = train_imgsz(a.m.imgsz.map(|s| s[0].max(s[1])).unwrap_or(640));
    cfg.seed = a.m.seed;
    let mut model = load_for_training(&a.m.model, spec.names.len(), cfg.imgsz, a.m.options())?;
    model.meta.names = spec.names.clone();
    cfg.save_dir = root_run_dir(&world, &a.project, &a.name)?;
    let root = world.is_root();
    let t = Trainer::new(model, cfg, backend, world)?;
    if root {
        eprintln!("device: {}", Device::from(a.device).describe());
    }
    t.run()?;
    Ok(())
}

/// `slimc step`.
#[derive(Args)]
pub struct StepArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Image batch (float32 NCHW, RGB in [0, 1]).
    #[arg(long)]
    images: PathBuf,
    /// Targets JSON: batch_idx, cls and bboxes (normalised cx, cy, w, h) lists.
    #[arg(long)]
    targets: PathBuf,
    /// Network slimming's L1 rate: adds sr·sign(gamma) to every BN gamma's gradient.
    #[arg(long, default_value_t = 0.0)]
    sr: f32,
    /// Write every parameter gradient (Ultralytics names) to this safetensors file.
    #[arg(long)]
    dump_grads: Option<PathBuf>,
    /// Write the BN running statistics after the step to this safetensors file.
    #[arg(long)]
    dump_bn: Option<PathBuf>,
    /// Where the step runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Runs one training step and prints the loss components.
pub fn step(a: StepArgs) -> Result<()> {
    let inputs = [a.m.input_files(), vec![a.images.clone(), a.targets.clone()]];
    for out in a.dump_grads.iter().chain(&a.dump_bn) {
        refuse_overwrite(out, &inputs)?;
    }
    let model = a.m.load()?;
    let x = io::read_npy(&a.images)?;
    let t = step::read_targets(&a.targets)?;
    let start = std::time::Instant::now();
    let backend = Device::from(a.device).backend()?;
    let mut program = step::Program::new(&model, &*backend).map_err(|e| anyhow!("{}: {e:#}", a.m.model))?;
    let mut r = program.gradients(&x, &t).map_err(|e| anyhow!("{}: {e:#}", a.m.model))?;
    if a.sr != 0.0 {
        // The subgradient term as the training step's IR computes it: g + sign(γ)·sr.
        use slimc_ir::{eval::eval, Op, Tensor};
        let sr = Tensor::from_f32(vec![1], vec![a.sr])?;
        for name in &program.gammas {
            let sign = eval(&Op::Unary(Unary::Sign), &[&program.read(name)?])?.remove(0);
            let term = eval(&Op::Binary(Binary::Mul), &[&sign, &sr])?.remove(0);
            let g = r.grads.get_mut(name).ok_or_else(|| anyhow!("no gradient for BN gamma {name}"))?;
            *g = eval(&Op::Binary(Binary::Add), &[g, &term])?.remove(0);
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if let Some(p) = &a.dump_grads {
        write_safetensors(p, &r.grads)?;
    }
    if let Some(p) = &a.dump_bn {
        write_safetensors(p, &r.running)?;
    }
    let gnorm =
        r.grads.values().flat_map(|g| g.f32s().unwrap_or(&[]).iter()).map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    if a.json {
        let j = serde_json::json!({
            "box_loss": r.items[0], "cls_loss": r.items[1], "dfl_loss": r.items[2],
            "loss_total": r.total, "grad_norm": gnorm, "parameters": r.grads.len(), "ms": ms,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("{:>10} {:>10} {:>10} {:>12} {:>12}", "box_loss", "cls_loss", "dfl_loss", "total", "grad norm");
    println!("{:>10.6} {:>10.6} {:>10.6} {:>12.6} {:>12.6}", r.items[0], r.items[1], r.items[2], r.total, gnorm);
    println!(
        "{} parameter gradients, batch {} at {}x{}, {ms:.0} ms on {}",
        r.grads.len(),
        x.shape[0],
        x.shape[2],
        x.shape[3],
        Device::from(a.device).describe()
    );
    Ok(())
}

/// `slimc val`.
#[derive(Args)]
pub struct ValArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Dataset YAML.
    #[arg(long)]
    data: PathBuf,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Write every detection (original-image pixels) as JSON.
    #[arg(long)]
    save_json: Option<PathBuf>,
    /// Where validation runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Machine-readable metrics.
    #[arg(long)]
    json: bool,
    /// Write Ultralytics' validation plots into the run folder (PR, F1, P, R curves with their
    /// CSV numbers, confusion matrices, val_batchN_labels/pred.jpg); --no-plots to skip.
    #[arg(long, overrides_with = "no_plots")]
    plots: bool,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
    /// Parent folder of runs (for the plots).
    #[arg(long, default_value = "runs/detect")]
    project: PathBuf,
    /// Run name (a number is appended if it exists).
    #[arg(long, default_value = "val")]
    name: String,
}

/// Validates a model and prints Ultralytics' table.
pub fn val(a: ValArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if let Some(out) = &a.save_json {
        refuse_overwrite(out, &[a.m.input_files(), vec![a.data.clone()]])?;
    }
    let model = a.m.load()?;
    let imgsz = a.m.imgsz.map(|s| s[0].max(s[1])).unwrap_or(model.meta.imgsz[0].max(model.meta.imgsz[1]));
    let (spec, split) = val_split(&a.data, imgsz)?;
    // Under mpirun each rank validates its share of the batches and rank 0 reports the whole.
    let world = world()?;
    let backend = Device::from(a.device).backend_in(&world)?;
    let plots = !a.no_plots;
    let opts = ValOptions {
        batch: a.batch,
        keep_predictions: a.save_json.is_some(),
        bar: !a.json && world.is_root(),
        plot_batches: if plots { 3 } else { 0 },
    };
    let r = validate_ranks(&*backend, &model, &split, spec.names.len(), &opts, &world)?;
    if !world.is_root() {
        return Ok(());
    }
    if let Some(p) = &a.save_json {
        slimc_ir::write_atomic(p, serde_json::to_string_pretty(&r.predictions)?.as_bytes())?;
        eprintln!("wrote {} detections to {}", r.predictions.len(), p.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.metrics)?);
    } else {
        print!("{}", r.table(&spec.names));
        println!(
            "Speed: {:.1} ms per image (inference, loss and NMS) at {imgsz} on {}",
            r.ms_per_image,
            Device::from(a.device).describe()
        );
    }
    if plots {
        let dir = run_dir(&a.project, &a.name)?;
        let files = slimc::plot::val::save_val_plots(&r, &spec.names, &dir)?;
        eprintln!("wrote {} plots and tables to {}", files.len(), dir.display());
    }
    Ok(())
}
