//! The `slimc` command line: one module per family of subcommands, shared arguments in
//! [`args`].

mod args;
mod model;
mod predict;
mod slimming;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The command line.
#[derive(Parser)]
#[command(name = "slimc", version, about = "Network slimming of Ultralytics YOLO detectors (YOLO11, YOLOv8, YOLOv5u, YOLO12), as a compiler", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Most memory (GB) a model run may plan for its intermediate values; default: what the
    /// machine has available. A run that needs more is refused before it allocates.
    #[arg(long, global = true, value_name = "GB")]
    max_memory: Option<f64>,
    /// Let GPU drivers print while slimc probes adapters (silenced by default: headless, the
    /// GL probe's messages read as failures).
    #[arg(long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lower a YAML, .pt or ONNX model to a .slim model file.
    ///
    /// Example: slimc import yolo11n.yaml --nc 1 --weights best.safetensors -o model.slim
    Import(model::ImportArgs),
    /// Print layers, parameters, gradients and GFLOPs as Ultralytics' model.info() does.
    ///
    /// Example: slimc info yolo11s.yaml --json
    Info(model::InfoArgs),
    /// Print the model's IR in its text form.
    ///
    /// Example: slimc dump yolo11n.yaml > yolo11n.slimir
    Dump(args::ModelArgs),
    /// Run the model (on --device cpu, gpu or auto): .npy in, .npy out.
    ///
    /// Example: slimc run model.slim --input x.npy -o y.npy
    Run(model::RunArgs),
    /// Run IR passes and analyses and write the result.
    ///
    /// Example: slimc opt yolo11n.yaml --passes fold-bn,dce --time-passes -o fused.slim
    Opt(model::OptArgs),
    /// Export to ONNX laid out as Ultralytics' export (images -> output0).
    ///
    /// Example: slimc export model.slim --imgsz 640 -o model.onnx
    Export(model::ExportArgs),
    /// One training step (forward and backward, BN in training mode) on given tensors: prints
    /// the loss components, the debugging view of the training numerics.
    ///
    /// Example: slimc step yolo11n.yaml --nc 1 --weights w.safetensors --images x.npy --targets t.json --dump-grads g.safetensors
    Step(train::StepArgs),
    /// Plot the BN |gamma| distribution of one model, or of two overlaid (before and after
    /// sparse training), plus a per-layer grid (<output stem>_layers.png).
    ///
    /// Example: slimc bn-hist runs/detect/train/weights/last.slim runs/detect/sparse/weights/last.slim -o gamma.png
    BnHist(slimming::BnHistArgs),
    /// Prune channels by BN |gamma| (the prune pipeline: group-channels, select-channels,
    /// propagate-masks, rewrite-widths) and print what changed per layer.
    ///
    /// Example: slimc prune runs/detect/sparse/weights/last.slim --ratio 0.5 --policy groups -o pruned.slim
    ///
    /// Budget:  slimc prune sparse.slim --target-gflops 60% -o pruned.slim   (also --target-params, --target-latency)
    /// Sweep:   slimc prune sparse.slim --sweep 0.1:0.9:0.1 --data trees.yaml  (table, sweep.csv, sweep.png)
    Prune(slimming::PruneArgs),
    /// Train a detector as Ultralytics does (on --device cpu, gpu or auto): validation every
    /// epoch, results.csv, results.png, weights/last.slim and weights/best.slim.
    ///
    /// Example: slimc train yolo11n.yaml --data trees.yaml --epochs 60 --imgsz 320 --batch 8
    /// Resume:  slimc train runs/detect/train/weights/last.slim --resume
    Train(train::TrainArgs),
    /// The whole slimming pipeline: train, sparse train, bn-hist, prune, fine-tune, val, export,
    /// verify; every artefact and summary.md / summary.json in one run folder.
    ///
    /// Example: slimc pipeline --model yolo11n.yaml --data datasets/trees/trees.yaml --epochs 60 --sr 1e-2 --ratio 0.5
    ///
    /// An option given twice takes its last value (so `./run main --epochs 60` overrides the
    /// main job's default).
    #[command(args_override_self = true)]
    Pipeline(slimming::PipelineArgs),
    /// Validate a model on a dataset's val split and print Ultralytics' table.
    ///
    /// Example: slimc val runs/detect/train/weights/best.slim --data trees.yaml --save-json preds.json
    Val(train::ValArgs),
    /// Run a model on images: annotated images, YOLO-format labels and JSON, as Ultralytics'
    /// predict writes them.
    ///
    /// Example: slimc predict best.slim --source datasets/trees/images/val --save-txt
    /// Compare: slimc predict final.slim --source imgs/ --compare trained.slim
    Predict(predict::PredictArgs),
    /// Check an ONNX file with tract and onnxruntime against slimc's interpreter.
    ///
    /// Example: slimc verify model.onnx --against model.slim --input x.npy
    Verify(model::VerifyArgs),
}

/// Parses the command line and runs the subcommand.
pub fn main() -> Result<()> {
    run(<Cli as clap::Parser>::parse())
}

/// Runs the subcommand.
pub fn run(cli: Cli) -> Result<()> {
    slimc::backend::gpu::show_driver_messages(cli.verbose);
    slimc::backend::cpu::isa::from_env().map_err(anyhow::Error::msg)?;
    if let Some(gb) = cli.max_memory {
        if !(gb.is_finite() && gb > 0.0) {
            anyhow::bail!("--max-memory {gb}: expected a positive number of GB");
        }
        slimc::backend::budget::set_limit((gb * (1u64 << 30) as f64) as u64);
    }
    match cli.cmd {
        Cmd::Import(a) => model::import(a),
        Cmd::Info(a) => model::info(a),
        Cmd::Dump(m) => model::dump(m),
        Cmd::Run(a) => model::run(a),
        Cmd::Opt(a) => model::opt(a),
        Cmd::Export(a) => model::export(a),
        Cmd::Step(a) => train::step(a),
        Cmd::BnHist(a) => slimming::bn_hist(a),
        Cmd::Prune(a) => slimming::prune(a),
        Cmd::Train(a) => train::train(a),
        Cmd::Pipeline(a) => slimming::pipeline(a),
        Cmd::Val(a) => train::val(a),
        Cmd::Predict(a) => predict::predict(a),
        Cmd::Verify(a) => model::verify(a),
    }
}
