//! `slimc pipeline`: train → sparse train → bn-hist → prune → fine-tune → val → export →
//! verify, every artefact in one run folder with summary.md and summary.json.

use crate::backend::run_once;
use crate::commands::bn_hist::bn_hist;
use crate::commands::info::model_info;
use crate::commands::prune::{prune, prune_to_budget, Budget};
use crate::commands::verify::{ort_latencies, verify_onnx};
use crate::data::dataset::{load_dataset_spec, scan};
use crate::data::loader::Loader;
use crate::device::Device;
use crate::distributed::World;
use crate::export::pt::{save_pt, PtOptions};
use crate::export::{export_onnx, ExportOptions};
use crate::plot::annotate::{mosaic, save_image, side_by_side};
use crate::plot::curves::{plot_lines, pr_mean, Line};
use crate::train::config::TrainConfig;
use crate::train::trainer::Trainer;
use crate::val::validate::{validate, ValOptions, ValResult};
use anyhow::{Context, Result};
use plotters::style::{RGBColor, BLUE};
use serde::Serialize;
use slimc_ir::{Model, Tensor};
use slimc_passes::PruneOptions;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The pipeline's settings.
pub struct PipelineConfig {
    /// Training settings shared by the three training stages (epochs is the first stage's).
    pub train: TrainConfig,
    /// Epochs of sparse training.
    pub sparse_epochs: usize,
    /// Nominal batch of sparse training: the L1 term acts once per optimizer step, so on a
    /// small dataset a smaller one (down to the batch) gives it enough steps.
    pub sparse_nbs: usize,
    /// Epochs of fine-tuning.
    pub finetune_epochs: usize,
    /// Pruning options (their ratio unless `budget` is set).
    pub prune: PruneOptions,
    /// Prune to this budget instead of the ratio.
    pub budget: Option<Budget>,
    /// A trained model to start from instead of the first training stage.
    pub trained: Option<PathBuf>,
    /// The run folder.
    pub dir: PathBuf,
    /// Where training, validation and the verification reference run.
    pub device: Device,
}

/// One row of the summary.
#[derive(Clone, Debug, Serialize)]
pub struct StageRow {
    /// Stage name.
    pub stage: String,
    /// Model file.
    pub model: String,
    /// Parameters.
    pub parameters: usize,
    /// GFLOPs at the training size.
    pub gflops: f64,
    /// onnxruntime CPU latency of the exported file, batch 1, ms (median of 100, all stages timed
    /// in turns at the end).
    pub ort_ms: f64,
    /// Validation mAP50.
    pub map50: f64,
    /// Validation mAP50-95.
    pub map50_95: f64,
    /// Share of BN |gamma| below 1e-2.
    pub gamma_below_1e_2: f64,
    /// Subnormal weights the export set to zero.
    pub subnormals_flushed: usize,
}

/// The pipeline's result.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// One row per stage.
    pub stages: Vec<StageRow>,
    /// Largest error of tract and onnxruntime against the interpreter on the final export.
    pub verify_max_rel: f32,
    /// Layers the floor kept wider than the ratio asked.
    pub clamped: Vec<String>,
    /// Stages whose onnxruntime latency did not fall with their GFLOPs.
    pub warnings: Vec<String>,
    /// The prune ratio used (chosen by the search when pruning to a budget).
    pub prune_ratio: f64,
    /// Wall time of the whole pipeline, s.
    pub seconds: f64,
}

fn stage_dir(cfg: &PipelineConfig, name: &str, epochs: usize) -> TrainConfig {
    let mut t = cfg.train.clone();
    t.epochs = epochs;
    t.sr = 0.0;
    t.save_dir = cfg.dir.join(name);
    t
}

/// Trains one stage (on every rank of `world`) and returns its `best.slim`, or its `last.slim`
/// with `last`, as rank 0 wrote it.
fn train_stage(model: Model, t: TrainConfig, last: bool, device: Device, world: &World) -> Result<Model> {
    let file = t.save_dir.join(if last { "weights/last.slim" } else { "weights/best.slim" });
    if world.is_root() {
        std::fs::create_dir_all(&t.save_dir)?;
    }
    Trainer::new(model, t, device.backend_in(world)?, world.clone())?.run()?;
    let mut m = world.model_from_root(|| Ok(Model::load(&file)?))?;
    m.training_state.clear();
    Ok(m)
}

