//! Boxes drawn on images: a prediction's annotated image, and Ultralytics' `plot_images`
//! mosaics (`train_batchN.jpg`, `val_batchN_labels.jpg`, `val_batchN_pred.jpg`).

use super::{class_color, err, register_font, replace_atomic};
use crate::data::dataset::class_name;
use crate::data::image::batch_image;
use anyhow::{anyhow, Result};
use image::RgbImage;
use plotters::prelude::*;
use slimc_ir::Tensor;
use std::path::Path;

/// A box to draw, in the pixels of the image it is drawn on.
#[derive(Clone, Debug)]
pub struct Mark {
    /// x1, y1, x2, y2.
    pub xyxy: [f32; 4],
    /// Class id.
    pub class: usize,
    /// Confidence of a detection; `None` for a label.
    pub conf: Option<f32>,
}

/// Ultralytics' automatic line width for an `h×w` RGB image: `max(round((h + w + 3)/2 · 0.003), 2)`.
pub fn line_width(h: u32, w: u32) -> u32 {
    (((h + w + 3) as f64 / 2.0 * 0.003).round() as u32).max(2)
}

/// Font size (pixels) for labels on an `h×w` image, as Ultralytics' PIL annotator sizes it.
pub fn font_size(h: u32, w: u32) -> u32 {
    (((h + w) as f64 / 2.0 * 0.035).round() as u32).max(12)
}

/// Black text on light class colours, white on the others.
fn text_color(c: RGBColor) -> RGBColor {
    let lum = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if lum > 150.0 {
        BLACK
    } else {
        WHITE
    }
}

