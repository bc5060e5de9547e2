//! Subcommands that read, transform and emit one model: import, info, dump, run, opt, export,
//! verify.

use super::args::{parse_imgsz, refuse_overwrite, save, sr_mode_values, DeviceArg, ModelArgs};
use anyhow::{anyhow, bail, Result};
use clap::Args;
use slimc::backend::run_once;
use slimc::commands::{info, verify};
use slimc::device::Device;
use slimc::load::{load_model, LoadOptions};
use slimc::{export, io};
use slimc_ir::{print_graph, Tensor};
use slimc_passes::{all_passes, sequences, Analysis, PassContext, PassManager, Sparsity, SrMode, UpdateRule};
use std::path::PathBuf;

/// `slimc import`.
#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Output .slim file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Lowers a model and writes it as a .slim file.
pub fn import(a: ImportArgs) -> Result<()> {
    refuse_overwrite(&a.output, &[a.m.input_files()])?;
    let model = a.m.load()?;
    save(&model, &a.output)?;
    println!("wrote {} ({} nodes, {} tensors)", a.output.display(), model.graph.nodes.len(), model.tensors.len());
    Ok(())
}

/// `slimc info`.
#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    m: Option<ModelArgs>,
    /// List the GPU adapters wgpu finds (backend, type, key limits) instead of a model.
    #[arg(long, conflicts_with_all = ["model", "memory"])]
    devices: bool,
    /// Describe the CPU and the vector kernels slimc runs on it instead of a model.
    #[arg(long, conflicts_with_all = ["model", "memory", "devices"])]
    cpu: bool,
    /// Also print the planned memory of inference and of one training step.
    #[arg(long)]
    memory: bool,
    /// Batch size the memory is planned for.
    #[arg(long, default_value_t = 1, requires = "memory")]
    batch: usize,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Digits grouped by thousands: 2590035 → 2,590,035.
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

/// Prints the model summary.
pub fn info(a: InfoArgs) -> Result<()> {
    if a.devices {
        return print_devices(a.json);
    }
    if a.cpu {
        return print_cpu(a.json);
    }
    let Some(m) = &a.m else { bail!("slimc info needs a model, --devices or --cpu") };
    let model = m.load()?;
    let i = info::model_info(&model, m.imgsz)?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mem =
        if a.memory { Some(info::memory_info(&model, a.batch, m.imgsz.unwrap_or(model.meta.imgsz))?) } else { None };
    if a.json {
        let j = serde_json::json!({ "model": i, "memory": mem });
        println!("{}", serde_json::to_string_pretty(if mem.is_some() { &j } else { &j["model"] })?);
        return Ok(());
    }
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
    if let Some(m) = mem {
        print_memory(&m);
    }
    Ok(())
}

/// The GPU adapters, best first (the one `--device gpu` takes), and what `--device auto` picks.
fn print_devices(json: bool) -> Result<()> {
    let all = slimc::backend::gpu::adapters();
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name, "backend": a.backend, "type": a.kind, "driver": a.driver, "hardware": a.hardware,
                    "max_storage_binding": a.max_binding, "max_buffer": a.max_buffer,
                    "max_workgroups_per_dimension": a.max_workgroups, "workgroup_memory": a.workgroup_memory,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no GPU adapter found (Vulkan, Metal, DX12 or GL): --device gpu is unavailable, auto runs on the cpu");
        return Ok(());
    }
    let mb = |b: u64| format!("{} MB", b >> 20);
    println!(
        "{:<3} {:<36} {:<7} {:<14} {:>12} {:>12} {:>10} {:>9}  driver",
        "#", "adapter", "backend", "type", "max binding", "max buffer", "workgroups", "wg memory"
    );
    for (k, a) in all.iter().enumerate() {
        println!(
            "{:<3} {:<36} {:<7} {:<14} {:>12} {:>12} {:>10} {:>6} KB  {}",
            k,
            a.name,
            a.backend,
            a.kind,
            mb(a.max_binding),
            mb(a.max_buffer),
            a.max_workgroups,
            a.workgroup_memory / 1024,
            a.driver
        );
    }
    let auto = match all.iter().find(|a| a.hardware) {
        Some(a) => format!("auto picks {}", a.name),
        None => "auto picks the cpu (no hardware GPU; software adapters only with --device gpu)".into(),
    };
    println!("--device gpu takes #0; {auto}");
    Ok(())
}

