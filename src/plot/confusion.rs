//! `confusion_matrix.png` and `confusion_matrix_normalized.png` as Ultralytics draws them: a
//! "Blues" heat map, predicted classes down, true classes across, background last, counts (or
//! column shares) in the cells, with the numbers as `confusion_matrix.csv`.

use super::{err, register_font, replace_atomic};
use crate::val::confusion::ConfusionMatrix;
use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// Size of the plot: Ultralytics' 12×9 inch figure at 250 dpi.
pub const MATRIX_SIZE: (u32, u32) = (3000, 2250);

/// Matplotlib's "Blues" colour map at `t` in [0, 1] (its nine ColorBrewer stops, linear between).
fn blues(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    let x = t.clamp(0.0, 1.0) * 8.0;
    let i = (x.floor() as usize).min(7);
    let f = x - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Writes both plots and `confusion_matrix.csv` into `dir`; returns the files written.
pub fn plot_confusion(cm: &ConfusionMatrix, names: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    let labels = cm.labels(names);
    let mut files = vec![];
    for normalize in [true, false] {
        let values = if normalize { cm.normalized() } else { cm.matrix.clone() };
        let file = if normalize { "confusion_matrix_normalized.png" } else { "confusion_matrix.png" };
        let title = if normalize { "Confusion Matrix Normalized" } else { "Confusion Matrix" };
        draw_matrix(&dir.join(file), title, &values, &labels, normalize)?;
        files.push(dir.join(file));
    }
    let csv = dir.join("confusion_matrix.csv");
    slimc_ir::write_atomic(&csv, cm.to_csv(names).as_bytes())?;
    files.push(csv);
    Ok(files)
}

fn draw_matrix(out: &Path, title: &str, values: &[Vec<f64>], labels: &[String], normalize: bool) -> Result<()> {
    register_font();
    // Values under 0.005 are left blank, as Ultralytics sets them to NaN.
    let shown = |v: f64| v >= 0.005;
    let vmax = values.iter().flatten().copied().filter(|&v| shown(v)).fold(0.0f64, f64::max).max(1e-9);
    let n = labels.len();
    replace_atomic(out, |tmp| -> Result<()> {
        let root = BitMapBackend::new(tmp, MATRIX_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (w, h) = (MATRIX_SIZE.0 as i32, MATRIX_SIZE.1 as i32);
        let label_font = (40.0 - 0.3 * n as f64).max(20.0);
        let tick_font = (52.0 - 0.35 * n as f64).max(20.0);
        let side = ((h as f64 * 0.7).min(w as f64 * 0.62)) as i32;
        let (x0, y0) = (((w as f64 * 0.84) as i32 - side) / 2 + 180, 160);
        let cell = side as f64 / n as f64;
        let centered = Pos::new(HPos::Center, VPos::Center);
        root.draw(&Text::new(
            title.to_string(),
            (x0 + side / 2, 70),
            ("sans-serif", 48).into_font().color(&BLACK).pos(centered),
        ))
        .map_err(err)?;
        let text_threshold = 0.45 * if normalize { 1.0 } else { vmax };
        for (i, row) in values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let (cx0, cy0) = (x0 + (j as f64 * cell) as i32, y0 + (i as f64 * cell) as i32);
                let (cx1, cy1) = (x0 + ((j + 1) as f64 * cell) as i32, y0 + ((i + 1) as f64 * cell) as i32);
                if !shown(v) {
                    continue;
                }
                root.draw(&Rectangle::new([(cx0, cy0), (cx1, cy1)], blues(v / vmax).filled())).map_err(err)?;
                if n < 30 {
                    let text = if normalize { format!("{v:.2}") } else { format!("{}", v as i64) };
                    let color = if v > text_threshold { WHITE } else { BLACK };
                    let style = ("sans-serif", 40).into_font().color(&color).pos(centered);
                    root.draw(&Text::new(text, ((cx0 + cx1) / 2, (cy0 + cy1) / 2), style)).map_err(err)?;
                }
            }
        }
        if n < 99 {
            for (k, name) in labels.iter().enumerate() {
                let off = ((k as f64 + 0.5) * cell) as i32;
                let ystyle =
                    ("sans-serif", tick_font).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(name.clone(), (x0 - 16, y0 + off), ystyle)).map_err(err)?;
                // Rotated text runs up from its anchor: start it one text length below the axis.
                let (tw, _) =
                    root.estimate_text_size(name, &("sans-serif", tick_font).into_font().into()).map_err(err)?;
                let xstyle = ("sans-serif", tick_font)
                    .into_font()
                    .transform(FontTransform::Rotate270)
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center));
                root.draw(&Text::new(name.clone(), (x0 + off, y0 + side + 16 + tw as i32), xstyle)).map_err(err)?;
            }
        }
        let axis = ("sans-serif", label_font + 8.0).into_font().color(&BLACK);
        root.draw(&Text::new("True", (x0 + side / 2, h - 60), axis.clone().pos(centered))).map_err(err)?;
        root.draw(&Text::new("Predicted", (60, y0 + side / 2), axis.transform(FontTransform::Rotate270).pos(centered)))
            .map_err(err)?;
        // The colour bar with five ticks.
        let (bx, bw) = (x0 + side + 90, 60);
        for k in 0..side {
            let t = 1.0 - k as f64 / side as f64;
            root.draw(&Rectangle::new([(bx, y0 + k), (bx + bw, y0 + k + 1)], blues(t).filled())).map_err(err)?;
        }
        for k in 0..=4 {
            let v = vmax * k as f64 / 4.0;
            let y = y0 + side - (side as f64 * k as f64 / 4.0) as i32;
            let text = if normalize || vmax < 10.0 { format!("{v:.2}") } else { format!("{}", v.round() as i64) };
            let style = ("sans-serif", 34).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
            root.draw(&Text::new(text, (bx + bw + 14, y), style)).map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    })
}