/// Draws `marks` on `img` in place: each box `lw` pixels wide in its class colour with a
/// filled label above it (inside, where there is no room above). `label` gives a mark's text
/// (`None`: the box alone).
pub fn draw_marks(
    img: &mut RgbImage,
    marks: &[Mark],
    lw: u32,
    fs: u32,
    label: impl Fn(&Mark) -> Option<String>,
) -> Result<()> {
    register_font();
    let (w, h) = img.dimensions();
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let font = ("sans-serif", fs as f64).into_font();
    let (wi, hi) = (w as i32, h as i32);
    for m in marks {
        let c = class_color(m.class);
        let [x1, y1, x2, y2] = m.xyxy.map(|v| v.round() as i32);
        let (x1, y1, x2, y2) = (x1.clamp(0, wi - 1), y1.clamp(0, hi - 1), x2.clamp(0, wi - 1), y2.clamp(0, hi - 1));
        let t = lw as i32 - 1;
        for edge in [
            [(x1, y1), (x2, (y1 + t).min(y2))],
            [(x1, (y2 - t).max(y1)), (x2, y2)],
            [(x1, y1), ((x1 + t).min(x2), y2)],
            [((x2 - t).max(x1), y1), (x2, y2)],
        ] {
            root.draw(&Rectangle::new(edge, c.filled())).map_err(err)?;
        }
        let Some(text) = label(m) else { continue };
        let (tw, th) = root.estimate_text_size(&text, &TextStyle::from(font.clone())).map_err(err)?;
        let (tw, th) = (tw as i32 + 2, th as i32 + 2);
        let lx = x1.min(wi - tw).max(0);
        let ly = if y1 >= th { y1 - th } else { y1 };
        root.draw(&Rectangle::new([(lx, ly), (lx + tw, ly + th)], c.filled())).map_err(err)?;
        let style = font.clone().color(&text_color(c));
        root.draw(&Text::new(text, (lx + 1, ly + 1), style)).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// One image of a mosaic with its file name and its boxes (in its pixels).
pub struct Tile {
    /// The image; every tile of a mosaic has the same size.
    pub image: RgbImage,
    /// Shown in the tile's corner (the file's name).
    pub name: String,
    /// Labels or detections.
    pub marks: Vec<Mark>,
}

/// Ultralytics' `plot_images`: up to 16 tiles in a square grid filled column by column, scaled
/// to at most 1920 pixels, white borders, file names, boxes with class names (and, for
/// detections above `conf_thres`, their confidence to one decimal; those under it are not drawn).
pub fn mosaic(tiles: &[Tile], names: &[String], conf_thres: f32) -> Result<RgbImage> {
    let first = tiles.first().ok_or_else(|| anyhow!("a mosaic needs an image"))?;
    let (w0, h0) = first.image.dimensions();
    let bs = tiles.len().min(16);
    let ns = (bs as f64).sqrt().ceil() as u32;
    let mut canvas = RgbImage::from_pixel(ns * w0, ns * h0, image::Rgb([255, 255, 255]));
    let origin = |i: usize, w: u32, h: u32| (w * (i as u32 / ns), h * (i as u32 % ns));
    for (i, t) in tiles.iter().take(bs).enumerate() {
        if t.image.dimensions() != (w0, h0) {
            return Err(anyhow!("mosaic tile {} is {:?}, the first {:?}", t.name, t.image.dimensions(), (w0, h0)));
        }
        let (x, y) = origin(i, w0, h0);
        image::imageops::replace(&mut canvas, &t.image, x as i64, y as i64);
    }
    let scale = 1920.0 / ns as f64 / w0.max(h0) as f64;
    let (w, h, scale) = if scale < 1.0 {
        let (w, h) = ((scale * w0 as f64).ceil() as u32, (scale * h0 as f64).ceil() as u32);
        canvas = image::imageops::resize(&canvas, w * ns, h * ns, image::imageops::FilterType::Triangle);
        (w, h, scale as f32)
    } else {
        (w0, h0, 1.0)
    };
    let fs = ((((h + w) * ns) as f64 * 0.01) as u32).max(18);
    let lw = ((fs as f64 / 10.0).round() as u32).max(1);
    let mut marks = vec![];
    for (i, t) in tiles.iter().take(bs).enumerate() {
        let (x, y) = origin(i, w, h);
        for m in &t.marks {
            if m.conf.is_some_and(|c| c <= conf_thres) {
                continue;
            }
            let [x1, y1, x2, y2] = m.xyxy.map(|v| v * scale);
            marks.push(Mark { xyxy: [x1 + x as f32, y1 + y as f32, x2 + x as f32, y2 + y as f32], ..m.clone() });
        }
    }
    draw_marks(&mut canvas, &marks, lw, fs, |m| {
        let n = class_name(names, m.class);
        Some(match m.conf {
            Some(c) => format!("{n} {c:.1}"),
            None => n,
        })
    })?;
    register_font();
    let (cw, ch) = canvas.dimensions();
    let root = BitMapBackend::with_buffer(canvas.as_mut(), (cw, ch)).into_drawing_area();
    let style = ("sans-serif", fs as f64).into_font().color(&RGBColor(220, 220, 220));
    for (i, t) in tiles.iter().take(bs).enumerate() {
        let (x, y) = origin(i, w, h);
        let (x, y) = (x as i32, y as i32);
        root.draw(&Rectangle::new([(x, y), (x + w as i32 - 1, y + h as i32 - 1)], WHITE.stroke_width(2)))
            .map_err(err)?;
        let name: String = t.name.chars().take(40).collect();
        root.draw(&Text::new(name, (x + 5, y + 5), style.clone())).map_err(err)?;
    }
    root.present().map_err(err)?;
    drop(root);
    Ok(canvas)
}

/// Saves an image atomically (format by extension).
pub fn save_image(img: &RgbImage, out: &Path) -> Result<()> {
    replace_atomic(out, |tmp| img.save(tmp))
}

/// Ultralytics' `train_batchN.jpg`: the batch as the network is fed it, with its targets
/// (`[M, 6]` rows of image index, class, normalised cx, cy, w, h).
pub fn save_train_batch(images: &Tensor, targets: &Tensor, names: &[String], out: &Path) -> Result<()> {
    let (h, w) = (images.shape[2] as f32, images.shape[3] as f32);
    let mut tiles: Vec<Tile> = (0..images.shape[0].min(16))
        .map(|k| Ok(Tile { image: batch_image(images, k)?, name: String::new(), marks: vec![] }))
        .collect::<Result<_>>()?;
    for r in targets.f32s()?.chunks(6) {
        if let Some(t) = tiles.get_mut(r[0] as usize) {
            let (cx, cy, bw, bh) = (r[2] * w, r[3] * h, r[4] * w, r[5] * h);
            let xyxy = [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0];
            t.marks.push(Mark { xyxy, class: r[1] as usize, conf: None });
        }
    }
    save_image(&mosaic(&tiles, names, 0.25)?, out)
}

/// Two images side by side on a white canvas, each under its title (the taller decides the
/// height): a before/after comparison.
pub fn side_by_side(left: &RgbImage, right: &RgbImage, titles: [&str; 2]) -> Result<RgbImage> {
    register_font();
    let (w, h) = (left.width() + right.width(), left.height().max(right.height()));
    let fs = ((w as f64 * 0.02) as u32).clamp(16, 64);
    let band = fs * 2;
    let mut canvas = RgbImage::from_pixel(w + 10, h + band, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, left, 0, band as i64);
    image::imageops::replace(&mut canvas, right, left.width() as i64 + 10, band as i64);
    let (cw, ch) = canvas.dimensions();
    let root = BitMapBackend::with_buffer(canvas.as_mut(), (cw, ch)).into_drawing_area();
    let style = ("sans-serif", fs as f64).into_font().color(&BLACK);
    for (x, t) in [(0, titles[0]), (left.width() as i32 + 10, titles[1])] {
        root.draw(&Text::new(t.to_string(), (x + 8, (fs / 2) as i32), style.clone())).map_err(err)?;
    }
    root.present().map_err(err)?;
    drop(root);
    Ok(canvas)
}