/// The CPU, the vector levels it can run and the kernels chosen (`SLIMC_CPU_KERNELS` overrides).
fn print_cpu(json: bool) -> Result<()> {
    use slimc::backend::cpu::isa;
    let active = isa::active();
    let threads = rayon::current_num_threads();
    let levels: Vec<_> = isa::supported().iter().map(|l| l.name()).collect();
    if json {
        let v = serde_json::json!({
            "cpu": isa::cpu_model(), "arch": std::env::consts::ARCH, "threads": threads,
            "levels": levels, "kernels": active.name(), "gemm": isa::gemm_kernels(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("cpu:      {} ({}, {threads} threads)", isa::cpu_model(), std::env::consts::ARCH);
    println!("levels:   {} (the CPU can run)", levels.join(", "));
    let how = if std::env::var_os("SLIMC_CPU_KERNELS").is_some() { "set by SLIMC_CPU_KERNELS" } else { "the widest" };
    println!("kernels:  {} — {} ({how})", active.name(), active.describe());
    println!("gemm:     {}", isa::gemm_kernels());
    Ok(())
}

/// The memory plan as a table.
fn print_memory(m: &info::MemoryInfo) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / (1u64 << 20) as f64);
    println!("planned memory at batch {}, {}x{}:", m.batch, m.imgsz[0], m.imgsz[1]);
    println!("  {:<34} {:>12}", "parameters and buffers", mb(m.parameters));
    println!("  {:<34} {:>12}  (live peak {})", "inference arena", mb(m.inference_arena), mb(m.inference_live_peak));
    println!(
        "  {:<34} {:>12}  (live peak {}, {} slots)",
        "training step arena",
        mb(m.train_arena),
        mb(m.train_live_peak),
        m.train_slots
    );
    println!("  {:<34} {:>12}  (AdamW {})", "optimizer state (SGD)", mb(m.sgd_state), mb(m.adamw_state));
    println!("  {:<34} {:>12}", "EMA", mb(m.ema));
    println!(
        "  {:<34} {:>12}  (AdamW {})",
        "training total (SGD)",
        mb(m.parameters + m.train_arena + m.sgd_state + m.ema),
        mb(m.parameters + m.train_arena + m.adamw_state + m.ema)
    );
}

/// Prints the IR.
pub fn dump(m: ModelArgs) -> Result<()> {
    print!("{}", print_graph(&m.load()?.graph));
    Ok(())
}

/// `slimc run`.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Input array (float32, NCHW).
    #[arg(long)]
    input: PathBuf,
    /// Output array (the first graph output).
    #[arg(short, long)]
    output: PathBuf,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// Runs the model on an .npy input.
pub fn run(a: RunArgs) -> Result<()> {
    refuse_overwrite(&a.output, &[a.m.input_files(), vec![a.input.clone()]])?;
    let model = a.m.load()?;
    let x = io::read_npy(&a.input)?;
    let backend = Device::from(a.device).backend()?;
    let t = std::time::Instant::now();
    let y = run_once(&*backend, &model, &[x]).map_err(|e| anyhow!("{}: {e:#}", a.m.model))?;
    io::write_npy(&a.output, &y[0])?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!("wrote {} {:?} in {ms:.1} ms on {}", a.output.display(), y[0].shape, Device::from(a.device).describe());
    Ok(())
}

/// `slimc opt`.
#[derive(Args)]
pub struct OptArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Comma-separated pass and analysis names (see --list-passes).
    #[arg(long, default_value = "")]
    passes: String,
    /// Print the IR after every pass (to stderr).
    #[arg(long)]
    print_ir_after_all: bool,
    /// Print the IR before each pass of this name (repeatable).
    #[arg(long, value_name = "NAME")]
    print_before: Vec<String>,
    /// Print the IR and the analyses held after each pass of this name (repeatable).
    #[arg(long, value_name = "NAME")]
    print_after: Vec<String>,
    /// Skip the pass of this name (repeatable).
    #[arg(long, value_name = "NAME")]
    disable_pass: Vec<String>,
    /// Print a per-pass timing table.
    #[arg(long)]
    time_passes: bool,
    /// List the passes, analyses and pipelines, and exit.
    #[arg(long)]
    list_passes: bool,
    /// The `optimizer` pass's update rule: sgd or adamw.
    #[arg(long, default_value = "sgd", value_parser = ["sgd", "adamw"])]
    optimizer: String,
    /// The `optimizer` pass's L1 term on every BN gamma: subgradient or proximal (none if not
    /// given).
    #[arg(long, value_parser = sr_mode_values())]
    sr_mode: Option<SrMode>,
    /// The `optimizer` pass's data-parallel ranks: above 1, one `all_reduce` sums the
    /// accumulated gradients across them before the L1 term, the norm and the update.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    world_size: u32,
    /// Output .slim file.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Runs passes over a model.
pub fn opt(a: OptArgs) -> Result<()> {
    if a.list_passes {
        println!("passes:");
        for p in all_passes() {
            println!("  {:16} {}", p.name(), p.summary());
        }
        println!("analyses:");
        for an in Analysis::ALL {
            println!("  {:16} {}", an.name(), an.summary());
        }
        println!("pipelines (what slimc's commands run):");
        for p in sequences::ALL {
            println!("  {:16} {}  [{}]", p.name, p.summary, p.passes.join(","));
        }
        return Ok(());
    }
    let pm = PassManager::parse(&a.passes)?
        .print_ir_after_all(a.print_ir_after_all)
        .print_before(&a.print_before)?
        .print_after(&a.print_after)?
        .disable(&a.disable_pass)?
        .time_passes(a.time_passes);
    if let Some(o) = &a.output {
        refuse_overwrite(o, &[a.m.input_files()])?;
    }
    let mut model = a.m.load()?;
    let mut cx = PassContext::default();
    if a.optimizer == "adamw" {
        cx.optimizer.rule = UpdateRule::AdamW;
    }
    cx.optimizer.sparsity = a.sr_mode.map(|mode| Sparsity { gammas: None, mode, keep: 0 });
    cx.optimizer.world_size = a.world_size as usize;
    let reports = pm.run_with(&mut model, &mut cx)?;
    if !a.time_passes {
        for r in &reports {
            eprintln!(
                "{:16} {:>5} -> {:<5} nodes  {:8.2} ms{}",
                r.name,
                r.nodes.0,
                r.nodes.1,
                r.time.as_secs_f64() * 1e3,
                if r.analysis {
                    "  (analysis)"
                } else if r.changed {
                    ""
                } else {
                    "  (no change)"
                }
            );
        }
    }
    let printed = a.print_ir_after_all || !a.print_after.is_empty() || !a.print_before.is_empty();
    match a.output {
        Some(o) => save(&model, &o)?,
        None if !printed => print!("{}", print_graph(&model.graph)),
        None => {}
    }
    Ok(())
}

/// `slimc export`.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Output file: .onnx, or .pt (an Ultralytics checkpoint).
    #[arg(short, long)]
    output: PathBuf,
    /// onnx, or pt (an Ultralytics checkpoint Ultralytics loads, fine-tunes and exports); by
    /// default the output's extension decides, else onnx.
    #[arg(long, value_parser = ["onnx", "pt"])]
    format: Option<String>,
    /// pt: fp32 tensors (Ultralytics saves fp16).
    #[arg(long)]
    fp32: bool,
    /// ONNX opset (13-22).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Symbolic batch, height and width.
    #[arg(long)]
    dynamic: bool,
    /// Keep BatchNormalization nodes (by default they are folded into the convs).
    #[arg(long)]
    keep_bn: bool,
}

/// Writes the model as ONNX or as an Ultralytics checkpoint.
pub fn export(a: ExportArgs) -> Result<()> {
    refuse_overwrite(&a.output, &[a.m.input_files()])?;
    let model = a.m.load()?;
    let by_extension = a.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("pt"));
    if a.format.as_deref() == Some("pt") || (a.format.is_none() && by_extension) {
        export::pt::save_pt(&model, &a.output, export::pt::PtOptions { fp32: a.fp32 })?;
        let bytes = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({:.1} MB, Ultralytics checkpoint, {})",
            a.output.display(),
            bytes as f64 / 1e6,
            if a.fp32 { "fp32" } else { "fp16" }
        );
        return Ok(());
    }
    let opts = export::ExportOptions { opset: a.opset, imgsz: a.m.imgsz, dynamic: a.dynamic, keep_bn: a.keep_bn };
    let out = export::export_onnx(&model, &opts)?;
    slimc_ir::write_atomic(&a.output, &out.bytes)?;
    println!(
        "wrote {} ({:.1} MB, opset {}{})",
        a.output.display(),
        out.bytes.len() as f64 / 1e6,
        a.opset,
        if a.dynamic { ", dynamic" } else { "" }
    );
    if out.flushed > 0 {
        println!("{} subnormal weights set to zero (they slow inference on x86 several times)", out.flushed);
    }
    Ok(())
}

