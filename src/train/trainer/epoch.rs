//! The epoch loop of [`Trainer::run`]: each epoch's micro-batches through the whole training
//! step (warm-up, accumulation to the nominal batch, the checks for non-finite values), then
//! validation of the EMA, the results row and the model files, written while the next epoch
//! trains.

use super::Trainer;
use crate::distributed::shard::batches_per_rank;
use crate::distributed::World;
use crate::plot::annotate::save_train_batch;
use crate::plot::results::plot_results;
use crate::train::config::TrainConfig;
use crate::train::resume::{optimizer_state, pack_state, RunState};
use crate::train::saver::Saver;
use crate::train::schedule::warmup_iterations;
use crate::val::validate::{validate, validate_reusing, ValOptions};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use slimc_ir::{Model, Tensor};
use slimc_passes::accumulator_name;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// results.csv: the header and one row per epoch.
fn csv_text(rows: &[String]) -> String {
    let mut csv = RESULT_COLUMNS.join(",") + "\n";
    for r in rows {
        csv += r;
        csv.push('\n');
    }
    csv
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

/// Replaces `tensors[names]` on every rank with rank 0's, in one broadcast.
fn sync_tensors(tensors: &mut BTreeMap<String, Tensor>, names: &[String], world: &World) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let values =
        names.iter().map(|n| tensors.get(n).cloned().ok_or_else(|| anyhow!("no tensor {n}"))).collect::<Result<_>>()?;
    for (n, t) in names.iter().cloned().zip(crate::train::step::broadcast(values, world)?) {
        tensors.insert(n, t);
    }
    Ok(())
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

/// What stays fixed over a run's epochs, and what carries from one epoch to the next.
struct Run {
    /// The run's settings.
    cfg: TrainConfig,
    /// Whether this process is rank 0 (which prints and writes the run's files).
    root: bool,
    /// `weights/` of the run folder.
    wdir: PathBuf,
    /// results.csv.
    csv_path: PathBuf,
    /// Images per micro-batch: each rank's share of the batch.
    micro: usize,
    /// Batches per epoch and rank.
    nb: usize,
    /// Warm-up iterations (-1: none).
    nw: i64,
    /// Ranks this process runs the micro-batches of.
    hosted: usize,
    /// Micro-batches per optimizer step, ramped during warm-up and kept from epoch to epoch.
    accumulate: usize,
    /// When the run started.
    t0: Instant,
    /// Writes each epoch's model files while the next epoch trains.
    saver: Saver,
}

/// One epoch's training: the mean loss components, the images seen and the seconds taken.
struct Trained {
    mean: [f64; 3],
    seen: usize,
    secs: f64,
}

impl Trainer {
    /// Runs the remaining epochs; returns the best fitness (mAP50-95).
    pub fn run(mut self) -> Result<f64> {
        let mut run = self.start_run()?;
        for epoch in self.start_epoch..run.cfg.epochs {
            let trained = self.train_epoch(epoch, &mut run)?;
            self.end_epoch(epoch, trained, &mut run)?;
        }
        run.saver.wait()?;
        if !run.root {
            return Ok(self.best_fitness);
        }
        self.finish(&run);
        Ok(self.best_fitness)
    }

    /// Before the first epoch: the run folder, every rank on rank 0's state, results.csv as
    /// far as it goes, args.json for a new run, and the run's constants.
    fn start_run(&mut self) -> Result<Run> {
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
        let accumulate = ((cfg.nbs as f64 / cfg.batch as f64).round() as usize).max(1);
        let t0 = Instant::now();
        Ok(Run { cfg, root, wdir, csv_path, micro, nb, nw, hosted, accumulate, t0, saver: Saver::default() })
    }

    /// Epoch `epoch`'s micro-batches through the training step, with the schedule's warm-up
    /// and a stop (naming the epoch, batch and tensor) on a non-finite loss or gradient.
    fn train_epoch(&mut self, epoch: usize, run: &mut Run) -> Result<Trained> {
        let (root, nb, nw, hosted, micro) = (run.root, run.nb, run.nw, run.hosted, run.micro);
        let cfg = &run.cfg;
        let mut hyp = cfg.augment;
        if epoch + cfg.close_mosaic >= cfg.epochs {
            hyp.mosaic = 0.0;
        }
        let base = self.schedule.start_epoch(epoch, cfg);
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
                run.accumulate = self.schedule.warm_up(ni, nw, base, cfg);
            }
            if root && epoch == self.start_epoch && k < 3 {
                let path = cfg.save_dir.join(format!("train_batch{k}.jpg"));
                if let Err(e) = save_train_batch(&batch.images, &batch.targets, &self.names, &path) {
                    eprintln!("WARNING {}: {e:#}", path.display());
                }
            }
            // Accumulated gradients carry over an epoch's end (Ultralytics 8.3.253 zeroes them
            // once, before its epoch loop); the optimizer steps once `accumulate` micro-batches
            // have passed since its last step.
            let steps = last && ni - self.last_opt_step >= run.accumulate as i64;
            if steps {
                self.schedule.steps += 1;
                self.ema_updates += 1;
            }
            let scalars = self.schedule.scalars(steps, !self.accumulating, sr, self.ema_updates);
            self.accumulating = true;
            let r = self.program.train_step(&batch.images, &batch.targets, &scalars)?;
            // A non-finite loss or gradient stops the run: the weights of the last completed
            // epoch stay in last.slim (Ultralytics reloads last.pt and retries up to three times;
            // slimc's steps are deterministic, so a retry would meet the same values).
            let at = || format!("epoch {}, batch {}", epoch + 1, i + 1);
            if let Some(k) = (0..3).find(|&k| !r.items[k].is_finite()) {
                let (at, kept) = (at(), kept_weights(&cfg.save_dir, &mut run.saver));
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
                let (at, kept) = (at(), kept_weights(&cfg.save_dir, &mut run.saver));
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
        let secs = pb.elapsed().as_secs_f64();
        pb.finish_and_clear();
        Ok(Trained { mean, seen, secs })
    }

    /// After epoch `epoch`'s training: the EMA validated, the results row printed and kept, and
    /// on rank 0 the model files (best.slim, last.slim with the resume state, epochN.slim)
    /// handed to the saver with results.csv and results.png.
    fn end_epoch(&mut self, epoch: usize, trained: Trained, run: &mut Run) -> Result<()> {
        let Trained { mean, seen, secs } = trained;
        let cfg = &run.cfg;
        let raw = self.read_all(self.program.params.iter().chain(&self.program.buffers))?;
        let bad = non_finite(&raw);
        if !bad.is_empty() {
            let kept = kept_weights(&cfg.save_dir, &mut run.saver);
            bail!("epoch {}: the updates made {} non-finite; stopping ({kept})", epoch + 1, bad.join(", "));
        }
        let mut ema_model = self.ema_model()?;
        // Rank 0's model is the run's: the EMA of the weights is the same on every rank, that of
        // the BN statistics (per rank) is taken from rank 0; the ranks validate it together.
        sync_tensors(&mut ema_model.tensors, &self.program.buffers, &self.world)?;
        let v = validate_reusing(
            &*self.backend,
            &ema_model,
            &self.val,
            self.names.len(),
            &ValOptions { bar: run.root, ..ValOptions::quiet(cfg.batch * 2) },
            &self.world,
            &mut self.val_program,
        )?;
        let m = &v.metrics;
        let fitness = m.map;
        let sparse = self.gamma_share_below(&raw, 1e-2)?;
        let lrs = self.schedule.lr;
        let row = [
            (epoch + 1) as f64,
            run.t0.elapsed().as_secs_f64(),
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
        let rate = seen as f64 * (self.ranks / run.hosted) as f64 / secs;
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
        if run.root {
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
            schedule: self.schedule.clone(),
            ema_updates: self.ema_updates,
            last_opt_step: self.last_opt_step,
            results: self.results.clone(),
        };
        if !run.root {
            return Ok(());
        }
        let mut files = vec![];
        if improved {
            files.push((last.clone(), run.wdir.join("best.slim")));
        }
        if epoch + 1 < cfg.epochs {
            let acc = self.program.params.iter().map(|n| Ok((n.clone(), self.program.read(&accumulator_name(n))?)));
            let acc = acc.collect::<Result<BTreeMap<_, _>>>()?;
            let opt = optimizer_state(&self.program, self.schedule.rule())?;
            last.training_state = pack_state(&state, &raw, &acc, &opt)?;
        }
        if cfg.save_period > 0 && (epoch + 1) % cfg.save_period == 0 {
            files.push((last.clone(), run.wdir.join(format!("epoch{}.slim", epoch + 1))));
        }
        files.push((last, run.wdir.join("last.slim")));
        // The epoch's row once its model files are whole (a run killed in between resumes from
        // the previous epoch, whose row the CSV then still ends with).
        let (csv, csv_path, png) = (csv_text(&self.results), run.csv_path.clone(), cfg.save_dir.join("results.png"));
        run.saver.save(files, move || {
            slimc_ir::write_atomic(&csv_path, csv.as_bytes())?;
            if let Err(e) = plot_results(&csv_path, &png) {
                eprintln!("WARNING results.png: {e:#}");
            }
            Ok(())
        })
    }

    /// After the last epoch, on rank 0: the summary line and, as Ultralytics' final evaluation,
    /// best.slim validated once more with its plots (a failure there is a warning: the run has
    /// finished).
    fn finish(&self, run: &Run) {
        let cfg = &run.cfg;
        eprintln!(
            "{} epochs completed in {:.3} hours; results in {}",
            cfg.epochs - self.start_epoch,
            run.t0.elapsed().as_secs_f64() / 3600.0,
            cfg.save_dir.display()
        );
        if !cfg.no_plots {
            let plots = || -> Result<()> {
                let best = Model::load(&run.wdir.join("best.slim"))?;
                let opts = ValOptions { plot_batches: 3, ..ValOptions::quiet(cfg.batch * 2) };
                let v = validate(&*self.backend, &best, &self.val, self.names.len(), &opts)?;
                crate::plot::val::save_val_plots(&v, &self.names, &cfg.save_dir)?;
                Ok(())
            };
            if let Err(e) = plots() {
                eprintln!("WARNING validation plots: {e:#}");
            }
        }
    }
}
