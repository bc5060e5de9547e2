//! `slimc bn-hist`: the distribution of BN |gamma| (what sparse training moves toward zero), as
//! an overlay histogram of one or two models and a per-layer grid, with the numbers as JSON.

use crate::plot::register_font;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use slimc_ir::{Model, Op};
use std::path::{Path, PathBuf};

/// Bins of the histograms.
const BINS: usize = 60;

/// |gamma| statistics of one model.
#[derive(Clone, Debug, Serialize)]
pub struct GammaStats {
    /// Model label (its path).
    pub model: String,
    /// Gammas counted.
    pub count: usize,
    /// Share with |gamma| below 1e-2.
    pub share_below_1e_2: f64,
    /// 10th, 50th and 90th percentiles.
    pub quantiles: [f32; 3],
    /// Histogram bin edges (BINS + 1) and counts.
    pub edges: Vec<f32>,
    /// Counts per bin.
    pub counts: Vec<usize>,
    /// Per layer: name, channels, mean |gamma|, share below 1e-2.
    pub layers: Vec<(String, usize, f32, f64)>,
}

/// The |gamma| of every BN in `scope` ("all" or "seed": those the seed recipe penalises), per layer.
pub fn gammas(model: &Model, scope: &str) -> Result<Vec<(String, Vec<f32>)>> {
    let g = &model.graph;
    let keep = match scope {
        "all" => Default::default(),
        "seed" => slimc_passes::seed_unprunable(g),
        s => bail!("--scope {s}: expected all or seed"),
    };
    let mut out = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::BatchNorm(_)) {
            let name = slimc_passes::bn_name(g, slimc_ir::NodeId(i));
            if keep.contains(&name) {
                continue;
            }
            let t = &model.tensors[&g.value(n.inputs[1]).name];
            out.push((name, t.f32s()?.iter().map(|v| v.abs()).collect()));
        }
    }
    if out.is_empty() {
        bail!("the model has no BatchNorm in scope {scope}");
    }
    Ok(out)
}

/// Statistics over `layers` with histogram edges spanning [0, `hi`].
pub fn stats(label: &str, layers: &[(String, Vec<f32>)], hi: f32) -> GammaStats {
    let mut all: Vec<f32> = layers.iter().flat_map(|l| l.1.iter().copied()).collect();
    all.sort_by(f32::total_cmp);
    let q = |p: f64| all[((all.len() - 1) as f64 * p).round() as usize];
    let edges: Vec<f32> = (0..=BINS).map(|i| hi * i as f32 / BINS as f32).collect();
    let mut counts = vec![0; BINS];
    for &v in &all {
        counts[((v / hi * BINS as f32) as usize).min(BINS - 1)] += 1;
    }
    let below = |v: &[f32]| v.iter().filter(|x| **x < 1e-2).count() as f64 / v.len().max(1) as f64;
    GammaStats {
        model: label.to_string(),
        count: all.len(),
        share_below_1e_2: below(&all),
        quantiles: [q(0.1), q(0.5), q(0.9)],
        edges,
        counts,
        layers: layers
            .iter()
            .map(|(n, v)| (n.clone(), v.len(), v.iter().sum::<f32>() / v.len().max(1) as f32, below(v)))
            .collect(),
    }
}

const COLORS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14)];

