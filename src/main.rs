//! The `slimc` command line: a compiler driver for network slimming of YOLO11.

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use slimc::frontend::weights::write_safetensors;
use slimc::load::{format_of, load_model, LoadOptions, ModelFormat};
use slimc::pipeline::{run_pipeline, PipelineConfig};
use slimc::prune;
use slimc::train::optim::SrMode;
use slimc::train::step;
use slimc::train::trainer::{TrainConfig, Trainer};
use slimc::val::validate::validate;
use slimc::{backend::cpu, export, info, io, verify};
use slimc_ir::{print_graph, Model, Tensor};
use slimc_passes::{all_passes, Importance, PassManager, Policy, PruneOptions};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "slimc", version, about = "Network slimming of YOLO11 detectors, as a compiler", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a model argument is read or built.
#[derive(Args, Clone)]
struct ModelArgs {
    /// Model: a .slim file, an Ultralytics YAML (yolo11n.yaml ships inside slimc) or .pt checkpoint, or an .onnx file.
    model: String,
    /// Number of classes (YAML models; for a .pt of another class count, the tensors that fit are transferred).
    #[arg(long)]
    nc: Option<usize>,
    /// State dict to load into a YAML model: safetensors or a .pt (Ultralytics names, e.g. model.0.conv.weight).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Image size, `S` or `H,W`: a YAML model's reference size, or what fixes an ONNX file's symbolic input.
    #[arg(long, value_parser = parse_imgsz)]
    imgsz: Option<[usize; 2]>,
    /// Seed of the weight initialisation (YAML models).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        load_model(
            &self.model,
            &LoadOptions { nc: self.nc, weights: self.weights.clone(), imgsz: self.imgsz, seed: self.seed },
        )
    }
}

