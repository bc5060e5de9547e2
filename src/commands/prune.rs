//! `slimc prune`: the prune pass sequence run on a model, with the per-layer report users read;
//! pruning to a budget (parameters, GFLOPs or onnxruntime latency) by bisection over the ratio;
//! and a sweep over ratios with a table, CSV and plot.

use crate::commands::info::model_info;
use crate::commands::verify::ort_latencies;
use crate::export::{export_onnx, ExportOptions};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use slimc_ir::Model;
use slimc_passes::{sequences, PassContext, PruneOptions};
use std::path::Path;

/// What pruning changed.
#[derive(Clone, Debug, Serialize)]
pub struct PruneSummary {
    /// Per BN layer: name, channels before, channels after.
    pub layers: Vec<(String, usize, usize)>,
    /// Parameters before and after.
    pub parameters: (usize, usize),
    /// GFLOPs (at the model's image size) before and after.
    pub gflops: (f64, f64),
    /// Layers the floor or rounding kept wider than the ratio asked.
    pub clamped: Vec<String>,
    /// The |gamma| threshold.
    pub threshold: f32,
    /// The ratio used.
    pub ratio: f64,
    /// Candidate channel groups (the ratio is a share of these).
    pub candidates: usize,
}

/// A pruned model and its summary.
pub struct Pruned {
    /// The narrower model (no training state).
    pub model: Model,
    /// What changed.
    pub summary: PruneSummary,
}

/// Prunes `model` with `opts`; with `print_ir`, the IR and analyses after each pass go to stderr.
pub fn prune(model: &Model, opts: PruneOptions, print_ir: bool) -> Result<Pruned> {
    let before = model_info(model, None)?;
    let mut cx = PassContext { prune: opts.clone(), ..Default::default() };
    let mut m = model.clone();
    sequences::PRUNE.manager().print_ir_after_all(print_ir).run_with(&mut m, &mut cx)?;
    let report = cx.report.ok_or_else(|| anyhow!("rewrite-widths left no report"))?;
    let sel = report.selection;
    let after = model_info(&m, None)?;
    let layers = report.layers;
    Ok(Pruned {
        model: m,
        summary: PruneSummary {
            layers,
            parameters: (before.parameters, after.parameters),
            gflops: (before.gflops, after.gflops),
            clamped: sel.clamped,
            threshold: sel.threshold,
            ratio: opts.ratio,
            candidates: sel.candidates,
        },
    })
}

impl PruneSummary {
    /// The table `slimc prune` prints.
    pub fn table(&self) -> String {
        let mut s = format!("{:<36} {:>8} {:>8}\n", "layer", "before", "after");
        for (l, b, a) in &self.layers {
            s += &format!("{l:<36} {b:>8} {a:>8}{}\n", if a < b { "" } else { "  (whole)" });
        }
        let (pb, pa) = self.parameters;
        let (gb, ga) = self.gflops;
        s += &format!(
            "parameters {pb} -> {pa} ({:+.1}%), GFLOPs {gb:.2} -> {ga:.2} ({:+.1}%), |gamma| threshold {:.4}\n",
            (pa as f64 / pb as f64 - 1.0) * 100.0,
            (ga / gb - 1.0) * 100.0,
            self.threshold
        );
        s
    }
}

/// What a budget constrains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Metric {
    /// Parameters (trainable and frozen).
    Parameters,
    /// GFLOPs at the model's image size.
    Gflops,
    /// onnxruntime latency (ms) of the exported model at its image size, batch 1.
    LatencyMs,
}

impl Metric {
    /// The metric's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Parameters => "parameters",
            Metric::Gflops => "GFLOPs",
            Metric::LatencyMs => "onnxruntime ms",
        }
    }

    /// Measures `m`.
    pub fn measure(self, m: &Model) -> Result<f64> {
        Ok(match self {
            Metric::Parameters => model_info(m, None)?.parameters as f64,
            Metric::Gflops => model_info(m, None)?.gflops,
            // Median of 30 after warm-up.
            Metric::LatencyMs => ort_latency_ms(&[m], 3)?[0],
        })
    }
}

