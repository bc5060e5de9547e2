//! Ultralytics' validation curves: `BoxPR_curve.png` (precision over recall at IoU 0.5) and
//! `BoxF1_curve.png`, `BoxP_curve.png`, `BoxR_curve.png` (a metric over the confidence
//! threshold), each with the numbers behind it as CSV beside the picture.

use super::{err, register_font, replace_atomic};
use crate::data::dataset::class_name;
use crate::val::metrics::{argmax, column_mean, smooth, Curves, DetMetrics};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Size of a curve plot: Ultralytics' 9×6 inch figure at 250 dpi.
pub const CURVE_SIZE: (u32, u32) = (2250, 1500);

/// Matplotlib's default colour cycle, for one line per class.
fn cycle(i: usize) -> RGBColor {
    const HEX: [u32; 10] =
        [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf];
    let h = HEX[i % 10];
    RGBColor((h >> 16) as u8, (h >> 8) as u8, h as u8)
}

/// One line of a plot.
pub struct Line {
    /// y over the plot's x values.
    pub y: Vec<f64>,
    /// Colour.
    pub color: RGBColor,
    /// Width in pixels.
    pub width: u32,
    /// Legend entry, if any.
    pub label: Option<String>,
}

/// A thin line per class (with a legend entry when there are 1 to 20 classes, grey without),
/// as Ultralytics draws them.
fn class_lines(rows: &[Vec<f64>], labels: impl Fn(usize) -> String) -> Vec<Line> {
    let legend = (1..21).contains(&rows.len());
    rows.iter()
        .enumerate()
        .map(|(i, y)| Line {
            y: y.clone(),
            color: if legend { cycle(i) } else { RGBColor(128, 128, 128) },
            width: 3,
            label: legend.then(|| labels(i)),
        })
        .collect()
}

/// Draws `lines` over `x` on a unit square with a title and axis labels, the legend to the
/// right of the axes, into `out` (PNG).
pub fn plot_lines(out: &Path, title: &str, xlabel: &str, ylabel: &str, x: &[f64], lines: &[Line]) -> Result<()> {
    register_font();
    replace_atomic(out, |tmp| {
        draw_lines(BitMapBackend::new(tmp, CURVE_SIZE).into_drawing_area(), title, xlabel, ylabel, x, lines)
    })
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    x: &[f64],
    lines: &[Line],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let legend_w = if lines.iter().any(|l| l.label.is_some()) { 700 } else { 40 };
    let (plot, legend) = root.split_horizontally(CURVE_SIZE.0 - legend_w);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 56))
        .margin(40)
        .x_label_area_size(130)
        .y_label_area_size(150)
        .build_cartesian_2d(0.0..1.0f64, 0.0..1.0f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(xlabel)
        .y_desc(ylabel)
        .axis_desc_style(("sans-serif", 46))
        .label_style(("sans-serif", 42))
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(err)?;
    for l in lines {
        let pts = x.iter().copied().zip(l.y.iter().copied()).filter(|p| p.1.is_finite());
        chart.draw_series(LineSeries::new(pts, l.color.stroke_width(l.width))).map_err(err)?;
    }
    // The axes' frame, as matplotlib draws it.
    chart.draw_series(std::iter::once(Rectangle::new([(0.0, 0.0), (1.0, 1.0)], BLACK.stroke_width(2)))).map_err(err)?;
    let font = ("sans-serif", 42).into_font();
    let labelled: Vec<(&Line, &String)> = lines.iter().filter_map(|l| l.label.as_ref().map(|t| (l, t))).collect();
    if !labelled.is_empty() {
        let h = 30 + 62 * labelled.len() as i32;
        legend
            .draw(&Rectangle::new([(10, 60), (legend_w as i32 - 20, 60 + h)], RGBColor(204, 204, 204).stroke_width(2)))
            .map_err(err)?;
    }
    for (k, (l, text)) in labelled.iter().enumerate() {
        let y = 105 + 62 * k as i32;
        legend.draw(&PathElement::new(vec![(30, y), (100, y)], l.color.stroke_width(l.width.max(3)))).map_err(err)?;
        legend.draw(&Text::new((*text).clone(), (120, y - 24), font.clone())).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `rows` (one per class, named by `labels`) and the all-classes line `all` (column
/// `all_name`) over `x` as CSV.
fn write_csv(out: &Path, x: (&str, &[f64]), labels: &[String], rows: &[Vec<f64>], all: (&str, &[f64])) -> Result<()> {
    let ((xname, x), (all_name, mean)) = (x, all);
    let mut s = xname.to_string();
    for l in labels {
        s += &format!(",{l}");
    }
    s += &format!(",{all_name}\n");
    for (j, xv) in x.iter().enumerate() {
        s += &format!("{xv}");
        for r in rows {
            s += &format!(",{}", r[j]);
        }
        s += &format!(",{}\n", mean[j]);
    }
    slimc_ir::write_atomic(out, s.as_bytes())?;
    Ok(())
}

/// The PR curve's all-classes line: the precision envelope averaged over the classes that have
/// detections, as Ultralytics draws it.
pub fn pr_mean(m: &DetMetrics) -> Vec<f64> {
    let c = &m.curves;
    column_mean(&c.py, c.px.len())
}

/// Writes `BoxPR_curve.png`, `BoxF1_curve.png`, `BoxP_curve.png` and `BoxR_curve.png` (with
/// their `.csv` numbers) into `dir`; returns the files written.
pub fn plot_val_curves(m: &DetMetrics, names: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![];
    let c: &Curves = &m.curves;
    let ap50 = |class: usize| m.classes.iter().position(|&k| k == class).map_or(0.0, |i| m.ap[i][0]);
    let pr_names: Vec<String> = c.pr_classes.iter().map(|&k| class_name(names, k)).collect();
    let mean = pr_mean(m);
    let mut lines = class_lines(&c.py, |i| format!("{} {:.3}", pr_names[i], ap50(c.pr_classes[i])));
    lines.push(Line {
        y: mean.clone(),
        color: BLUE,
        width: 10,
        label: Some(format!("all classes {:.3} mAP@0.5", m.map50)),
    });
    let stem = dir.join("BoxPR_curve");
    plot_lines(&stem.with_extension("png"), "Precision-Recall Curve", "Recall", "Precision", &c.px, &lines)?;
    write_csv(&stem.with_extension("csv"), ("recall", &c.px), &pr_names, &c.py, ("all", &mean))?;
    files.extend(["png", "csv"].map(|e| stem.with_extension(e)));
    let class_names: Vec<String> = m.classes.iter().map(|&k| class_name(names, k)).collect();
    for (file, ylabel, rows) in
        [("BoxF1_curve", "F1", &c.f1), ("BoxP_curve", "Precision", &c.precision), ("BoxR_curve", "Recall", &c.recall)]
    {
        let y = smooth(&column_mean(rows, c.px.len()), 0.1);
        let best = argmax(&y);
        let mut lines = class_lines(rows, |i| class_names[i].clone());
        lines.push(Line {
            y: y.clone(),
            color: BLUE,
            width: 10,
            label: Some(format!("all classes {:.2} at {:.3}", y[best], c.px[best])),
        });
        let stem = dir.join(file);
        let title = format!("{ylabel}-Confidence Curve");
        plot_lines(&stem.with_extension("png"), &title, "Confidence", ylabel, &c.px, &lines)?;
        write_csv(&stem.with_extension("csv"), ("confidence", &c.px), &class_names, rows, ("all_smoothed", &y))?;
        files.extend(["png", "csv"].map(|e| stem.with_extension(e)));
    }
    Ok(files)
}