/// `slimc verify`.
#[derive(Args)]
pub struct VerifyArgs {
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
}

/// A seeded uniform [0, 1) image tensor.
fn random_input(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|_| rng.random::<f32>()).collect()).expect("sized")
}

/// Checks an ONNX file with tract and onnxruntime against the interpreter.
pub fn verify(a: VerifyArgs) -> Result<()> {
    let opts = LoadOptions { imgsz: a.imgsz, ..Default::default() };
    let imported = load_model(&a.onnx.display().to_string(), &opts)?;
    // The default input takes the ONNX file's own input size (its metadata's where the input
    // is symbolic), whatever the reference model was built for.
    let onnx_size = {
        let t = imported.graph.ty(imported.graph.inputs[0]);
        match (t.shape.get(2).and_then(|d| d.fixed()), t.shape.get(3).and_then(|d| d.fixed())) {
            (Some(h), Some(w)) => [h, w],
            _ => imported.meta.imgsz,
        }
    };
    let reference = match &a.against {
        Some(r) => load_model(r, &opts)?,
        None => imported,
    };
    let x = match &a.input {
        Some(p) => io::read_npy(p)?,
        None => {
            let size = a.imgsz.unwrap_or(onnx_size);
            random_input(&[1, 3, size[0], size[1]], 0)
        }
    };
    // The reference side is the CPU backend, the reference every other backend is tested against.
    let want = run_once(&slimc::backend::cpu::Cpu, &reference, std::slice::from_ref(&x))?;
    let rows = verify::verify_onnx(&a.onnx, &x, &want, a.tol)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<12} {:>6} {:>12} {:>12}  {}", "engine", "output", "max abs", "max rel", "status");
        for r in &rows {
            let status = if r.ok { "ok" } else { "FAIL" };
            println!("{:<12} {:>6} {:>12.3e} {:>12.3e}  {status}", r.engine, r.output, r.max_abs, r.max_rel);
        }
    }
    if rows.iter().any(|r| !r.ok) {
        bail!("{}: outputs differ from the interpreter beyond --tol {:e}", a.onnx.display(), a.tol);
    }
    Ok(())
}
