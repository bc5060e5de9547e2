//! results.png: Ultralytics' grid of loss and metric curves, drawn from results.csv.

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (free licence, see assets/fonts), so plots need no system fonts.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Makes the bundled font the `sans-serif` family of plotters.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

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
    let tmp = out.with_extension(format!("tmp.{}", out.extension().and_then(|e| e.to_str()).unwrap_or("png")));
    let drawn = if out.extension().is_some_and(|e| e == "svg") {
        draw(SVGBackend::new(&tmp, (2000, 800)).into_drawing_area(), &header, &rows)
    } else {
        draw(BitMapBackend::new(&tmp, (2000, 800)).into_drawing_area(), &header, &rows)
    };
    drawn.with_context(|| format!("cannot draw {}", out.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("{}", out.display()))?;
    Ok(())
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

/// Ultralytics' `train_batch*.jpg`: the batch's images tiled in a grid with their target boxes
/// drawn, to check what the network is fed.
pub fn save_batch(images: &slimc_ir::Tensor, targets: &slimc_ir::Tensor, out: &Path) -> Result<()> {
    let (n, h, w) = (images.shape[0], images.shape[2], images.shape[3]);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let mut canvas = image::RgbImage::new((cols * w) as u32, (rows * h) as u32);
    let px = images.f32s()?;
    for k in 0..n {
        let (ox, oy) = ((k % cols) * w, (k / cols) * h);
        for y in 0..h {
            for x in 0..w {
                let c = |ch: usize| (px[((k * 3 + ch) * h + y) * w + x] * 255.0).round().clamp(0.0, 255.0) as u8;
                canvas.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb([c(0), c(1), c(2)]));
            }
        }
    }
    for r in targets.f32s()?.chunks(6) {
        let k = r[0] as usize;
        let (ox, oy) = ((k % cols) * w, (k / cols) * h);
        let x1 = ((r[2] - r[4] / 2.0) * w as f32).clamp(0.0, w as f32 - 1.0) as usize + ox;
        let x2 = ((r[2] + r[4] / 2.0) * w as f32).clamp(0.0, w as f32 - 1.0) as usize + ox;
        let y1 = ((r[3] - r[5] / 2.0) * h as f32).clamp(0.0, h as f32 - 1.0) as usize + oy;
        let y2 = ((r[3] + r[5] / 2.0) * h as f32).clamp(0.0, h as f32 - 1.0) as usize + oy;
        let red = image::Rgb([255, 40, 40]);
        for x in x1..=x2 {
            canvas.put_pixel(x as u32, y1 as u32, red);
            canvas.put_pixel(x as u32, y2 as u32, red);
        }
        for y in y1..=y2 {
            canvas.put_pixel(x1 as u32, y as u32, red);
            canvas.put_pixel(x2 as u32, y as u32, red);
        }
    }
    let tmp = out.with_extension("tmp.jpg");
    canvas.save(&tmp).with_context(|| format!("{}", out.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("{}", out.display()))?;
    Ok(())
}