/// Runs the whole pipeline on `model` (built with the dataset's classes) as one rank of
/// `world`: every rank trains each stage; rank 0 alone validates, prunes (its pruned model goes
/// to the others), exports, verifies and writes the summary, which only it returns.
pub fn run_pipeline(model: Model, cfg: &PipelineConfig, world: &World) -> Result<Option<Summary>> {
    let t0 = Instant::now();
    let device = cfg.device.resolve()?;
    let root = world.is_root();
    let backend = device.backend_in(world)?;
    if root {
        eprintln!("pipeline: device {}", cfg.device.describe());
        std::fs::create_dir_all(&cfg.dir).with_context(|| format!("{}", cfg.dir.display()))?;
    }
    let imgsz = cfg.train.imgsz;
    let spec = load_dataset_spec(cfg.train.data.as_deref().ok_or_else(|| anyhow::anyhow!("no dataset"))?)?;
    let nc = spec.names.len();
    let (samples, _) = scan(&spec.val, nc, "val")?;
    let val = Loader::new(samples, imgsz, true)?;
    let (mut rows, mut exports) = (vec![], vec![]);
    let mut row = |stage: &str, path: &Path, m: &Model| -> Result<ValResult> {
        let info = model_info(m, Some([imgsz, imgsz]))?;
        let v = validate(&*backend, m, &val, nc, &ValOptions { plot_batches: 1, ..ValOptions::quiet(16) })?;
        let onnx = path.with_extension("onnx");
        let exported = export_onnx(m, &ExportOptions { imgsz: Some([imgsz, imgsz]), ..Default::default() })?;
        slimc_ir::write_atomic(&onnx, &exported.bytes)?;
        let g = crate::commands::bn_hist::gammas(m, "all")?;
        let all: Vec<f32> = g.into_iter().flat_map(|l| l.1).collect();
        rows.push(StageRow {
            stage: stage.to_string(),
            model: path.display().to_string(),
            parameters: info.parameters,
            gflops: info.gflops,
            ort_ms: f64::NAN, // timed for all stages together at the end
            map50: v.metrics.map50,
            map50_95: v.metrics.map,
            gamma_below_1e_2: all.iter().filter(|x| **x < 1e-2).count() as f64 / all.len().max(1) as f64,
            subnormals_flushed: exported.flushed,
        });
        exports.push(onnx);
        eprintln!("pipeline: {stage}: mAP50 {:.3}, {} parameters", v.metrics.map50, info.parameters);
        Ok(v)
    };
    let save = |m: &Model, name: &str| -> Result<PathBuf> {
        let p = cfg.dir.join(name);
        m.save(&p)?;
        Ok(p)
    };
    // 1. Train (or start from a trained model).
    let trained = match &cfg.trained {
        Some(p) => {
            let mut m = world.model_from_root(|| Ok(Model::load(p)?))?;
            m.training_state.clear();
            m
        }
        None => train_stage(model, stage_dir(cfg, "1-train", cfg.train.epochs), false, device, world)?,
    };
    let trained_val = if root { Some(row("train", &save(&trained, "trained.slim")?, &trained)?) } else { None };
    // 2. Sparse training continues a trained model: no warm-up (a ramp from lr 0 would spend a
    // short run with the L1 term barely acting), and its last epoch is kept, the sparsest, rather
    // than the one with the best mAP.
    let mut t = stage_dir(cfg, "2-sparse", cfg.sparse_epochs);
    t.sr = cfg.train.sr;
    t.nbs = cfg.sparse_nbs;
    t.warmup_epochs = 0.0;
    let sparse = train_stage(trained.clone(), t, true, device, world)?;
    let pruned = if root {
        row("sparse", &save(&sparse, "sparse.slim")?, &sparse)?;
        // 3. The gamma distribution before and after.
        let (hist, _) = bn_hist(
            &[("trained".to_string(), trained), ("sparse".to_string(), sparse.clone())],
            &cfg.train.sr_scope,
            &cfg.dir.join("gamma.png"),
        )?;
        slimc_ir::write_atomic(&cfg.dir.join("gamma.json"), serde_json::to_string_pretty(&hist)?.as_bytes())?;
        // 4. Prune, at the ratio or as little as meets the budget.
        let pruned = match cfg.budget {
            Some(b) => {
                let r = prune_to_budget(&sparse, &cfg.prune, b)?;
                eprintln!("pipeline: {}", r.describe());
                r.pruned
            }
            None => prune(&sparse, cfg.prune.clone(), false)?,
        };
        std::fs::write(cfg.dir.join("prune.txt"), pruned.summary.table())?;
        row("pruned", &save(&pruned.model, "pruned.slim")?, &pruned.model)?;
        Some(pruned)
    } else {
        None
    };
    // The ranks fine-tune rank 0's pruned model.
    let pruned_model = world.model_from_root(|| Ok(pruned.as_ref().expect("rank 0 pruned").model.clone()))?;
    let Some(pruned) = pruned else {
        train_stage(pruned_model, stage_dir(cfg, "3-finetune", cfg.finetune_epochs), false, device, world)?;
        return Ok(None);
    };
    let trained_val = trained_val.expect("rank 0 validated");
    // The pruned and the final model as Ultralytics checkpoints, for its own tools (a model
    // without an Ultralytics architecture, say a .slim from before slimc kept one, gets none).
    let mut pt_warnings = vec![];
    let mut write_pt = |m: &Model, name: &str| {
        if let Err(e) = save_pt(m, &cfg.dir.join(name), PtOptions::default()) {
            pt_warnings.push(format!("{name} not written: {e:#}"));
        }
    };
    write_pt(&pruned.model, "pruned.pt");
    // 5. Fine-tune the narrower graph.
    let tuned = train_stage(pruned_model, stage_dir(cfg, "3-finetune", cfg.finetune_epochs), false, device, world)?;
    let final_path = save(&tuned, "final.slim")?;
    write_pt(&tuned, "final.pt");
    let final_val = row("fine-tuned", &final_path, &tuned)?;
    if let Err(e) = compare(&trained_val, &final_val, &spec.names, &cfg.dir) {
        eprintln!("WARNING before/after pictures: {e:#}");
    }
    // 6. Verify the final export.
    let x = Tensor::full(&[1, 3, imgsz, imgsz], 0.5);
    let want = run_once(&*backend, &tuned, std::slice::from_ref(&x))?;
    let checks = verify_onnx(&final_path.with_extension("onnx"), &x, &want, 1e-4)?;
    for (r, ms) in rows.iter_mut().zip(ort_latencies(&exports, [imgsz, imgsz], 10)?) {
        r.ort_ms = ms;
    }
    let mut warnings = latency_warnings(&rows);
    warnings.extend(pt_warnings);
    for w in &warnings {
        eprintln!("WARNING {w}");
    }
    let summary = Summary {
        warnings,
        stages: rows,
        verify_max_rel: checks.iter().map(|c| c.max_rel).fold(0.0, f32::max),
        clamped: pruned.summary.clamped,
        prune_ratio: pruned.summary.ratio,
        seconds: t0.elapsed().as_secs_f64(),
    };
    slimc_ir::write_atomic(&cfg.dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    slimc_ir::write_atomic(&cfg.dir.join("summary.md"), summary.markdown(cfg).as_bytes())?;
    if checks.iter().any(|c| !c.ok) {
        anyhow::bail!("the final ONNX export differs from the interpreter beyond 1e-4: {checks:?}");
    }
    Ok(Some(summary))
}

/// The stages with fewer GFLOPs than the first whose onnxruntime latency is not lower: a slimmed
/// model that runs slower than the dense one has something else costing time (subnormal
/// weights did, before export flushed them).
fn latency_warnings(rows: &[StageRow]) -> Vec<String> {
    let Some(first) = rows.first() else { return vec![] };
    rows.iter()
        .skip(1)
        .filter(|r| r.gflops < first.gflops && r.ort_ms >= first.ort_ms)
        .map(|r| {
            format!(
                "{}: {:.2} GFLOPs against {}'s {:.2}, but onnxruntime takes {:.2} ms against {:.2} ms",
                r.stage, r.gflops, first.stage, first.gflops, r.ort_ms, first.ort_ms
            )
        })
        .collect()
}

/// The trained and the final model side by side: `compare_val.jpg` (their detections on the
/// first val batch) and `compare_PR.png` (their all-classes PR curves).
fn compare(trained: &ValResult, tuned: &ValResult, names: &[String], dir: &Path) -> Result<()> {
    if let (Some(a), Some(b)) = (trained.kept.first(), tuned.kept.first()) {
        let (a, b) = (crate::plot::val::tiles(a).1, crate::plot::val::tiles(b).1);
        let titles = [
            format!("trained: mAP50 {:.3}", trained.metrics.map50),
            format!("final: mAP50 {:.3}", tuned.metrics.map50),
        ];
        let img = side_by_side(&mosaic(&a, names, 0.25)?, &mosaic(&b, names, 0.25)?, [&titles[0], &titles[1]])?;
        save_image(&img, &dir.join("compare_val.jpg"))?;
    }
    let line = |v: &ValResult, name: &str, color| Line {
        y: pr_mean(&v.metrics),
        color,
        width: 8,
        label: Some(format!("{name} {:.3} mAP@0.5", v.metrics.map50)),
    };
    let lines = [line(trained, "trained", BLUE), line(tuned, "final", RGBColor(255, 127, 14))];
    let title = "Precision-Recall Curve, all classes";
    plot_lines(&dir.join("compare_PR.png"), title, "Recall", "Precision", &trained.metrics.curves.px, &lines)
}

impl Summary {
    /// summary.md.
    pub fn markdown(&self, cfg: &PipelineConfig) -> String {
        let mut s = format!(
            "# slimc pipeline\n\nData `{}`, imgsz {}, batch {} (nominal {}, optimizer {}); epochs: train {}, sparse {} (sr {}, {:?} mode, scope {}, nominal batch {}, {}, no warm-up, last epoch kept), fine-tune {}; prune ratio {:.4}{} ({:?} policy, {:?} importance).\n\n",
            cfg.train.data.as_deref().unwrap_or(Path::new("?")).display(),
            cfg.train.imgsz,
            cfg.train.batch,
            cfg.train.nbs,
            cfg.train.optimizer,
            if cfg.trained.is_some() { "given".to_string() } else { cfg.train.epochs.to_string() },
            cfg.sparse_epochs,
            cfg.train.sr,
            cfg.train.sr_mode,
            cfg.train.sr_scope,
            cfg.sparse_nbs,
            match cfg.train.clip {
                Some(c) if c > 0.0 => format!("clip {c}"),
                _ => "no clipping".to_string(),
            },
            cfg.finetune_epochs,
            self.prune_ratio,
            cfg.budget.map_or(String::new(), |b| format!(", chosen for the budget {}", b.describe())),
            cfg.prune.policy,
            cfg.prune.importance
        );
        s += "| stage | parameters | GFLOPs | onnxruntime ms | mAP50 | mAP50-95 | gamma < 1e-2 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for r in &self.stages {
            s += &format!(
                "| {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.1}% |\n",
                r.stage,
                r.parameters,
                r.gflops,
                r.ort_ms,
                r.map50,
                r.map50_95,
                r.gamma_below_1e_2 * 100.0
            );
        }
        if let (Some(a), Some(b)) = (self.stages.first(), self.stages.last()) {
            s += &format!(
                "\nParameters {:+.1}%, GFLOPs {:+.1}%, onnxruntime latency {:+.1}%, mAP50 {:+.3} (final vs trained).\n",
                (b.parameters as f64 / a.parameters as f64 - 1.0) * 100.0,
                (b.gflops / a.gflops - 1.0) * 100.0,
                (b.ort_ms / a.ort_ms - 1.0) * 100.0,
                b.map50 - a.map50
            );
        }
        s += &format!("Final export verified with tract and onnxruntime: max rel error {:.2e}.\n", self.verify_max_rel);
        let flushed: Vec<String> = self
            .stages
            .iter()
            .filter(|r| r.subnormals_flushed > 0)
            .map(|r| format!("{} {}", r.stage, r.subnormals_flushed))
            .collect();
        if !flushed.is_empty() {
            s += &format!("Subnormal weights set to zero in the exports: {}.\n", flushed.join(", "));
        }
        for w in &self.warnings {
            s += &format!("- WARNING latency: {w}\n");
        }
        for c in &self.clamped {
            s += &format!("- clamped: {c}\n");
        }
        s += "\nBefore and after: [compare_val.jpg](compare_val.jpg) (the trained and the final model's detections on the first val batch) and [compare_PR.png](compare_PR.png) (their precision-recall curves); each training stage's folder holds its validation plots (BoxPR_curve.png, confusion_matrix.png, val_batch0_pred.jpg, ...).\n";
        s += &format!("\nTotal time {:.1} min. Files: gamma.png, gamma_layers.png, prune.txt, */results.csv, */results.png, *.slim, *.onnx, and pruned.pt and final.pt (Ultralytics checkpoints: `YOLO(\"final.pt\")`).\n", self.seconds / 60.0);
        s
    }
}