/// A budget: an absolute figure, or a share of the unpruned model's (`"60%"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// What is constrained.
    pub metric: Metric,
    /// The figure, or the share when `share` is set.
    pub value: f64,
    /// Whether `value` is a share of the original (from `F%`).
    pub share: bool,
}

impl Budget {
    /// Parses `N` or `F%` for `metric`; `flag` names the option in errors.
    pub fn parse(metric: Metric, text: &str, flag: &str) -> Result<Budget> {
        let (num, share) = match text.trim().strip_suffix('%') {
            Some(p) => (p, true),
            None => (text.trim(), false),
        };
        let value: f64 = num.parse().map_err(|_| anyhow!("{flag} {text}: expected a number or a percentage"))?;
        if !value.is_finite() || value <= 0.0 || (share && value >= 100.0) {
            bail!("{flag} {text}: must be positive{}", if share { " and below 100%" } else { "" });
        }
        Ok(Budget { metric, value: if share { value / 100.0 } else { value }, share })
    }

    /// The budget as the user wrote it (`GFLOPs <= 60%`).
    pub fn describe(&self) -> String {
        if self.share {
            format!("{} <= {}%", self.metric.name(), self.value * 100.0)
        } else {
            format!("{} <= {}", self.metric.name(), self.value)
        }
    }

    /// The absolute target for a model whose unpruned figure is `original`.
    pub fn target(&self, original: f64) -> f64 {
        if self.share {
            self.value * original
        } else {
            self.value
        }
    }
}

/// The outcome of pruning to a budget.
pub struct BudgetResult {
    /// The budget.
    pub budget: Budget,
    /// The pruned model at the chosen ratio.
    pub pruned: Pruned,
    /// The absolute target.
    pub target: f64,
    /// The unpruned model's figure.
    pub original: f64,
    /// The pruned model's figure.
    pub achieved: f64,
}

/// Prunes `model` as little as meets `budget`: the smallest ratio (to one candidate group)
/// whose pruned model's figure is at or below the target, found by bisection (the figure falls
/// as the ratio grows). A target below what the `--min-channels` floor allows is an error that
/// names the smallest reachable figure.
pub fn prune_to_budget(model: &Model, opts: &PruneOptions, budget: Budget) -> Result<BudgetResult> {
    let metric = budget.metric;
    let original = metric.measure(model)?;
    let target = budget.target(original);
    let at = |ratio: f64| -> Result<(Pruned, f64)> {
        let p = prune(model, PruneOptions { ratio, ..opts.clone() }, false)?;
        let v = metric.measure(&p.model)?;
        Ok((p, v))
    };
    if original <= target {
        bail!("the model already meets the budget: {} {} <= {}", metric.name(), fmt(original), fmt(target));
    }
    let mut hi = 1.0 - 1e-9;
    let (mut best, floor) = at(hi)?;
    if floor > target {
        bail!(
            "{} {} is out of reach: pruning every candidate group down to the floor (--min-channels {}) leaves {}",
            metric.name(),
            fmt(target),
            opts.min_channels,
            fmt(floor)
        );
    }
    let mut achieved = floor;
    // Bisect until the interval holds at most one candidate group's step of the ratio.
    let step = 1.0 / best.summary.candidates.max(1) as f64;
    let mut lo = 0.0;
    while hi - lo > step / 4.0 {
        let mid = (lo + hi) / 2.0;
        let (p, v) = at(mid)?;
        if v <= target {
            (hi, best, achieved) = (mid, p, v);
        } else {
            lo = mid;
        }
    }
    Ok(BudgetResult { budget, pruned: best, target, original, achieved })
}

