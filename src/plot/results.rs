//! results.png: Ultralytics' grid of loss and metric curves, drawn from results.csv.

use super::{register_font, replace_atomic};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// The panels, in Ultralytics' order: column name and title.
const PANELS: [&str; 10] = [
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
];

/// Draws results.csv's curves into a PNG (or SVG by extension) at `out`.
pub fn plot_results(csv: &Path, out: &Path) -> Result<()> {
    register_font();
    let text = std::fs::read_to_string(csv).with_context(|| format!("{}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or_else(|| anyhow!("{}: empty", csv.display()))?.split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(|v| v.parse().unwrap_or(f64::NAN)).collect())
        .collect();
    if rows.is_empty() {
        bail!("{}: no epochs yet", csv.display());
    }
    replace_atomic(out, |tmp| {
        if out.extension().is_some_and(|e| e == "svg") {
            draw(SVGBackend::new(tmp, (2000, 800)).into_drawing_area(), &header, &rows)
        } else {
            draw(BitMapBackend::new(tmp, (2000, 800)).into_drawing_area(), &header, &rows)
        }
    })
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, header: &[&str], rows: &[Vec<f64>]) -> Result<()> {
    let col =
        |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| anyhow!("results.csv: no column {name}"));
    let epoch = col("epoch")?;
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    for (area, name) in root.split_evenly((2, 5)).iter().zip(PANELS) {
        let c = col(name)?;
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r[epoch], r[c])).filter(|p| p.1.is_finite()).collect();
        let x0 = pts.first().map_or(0.0, |p| p.0);
        let x1 = pts.last().map_or(1.0, |p| p.0).max(x0 + 1.0);
        let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let pad = ((hi - lo).abs() * 0.1).max(1e-3);
        // No finite value (or a span beyond f64): an empty unit panel, not an unbounded axis.
        let (lo, hi, pad) =
            if pts.is_empty() || !((hi + pad) - (lo - pad)).is_finite() { (0.0, 1.0, 0.0) } else { (lo, hi, pad) };
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(44)
            .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
            .map_err(|e| anyhow!("{e:?}"))?;
        chart.configure_mesh().label_style(("sans-serif", 11)).draw().map_err(|e| anyhow!("{e:?}"))?;
        let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.1 >= lo - pad && p.1 <= hi + pad).collect();
        chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2))).map_err(|e| anyhow!("{e:?}"))?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, BLUE.filled()))).map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}