/// Pruning to a budget instead of a ratio: `N` or a share of the unpruned model's `F%`.
#[derive(Args, Clone, Default)]
struct BudgetArgs {
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
    fn budget(&self) -> Result<Option<prune::Budget>> {
        use prune::{Budget, Metric};
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

fn parse_imgsz(s: &str) -> std::result::Result<[usize; 2], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let nums: Vec<usize> = parts
        .iter()
        .map(|p| p.parse::<usize>().map_err(|_| format!("`{s}` is not S or H,W")))
        .collect::<std::result::Result<_, _>>()?;
    match nums.as_slice() {
        [s] if *s > 0 => Ok([*s, *s]),
        [h, w] if *h > 0 && *w > 0 => Ok([*h, *w]),
        _ => Err(format!("`{s}` is not S or H,W")),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Lower a YAML or ONNX model to a .slim model file.
    ///
    /// Example: slimc import yolo11n.yaml --nc 1 --weights best.safetensors -o model.slim
    Import {
        #[command(flatten)]
        m: ModelArgs,
        /// Output .slim file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Print layers, parameters, gradients and GFLOPs as Ultralytics' model.info() does.
    ///
    /// Example: slimc info yolo11s.yaml --json
    Info {
        #[command(flatten)]
        m: ModelArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the model's IR in its text form.
    ///
    /// Example: slimc dump yolo11n.yaml > yolo11n.slimir
    Dump {
        #[command(flatten)]
        m: ModelArgs,
    },
    /// Run the model on the CPU interpreter: .npy in, .npy out.
    ///
    /// Example: slimc run model.slim --input x.npy -o y.npy
    Run {
        #[command(flatten)]
        m: ModelArgs,
        /// Input array (float32, NCHW).
        #[arg(long)]
        input: PathBuf,
        /// Output array (the first graph output).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Run IR passes and write the result.
    ///
    /// Example: slimc opt yolo11n.yaml --passes fold-bn,dce --print-ir-after-all -o fused.slim
    Opt {
        #[command(flatten)]
        m: ModelArgs,
        /// Comma-separated pass names (see --list-passes).
        #[arg(long, default_value = "")]
        passes: String,
        /// Print the IR after every pass (to stderr).
        #[arg(long)]
        print_ir_after_all: bool,
        /// List the available passes and exit.
        #[arg(long)]
        list_passes: bool,
        /// Output .slim file.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Export to ONNX laid out as Ultralytics' export (images -> output0).
    ///
    /// Example: slimc export model.slim --imgsz 640 -o model.onnx
    Export {
        #[command(flatten)]
        m: ModelArgs,
        /// Output .onnx file.
        #[arg(short, long)]
        output: PathBuf,
        /// ONNX opset (13-22).
        #[arg(long, default_value_t = 17)]
        opset: i64,
        /// Symbolic batch, height and width.
        #[arg(long)]
        dynamic: bool,
        /// Keep BatchNormalization nodes (by default they are folded into the convs).
        #[arg(long)]
        keep_bn: bool,
    },
    /// One training step (forward and backward, BN in training mode) on given tensors: prints
    /// the loss components, the debugging view of the training numerics.
    ///
    /// Example: slimc step yolo11n.yaml --nc 1 --weights w.safetensors --images x.npy --targets t.json --dump-grads g.safetensors
    Step {
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
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Plot the BN |gamma| distribution of one model, or of two overlaid (before and after
    /// sparse training), plus a per-layer grid (<output stem>_layers.png).
    ///
    /// Example: slimc bn-hist runs/detect/train/weights/last.slim runs/detect/sparse/weights/last.slim -o gamma.png
    BnHist {
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
    },
    /// Prune channels by BN |gamma| (group-channels, select-channels, propagate-masks,
    /// rewrite-widths) and print what changed per layer.
    ///
    /// Example: slimc prune runs/detect/sparse/weights/last.slim --ratio 0.5 --policy groups -o pruned.slim
    ///
    /// Budget:  slimc prune sparse.slim --target-gflops 60% -o pruned.slim   (also --target-params, --target-latency)
    /// Sweep:   slimc prune sparse.slim --sweep 0.1:0.9:0.1 --data trees.yaml  (table, sweep.csv, sweep.png)
    Prune {
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
        /// seed: the BNs the YOLOv11-Prune recipe prunes; groups: also residual- and concat-coupled groups.
        #[arg(long, default_value = "groups")]
        policy: String,
        /// How a group's |gamma| values combine: max, sum or mean.
        #[arg(long, default_value = "max")]
        importance: String,
        /// No layer keeps fewer channels than this.
        #[arg(long, default_value_t = 8)]
        min_channels: usize,
        /// Kept channel counts are rounded up to a multiple of this.
        #[arg(long, default_value_t = 8)]
        round_to: usize,
        /// Print the IR (and the analyses) after every pass.
        #[arg(long)]
        print_ir_after_all: bool,
        /// Output .slim file (not with --sweep).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Train a detector as Ultralytics does (CPU backend): validation every epoch, results.csv,
    /// results.png, weights/last.slim and weights/best.slim.
    ///
    /// Example: slimc train yolo11n.yaml --data trees.yaml --epochs 60 --imgsz 320 --batch 8
    /// Resume:  slimc train runs/detect/train/weights/last.slim --resume
    Train {
        #[command(flatten)]
        m: ModelArgs,
        #[command(flatten)]
        cfg: TrainConfig,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Continue the interrupted run whose last.slim is the model argument.
        #[arg(long)]
        resume: bool,
        /// Parent folder of runs.
        #[arg(long, default_value = "runs/detect")]
        project: PathBuf,
        /// Run name (a number is appended if it exists).
        #[arg(long, default_value = "train")]
        name: String,
    },
    /// The whole slimming pipeline: train, sparse train, bn-hist, prune, fine-tune, val, export,
    /// verify; every artefact and summary.md / summary.json in one run folder.
    ///
    /// Example: slimc pipeline --model yolo11n.yaml --data datasets/trees/trees.yaml --epochs 60 --sr 1e-2 --ratio 0.5
    ///
    /// An option given twice takes its last value (so `./run main --epochs 60` overrides the
    /// main job's default).
    #[command(args_override_self = true)]
    Pipeline {
        /// Model to start from (YAML, Ultralytics .pt, or .slim).
        #[arg(long, default_value = "yolo11n.yaml")]
        model: String,
        /// Dataset YAML.
        #[arg(long, default_value = "datasets/trees/trees.yaml")]
        data: PathBuf,
        /// Image size.
        #[arg(long, default_value_t = 320)]
        imgsz: usize,
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
        #[arg(long, value_enum, default_value_t = SrMode::Subgradient)]
        sr_mode: SrMode,
        /// Prune ratio in (0, 1) (unless a --target-* budget is given).
        #[arg(long, default_value_t = 0.5)]
        ratio: f64,
        #[command(flatten)]
        budget: BudgetArgs,
        /// seed or groups.
        #[arg(long, default_value = "groups")]
        policy: String,
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
    },
    /// Validate a model on a dataset's val split and print Ultralytics' table.
    ///
    /// Example: slimc val runs/detect/train/weights/best.slim --data trees.yaml --save-json preds.json
    Val {
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
        /// Machine-readable metrics.
        #[arg(long)]
        json: bool,
    },
    /// Check an ONNX file with tract and onnxruntime against slimc's interpreter.
    ///
    /// Example: slimc verify model.onnx --against model.slim --input x.npy
    Verify {
        /// The ONNX file to check.
        onnx: PathBuf,
        /// Reference model run by the interpreter (default: the ONNX file itself, imported).
        #[arg(long)]
        against: Option<String>,
        /// Input array; default: a seeded uniform [0, 1) image at the model's size.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Input size for the default input, `S` or `H,W`.
        #[arg(long, value_parser = parse_imgsz)]
        imgsz: Option<[usize; 2]>,
        /// Largest accepted error relative to max |reference|.
        #[arg(long, default_value_t = 1e-4)]
        tol: f32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    std::panic::set_hook(Box::new(|p| {
        eprintln!("slimc: internal error: {p} (please report this with the command you ran)");
    }));
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

fn parse_policy(policy: &str) -> Result<Policy> {
    match policy {
        "seed" => Ok(Policy::Seed),
        "groups" => Ok(Policy::Groups),
        p => bail!("--policy {p}: expected seed or groups"),
    }
}

/// Scores a model on a dataset's val split at `imgsz`: (mAP50, mAP50-95).
fn val_scorer(data: &Path, imgsz: usize) -> Result<impl FnMut(&Model) -> Result<(f64, f64)>> {
    let spec = slimc::data::dataset::load_dataset_spec(data)?;
    let nc = spec.names.len();
    let (samples, rep) = slimc::data::dataset::scan(&spec.val, nc, "val")?;
    for w in &rep.warnings {
        eprintln!("WARNING {w}");
    }
    let split = slimc::data::loader::Split::new(samples, imgsz, false)?;
    Ok(move |m: &Model| {
        let r = validate(m, &split, 16, nc, false, false)?;
        Ok((r.metrics.map50, r.metrics.map))
    })
}

fn save(model: &Model, path: &Path) -> Result<()> {
    if format_of(&path.display().to_string())? != ModelFormat::Slim {
        bail!("{}: the output must be a .slim file", path.display());
    }
    model.save(path)?;
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `project/name`, or `project/name2`, `name3`, ... if it exists (as Ultralytics increments runs).
fn increment_dir(project: &Path, name: &str) -> PathBuf {
    let first = project.join(name);
    if !first.exists() {
        return first;
    }
    (2..).map(|i| project.join(format!("{name}{i}"))).find(|p| !p.exists()).expect("some name is free")
}

/// A seeded uniform [0, 1) image tensor.
fn random_input(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| rng.random::<f32>()).collect()).expect("sized")
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Import { m, output } => {
            let model = m.load()?;
            save(&model, &output)?;
            println!("wrote {} ({} nodes, {} tensors)", output.display(), model.graph.nodes.len(), model.tensors.len());
        }
        Cmd::Info { m, json } => {
            let model = m.load()?;
            let i = info::model_info(&model, m.imgsz)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!(
                    "{} summary: {} layers, {} parameters, {} gradients, {:.1} GFLOPs (imgsz {}x{}, nc {}, {} IR nodes)",
                    i.name,
                    i.layers,
                    thousands(i.parameters),
                    thousands(i.gradients),
                    i.gflops,
                    i.imgsz[0],
                    i.imgsz[1],
                    i.nc,
                    i.nodes
                );
                for (k, v) in &i.origin {
                    println!("  {k:<14} {v}");
                }
            }
        }
        Cmd::Dump { m } => print!("{}", print_graph(&m.load()?.graph)),
        Cmd::Run { m, input, output } => {
            let model = m.load()?;
            let x = io::read_npy(&input)?;
            let t = std::time::Instant::now();
            let y = cpu::run(&model, &[x]).map_err(|e| anyhow!("{}: {e:#}", m.model))?;
            io::write_npy(&output, &y[0])?;
            println!("wrote {} {:?} in {:.1} ms", output.display(), y[0].shape, t.elapsed().as_secs_f64() * 1e3);
        }
        Cmd::Opt { m, passes, print_ir_after_all, list_passes, output } => {
            if list_passes {
                for p in all_passes() {
                    println!("{:16} {}", p.name(), p.summary());
                }
                return Ok(());
            }
            let pm = PassManager::parse(&passes)?.print_ir_after_all(print_ir_after_all);
            let mut model = m.load()?;
            for r in pm.run(&mut model)? {
                eprintln!(
                    "{:16} {:>5} -> {:<5} nodes  {:8.2} ms{}",
                    r.name,
                    r.nodes.0,
                    r.nodes.1,
                    r.time.as_secs_f64() * 1e3,
                    if r.changed { "" } else { "  (no change)" }
                );
            }
            match output {
                Some(o) => save(&model, &o)?,
                None if !print_ir_after_all => print!("{}", print_graph(&model.graph)),
                None => {}
            }
        }
        Cmd::Export { m, output, opset, dynamic, keep_bn } => {
            let model = m.load()?;
            let opts = export::ExportOptions { opset, imgsz: m.imgsz, dynamic, keep_bn };
            let bytes = export::export_onnx(&model, &opts)?;
            slimc_ir::write_atomic(&output, &bytes)?;
            println!(
                "wrote {} ({:.1} MB, opset {opset}{})",
                output.display(),
                bytes.len() as f64 / 1e6,
                if dynamic { ", dynamic" } else { "" }
            );
        }
        Cmd::Step { m, images, targets, sr, dump_grads, dump_bn, json } => {
            let model = m.load()?;
            let x = io::read_npy(&images)?;
            let t = step::read_targets(&targets)?;
            let start = std::time::Instant::now();
            let program = step::Program::new(&model).map_err(|e| anyhow!("{}: {e:#}", m.model))?;
            let mut r = program.step(&x, &t).map_err(|e| anyhow!("{}: {e:#}", m.model))?;
            if sr != 0.0 {
                program.add_sparsity(&mut r.grads, &program.gammas, sr)?;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if let Some(p) = &dump_grads {
                write_safetensors(p, &r.grads)?;
            }
            if let Some(p) = &dump_bn {
                write_safetensors(p, &r.running)?;
            }
            let gnorm = r
                .grads
                .values()
                .flat_map(|g| g.f32s().unwrap_or(&[]).iter())
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            if json {
                let j = serde_json::json!({
                    "box_loss": r.items[0], "cls_loss": r.items[1], "dfl_loss": r.items[2],
                    "loss_total": r.total, "grad_norm": gnorm, "parameters": r.grads.len(), "ms": ms,
                });
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!(
                    "{:>10} {:>10} {:>10} {:>12} {:>12}",
                    "box_loss", "cls_loss", "dfl_loss", "total", "grad norm"
                );
                println!(
                    "{:>10.6} {:>10.6} {:>10.6} {:>12.6} {:>12.6}",
                    r.items[0], r.items[1], r.items[2], r.total, gnorm
                );
                println!(
                    "{} parameter gradients, batch {} at {}x{}, {:.0} ms",
                    r.grads.len(),
                    x.shape[0],
                    x.shape[2],
                    x.shape[3],
                    ms
                );
            }
        }
        Cmd::BnHist { model, model2, output, scope, json } => {
            let mut models = vec![(model.clone(), load_model(&model, &LoadOptions::default())?)];
            if let Some(m2) = model2 {
                models.push((m2.clone(), load_model(&m2, &LoadOptions::default())?));
            }
            let (stats, grid) = slimc::bn_hist::bn_hist(&models, &scope, &output)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
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
                println!("wrote {} and {}", output.display(), grid.display());
            }
        }
        Cmd::Prune {
            m,
            ratio,
            budget,
            sweep,
            data,
            project,
            name,
            policy,
            importance,
            min_channels,
            round_to,
            print_ir_after_all,
            output,
            json,
        } => {
            let budget = budget.budget()?;
            let modes = ratio.is_some() as usize + budget.is_some() as usize + sweep.is_some() as usize;
            if modes != 1 {
                bail!("give exactly one of --ratio, a --target-* budget and --sweep");
            }
            let model = m.load()?;
            let opts = PruneOptions {
                ratio: ratio.unwrap_or(0.5),
                policy: parse_policy(&policy)?,
                importance: match importance.as_str() {
                    "max" => Importance::Max,
                    "sum" => Importance::Sum,
                    "mean" => Importance::Mean,
                    i => bail!("--importance {i}: expected max, sum or mean"),
                },
                min_channels,
                round_to,
            };
            if let Some(text) = sweep {
                if output.is_some() {
                    bail!("--sweep writes sweep.csv and sweep.png under --project/--name; -o does not apply");
                }
                let ratios = prune::parse_sweep(&text)?;
                let mut scorer = match &data {
                    Some(d) => Some(val_scorer(d, model.meta.imgsz[0].max(model.meta.imgsz[1]))?),
                    None => None,
                };
                let rows = prune::sweep(
                    &model,
                    &opts,
                    &ratios,
                    scorer.as_mut().map(|f| f as &mut dyn FnMut(&Model) -> Result<(f64, f64)>),
                )
                .map_err(|e| anyhow!("{}: {e:#}", m.model))?;
                let dir = increment_dir(&project, &name);
                std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
                slimc_ir::write_atomic(&dir.join("sweep.csv"), prune::sweep_csv(&rows).as_bytes())?;
                prune::plot_sweep(&rows, &dir.join("sweep.png"))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    print!("{}", prune::sweep_table(&rows));
                    println!("wrote {} and {}", dir.join("sweep.csv").display(), dir.join("sweep.png").display());
                }
                return Ok(());
            }
            let Some(output) = output else { bail!("-o/--output (the pruned .slim) is required") };
            let r = match budget {
                Some(b) => {
                    let r = prune::prune_to_budget(&model, &opts, b).map_err(|e| anyhow!("{}: {e:#}", m.model))?;
                    eprintln!("budget {}", r.describe());
                    r.pruned
                }
                None => prune::prune(&model, opts, print_ir_after_all).map_err(|e| anyhow!("{}: {e:#}", m.model))?,
            };
            save(&r.model, &output)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r.summary)?);
            } else {
                for c in &r.summary.clamped {
                    eprintln!("WARNING {c}");
                }
                print!("{}", r.summary.table());
                println!("wrote {}", output.display());
            }
        }
        Cmd::Train { m, mut cfg, device, resume, project, name } => {
            match device.as_str() {
                "cpu" | "auto" => {}
                "gpu" => bail!("--device gpu: the wgpu backend is not built yet; use --device cpu"),
                d => bail!("--device {d}: expected cpu, gpu or auto"),
            }
            if resume {
                Trainer::resume(Path::new(&m.model))?.run()?;
                return Ok(());
            }
            let Some(data) = cfg.data.clone() else { bail!("--data is required (a dataset YAML), unless --resume") };
            if cfg.batch == 0 || cfg.epochs == 0 {
                bail!("--batch and --epochs must be at least 1");
            }
            let spec = slimc::data::dataset::load_dataset_spec(&data)?;
            cfg.imgsz = m.imgsz.map(|s| s[0].max(s[1])).unwrap_or(640).div_ceil(32) * 32;
            cfg.seed = m.seed;
            let nc = spec.names.len();
            let mut model = match format_of(&m.model)? {
                ModelFormat::Yaml | ModelFormat::Pt => load_model(
                    &m.model,
                    &LoadOptions {
                        nc: Some(nc),
                        weights: m.weights.clone(),
                        imgsz: Some([cfg.imgsz; 2]),
                        seed: m.seed,
                    },
                )?,
                _ => m.load()?,
            };
            model.meta.names = spec.names.clone();
            cfg.save_dir = increment_dir(&project, &name);
            std::fs::create_dir_all(&cfg.save_dir)?;
            Trainer::new(model, cfg)?.run()?;
        }
        Cmd::Pipeline {
            model,
            data,
            imgsz,
            batch,
            epochs,
            sparse_epochs,
            finetune_epochs,
            sr,
            sr_scope,
            sr_mode,
            ratio,
            budget,
            policy,
            trained,
            optimizer,
            lr0,
            nbs,
            sparse_nbs,
            project,
            name,
            seed,
        } => {
            let spec = slimc::data::dataset::load_dataset_spec(&data)?;
            let imgsz = imgsz.div_ceil(32) * 32;
            let nc = spec.names.len();
            let opts = LoadOptions { nc: Some(nc), imgsz: Some([imgsz, imgsz]), seed, ..Default::default() };
            let mut m = match format_of(&model)? {
                ModelFormat::Yaml | ModelFormat::Pt => load_model(&model, &opts)?,
                _ => load_model(&model, &LoadOptions::default())?,
            };
            m.meta.names = spec.names.clone();
            let train = TrainConfig {
                data: Some(data),
                epochs,
                imgsz,
                batch,
                seed,
                sr,
                sr_scope,
                sr_mode,
                optimizer,
                lr0,
                nbs,
                ..TrainConfig::default()
            };
            let policy = parse_policy(&policy)?;
            let cfg = PipelineConfig {
                train,
                sparse_epochs: sparse_epochs.unwrap_or(epochs),
                sparse_nbs: sparse_nbs.unwrap_or(batch),
                finetune_epochs: finetune_epochs.unwrap_or(epochs),
                prune: PruneOptions { ratio, policy, ..Default::default() },
                budget: budget.budget()?,
                trained,
                dir: increment_dir(&project, &name),
            };
            if !(ratio > 0.0 && ratio < 1.0) {
                bail!("--ratio {ratio} is outside (0, 1)");
            }
            run_pipeline(m, &cfg)?;
            print!("{}", std::fs::read_to_string(cfg.dir.join("summary.md"))?);
        }
        Cmd::Val { m, data, batch, save_json, json } => {
            let spec = slimc::data::dataset::load_dataset_spec(&data)?;
            let model = m.load()?;
            let imgsz = m.imgsz.map(|s| s[0].max(s[1])).unwrap_or(model.meta.imgsz[0].max(model.meta.imgsz[1]));
            let (samples, rep) = slimc::data::dataset::scan(&spec.val, spec.names.len(), "val")?;
            for w in &rep.warnings {
                eprintln!("WARNING {w}");
            }
            eprintln!("{}", rep.summary("val"));
            let split = slimc::data::loader::Split::new(samples, imgsz, false)?;
            let r = validate(&model, &split, batch, spec.names.len(), save_json.is_some(), !json)?;
            if let Some(p) = &save_json {
                slimc_ir::write_atomic(p, serde_json::to_string_pretty(&r.predictions)?.as_bytes())?;
                eprintln!("wrote {} detections to {}", r.predictions.len(), p.display());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r.metrics)?);
            } else {
                print!("{}", r.table(&spec.names));
                println!("Speed: {:.1} ms per image (inference, loss and NMS) at {imgsz}", r.ms_per_image);
            }
        }
        Cmd::Verify { onnx, against, input, imgsz, tol, json } => {
            let reference = match &against {
                Some(a) => load_model(a, &LoadOptions { imgsz, ..Default::default() })?,
                None => load_model(&onnx.display().to_string(), &LoadOptions { imgsz, ..Default::default() })?,
            };
            let x = match &input {
                Some(p) => io::read_npy(p)?,
                None => {
                    let size = imgsz.unwrap_or(reference.meta.imgsz);
                    random_input(&[1, 3, size[0], size[1]], 0)
                }
            };
            let want = cpu::run(&reference, std::slice::from_ref(&x))?;
            let rows = verify::verify_onnx(&onnx, &x, &want, tol)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<12} {:>6} {:>12} {:>12}  {}", "engine", "output", "max abs", "max rel", "status");
                for r in &rows {
                    println!(
                        "{:<12} {:>6} {:>12.3e} {:>12.3e}  {}",
                        r.engine,
                        r.output,
                        r.max_abs,
                        r.max_rel,
                        if r.ok { "ok" } else { "FAIL" }
                    );
                }
            }
            if rows.iter().any(|r| !r.ok) {
                bail!("{}: outputs differ from the interpreter beyond --tol {tol:e}", onnx.display());
            }
        }
    }
    Ok(())
}