impl BudgetResult {
    /// One line: the figure before and after, the target, the ratio chosen.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} -> {} (target {}), ratio {:.4} chosen of {} candidate groups",
            self.budget.metric.name(),
            fmt(self.original),
            fmt(self.achieved),
            fmt(self.target),
            self.pruned.summary.ratio,
            self.pruned.summary.candidates
        )
    }
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// Exports each model at its image size into a scratch folder, then times them all in turns
/// ([`ort_latencies`], `rounds` rounds of ten samples): their median onnxruntime latencies, ms.
pub fn ort_latency_ms(models: &[&Model], rounds: usize) -> Result<Vec<f64>> {
    let Some(first) = models.first() else { return Ok(vec![]) };
    let dir = std::env::temp_dir().join(format!("slimc-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let times = (|| {
        let mut paths = vec![];
        for (i, m) in models.iter().enumerate() {
            let path = dir.join(format!("model{i}.onnx"));
            let onnx = export_onnx(m, &ExportOptions { imgsz: Some(m.meta.imgsz), ..Default::default() })?;
            std::fs::write(&path, onnx.bytes).with_context(|| format!("{}", path.display()))?;
            paths.push(path);
        }
        ort_latencies(&paths, first.meta.imgsz, rounds)
    })();
    // Removed on failure too: the exports are this call's alone.
    let _ = std::fs::remove_dir_all(&dir);
    times
}

/// One ratio of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    /// The prune ratio.
    pub ratio: f64,
    /// Parameters of the pruned model.
    pub parameters: usize,
    /// Its GFLOPs at the model's image size.
    pub gflops: f64,
    /// Its onnxruntime latency, ms.
    pub ort_ms: f64,
    /// mAP50 before fine-tuning (with a dataset).
    pub map50: Option<f64>,
    /// mAP50-95 before fine-tuning (with a dataset).
    pub map50_95: Option<f64>,
}

/// Parses `start:end:step` (inclusive of `end` within rounding) into ratios inside (0, 1).
pub fn parse_sweep(text: &str) -> Result<Vec<f64>> {
    let parts: Vec<f64> = text
        .split(':')
        .map(|p| p.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("--sweep {text}: expected start:end:step, e.g. 0.1:0.9:0.1"))?;
    let [a, b, s] = parts[..] else { bail!("--sweep {text}: expected start:end:step, e.g. 0.1:0.9:0.1") };
    if !(a > 0.0 && b < 1.0 && a <= b && s > 0.0) {
        bail!("--sweep {text}: needs 0 < start <= end < 1 and step > 0");
    }
    let n = ((b - a) / s + 1e-9).floor() as usize;
    if n > 1000 {
        bail!("--sweep {text}: {} ratios is too many (at most 1000)", n + 1);
    }
    Ok((0..=n).map(|i| ((a + i as f64 * s) * 1e9).round() / 1e9).collect())
}