fn draw_overlay<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, s: &[GammaStats]) -> Result<()> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{x:?}");
    root.fill(&WHITE).map_err(e)?;
    let hi = *s[0].edges.last().expect("edges");
    let ymax = s.iter().flat_map(|x| x.counts.iter()).copied().max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("BN |gamma| distribution", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..hi as f64, 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("|gamma|")
        .y_desc("channels")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (k, st) in s.iter().enumerate() {
        let c = COLORS[k % 2];
        let bars = st.counts.iter().enumerate().map(move |(i, &n)| {
            Rectangle::new([(st.edges[i] as f64, 0.0), (st.edges[i + 1] as f64, n as f64)], c.mix(0.45).filled())
        });
        let label = format!("{} ({:.1}% < 1e-2)", st.model, st.share_below_1e_2 * 100.0);
        chart
            .draw_series(bars)
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

fn draw_layers<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, per_model: &[Vec<(String, Vec<f32>)>]) -> Result<()> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{x:?}");
    root.fill(&WHITE).map_err(e)?;
    let n = per_model[0].len();
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let hi = per_model.iter().flat_map(|m| m.iter().flat_map(|l| l.1.iter().copied())).fold(0.0f32, f32::max).max(1e-3)
        as f64;
    for (i, area) in root.split_evenly((rows, cols)).iter().enumerate().take(n) {
        let name = &per_model[0][i].0;
        let hists: Vec<Vec<usize>> = per_model
            .iter()
            .map(|m| {
                let mut c = vec![0usize; 20];
                for &v in &m[i].1 {
                    c[((v as f64 / hi * 20.0) as usize).min(19)] += 1;
                }
                c
            })
            .collect();
        let ymax = hists.iter().flatten().copied().max().unwrap_or(1) as f64;
        let short = name.strip_prefix("model.").unwrap_or(name).trim_end_matches(".bn");
        let mut chart = ChartBuilder::on(area)
            .caption(short, ("sans-serif", 11))
            .margin(3)
            .build_cartesian_2d(0f64..hi, 0f64..ymax)
            .map_err(e)?;
        for (k, h) in hists.iter().enumerate() {
            let c = COLORS[k % 2];
            chart
                .draw_series(h.iter().enumerate().map(move |(b, &v)| {
                    Rectangle::new(
                        [(hi * b as f64 / 20.0, 0.0), (hi * (b + 1) as f64 / 20.0, v as f64)],
                        c.mix(0.5).filled(),
                    )
                }))
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

/// Writes the overlay histogram to `out` and the per-layer grid beside it (`<stem>_layers.<ext>`);
/// PNG or SVG by extension. Returns the statistics and the grid's path.
pub fn bn_hist(models: &[(String, Model)], scope: &str, out: &Path) -> Result<(Vec<GammaStats>, PathBuf)> {
    register_font();
    let per_model: Vec<Vec<(String, Vec<f32>)>> =
        models.iter().map(|(_, m)| gammas(m, scope)).collect::<Result<_>>()?;
    if per_model.len() == 2 && per_model[0].iter().map(|l| &l.0).ne(per_model[1].iter().map(|l| &l.0)) {
        bail!("the two models have different BatchNorm layers; compare a model with its own sparse-trained version");
    }
    let hi = per_model.iter().flat_map(|m| m.iter().flat_map(|l| l.1.iter().copied())).fold(0.0f32, f32::max).max(1e-3);
    let s: Vec<GammaStats> = models.iter().zip(&per_model).map(|((label, _), l)| stats(label, l, hi)).collect();
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("png").to_string();
    let stem = out.file_stem().and_then(|e| e.to_str()).unwrap_or("gamma");
    let grid = out.with_file_name(format!("{stem}_layers.{ext}"));
    for (path, layers) in [(out, false), (grid.as_path(), true)] {
        let tmp = path.with_extension(format!("tmp.{ext}"));
        match (ext.as_str(), layers) {
            ("svg", false) => draw_overlay(SVGBackend::new(&tmp, (1000, 600)).into_drawing_area(), &s),
            ("svg", true) => draw_layers(SVGBackend::new(&tmp, (1800, 1800)).into_drawing_area(), &per_model),
            (_, false) => draw_overlay(BitMapBackend::new(&tmp, (1000, 600)).into_drawing_area(), &s),
            (_, true) => draw_layers(BitMapBackend::new(&tmp, (1800, 1800)).into_drawing_area(), &per_model),
        }
        .with_context(|| format!("cannot draw {}", path.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))?;
    }
    Ok((s, grid))
}