/// Prunes `model` at each ratio and measures the result, after a first row for the unpruned
/// model (ratio 0); `validate` (when given) returns a model's (mAP50, mAP50-95).
pub fn sweep(
    model: &Model,
    opts: &PruneOptions,
    ratios: &[f64],
    mut validate: Option<&mut dyn FnMut(&Model) -> Result<(f64, f64)>>,
) -> Result<Vec<SweepRow>> {
    let (mut rows, mut models) = (vec![], vec![]);
    let pb = indicatif::ProgressBar::new(ratios.len() as u64 + 1).with_style(
        indicatif::ProgressStyle::with_template("sweep {bar:30} {pos}/{len} ratios [{elapsed}<{eta}] {msg}")
            .map_err(|e| anyhow!("{e}"))?,
    );
    // Ratio 0 is the unpruned model, the row the others are read against.
    for ratio in std::iter::once(0.0).chain(ratios.iter().copied()) {
        pb.set_message(format!("ratio {ratio}"));
        let m = if ratio == 0.0 {
            model.clone()
        } else {
            prune(model, PruneOptions { ratio, ..opts.clone() }, false)?.model
        };
        let (map50, map50_95) = match validate.as_mut() {
            Some(v) => {
                let (a, b) = v(&m)?;
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let info = model_info(&m, None)?;
        rows.push(SweepRow {
            ratio,
            parameters: info.parameters,
            gflops: info.gflops,
            ort_ms: f64::NAN, // timed for all ratios together below
            map50,
            map50_95,
        });
        models.push(m);
        pb.inc(1);
    }
    pb.set_message("onnxruntime latency, all ratios in turns");
    let refs: Vec<&Model> = models.iter().collect();
    for (r, ms) in rows.iter_mut().zip(ort_latency_ms(&refs, 10)?) {
        r.ort_ms = ms;
    }
    pb.finish_and_clear();
    Ok(rows)
}

/// The sweep's columns.
const SWEEP_COLUMNS: [&str; 6] = ["ratio", "parameters", "GFLOPs", "onnxruntime ms", "mAP50", "mAP50-95"];

/// A row's cells, at table (`fine` false) or CSV precision; a missing mAP is `missing`.
fn sweep_cells(r: &SweepRow, fine: bool, missing: &str) -> [String; 6] {
    let opt =
        |v: Option<f64>| v.map_or(missing.to_string(), |v| if fine { format!("{v:.5}") } else { format!("{v:.3}") });
    [
        if fine { r.ratio.to_string() } else { format!("{:.2}", r.ratio) },
        r.parameters.to_string(),
        if fine { format!("{:.5}", r.gflops) } else { format!("{:.3}", r.gflops) },
        if fine { format!("{:.4}", r.ort_ms) } else { format!("{:.2}", r.ort_ms) },
        opt(r.map50),
        opt(r.map50_95),
    ]
}

/// The sweep as a text table.
pub fn sweep_table(rows: &[SweepRow]) -> String {
    let line = |cells: [String; 6]| {
        let w = SWEEP_COLUMNS.map(|c| c.len().max(8));
        cells.iter().zip(w).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join(" ") + "\n"
    };
    let mut s = line(SWEEP_COLUMNS.map(String::from));
    for r in rows {
        s += &line(sweep_cells(r, false, "-"));
    }
    s
}

/// The sweep as CSV (empty mAP cells without a dataset).
pub fn sweep_csv(rows: &[SweepRow]) -> String {
    let mut s = "ratio,parameters,gflops,ort_ms,map50,map50_95\n".to_string();
    for r in rows {
        s += &(sweep_cells(r, true, "").join(",") + "\n");
    }
    s
}

/// sweep.png: GFLOPs (left axis) and, with a dataset, mAP50 (right axis) against the ratio.
pub fn plot_sweep(rows: &[SweepRow], out: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font();
    let e = |e: &dyn std::fmt::Debug| anyhow!("{}: {e:?}", out.display());
    let tmp = out.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let x0 = -0.02;
        let x1 = rows.last().map_or(1.0, |r| r.ratio) + 0.02;
        let gmax = rows.iter().map(|r| r.gflops).fold(0.0, f64::max) * 1.1;
        let mmax = rows.iter().filter_map(|r| r.map50).fold(0.0, f64::max).max(0.05) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption("prune sweep: GFLOPs and mAP50 (before fine-tuning) by ratio", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0.0..gmax.max(1e-3))
            .map_err(|x| e(&x))?
            .set_secondary_coord(x0..x1, 0.0..mmax);
        chart
            .configure_mesh()
            .x_desc("prune ratio")
            .y_desc("GFLOPs")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        chart.configure_secondary_axes().y_desc("mAP50").label_style(("sans-serif", 13)).draw().map_err(|x| e(&x))?;
        let g: Vec<(f64, f64)> = rows.iter().map(|r| (r.ratio, r.gflops)).collect();
        chart
            .draw_series(LineSeries::new(g.clone(), BLUE.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("GFLOPs")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart.draw_series(g.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(|x| e(&x))?;
        let m: Vec<(f64, f64)> = rows.iter().filter_map(|r| r.map50.map(|v| (r.ratio, v))).collect();
        if !m.is_empty() {
            chart
                .draw_secondary_series(LineSeries::new(m.clone(), RED.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label("mAP50 (right axis)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
            chart.draw_secondary_series(m.iter().map(|&p| Circle::new(p, 3, RED.filled()))).map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("{}", out.display()))?;
    Ok(())
}
