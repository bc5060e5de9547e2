//! Prediction on image files as Ultralytics' predictor does it: each image letterboxed to the
//! minimum stride-multiple rectangle (or to an ONNX file's fixed input), one forward pass, NMS
//! at the predict defaults (confidence 0.25, IoU 0.7, one class per box), boxes scaled back to
//! the original image and clipped.

use crate::backend::{Backend, Executable};
use crate::data::dataset::class_name;
use crate::data::dataset::{is_image, list_images};
use crate::data::image::{letterbox_stride, round_half_even, Img};
use crate::plot::annotate::{draw_marks, font_size, line_width, Mark};
use crate::val::nms::{non_max_suppression, Detection, NmsOptions};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use slimc_ir::{Model, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of a prediction run.
#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// Target size (h, w) of the letterbox.
    pub imgsz: [usize; 2],
    /// NMS settings (confidence, IoU, detections kept, classes, agnostic).
    pub nms: NmsOptions,
}

impl PredictOptions {
    /// Ultralytics' predict defaults at `imgsz`: confidence 0.25, IoU 0.7, 300 detections, the
    /// best class per box.
    pub fn new(imgsz: [usize; 2]) -> PredictOptions {
        PredictOptions { imgsz, nms: NmsOptions { conf: 0.25, multi_label: false, ..Default::default() } }
    }
}

/// The images a source names: an image file, a folder (searched recursively), a `.txt` list of
/// image paths, or a glob pattern (`*`, `?`, `[...]`). Sorted.
pub fn find_sources(source: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(source);
    let found = if p.is_dir() || (p.is_file() && p.extension().is_some_and(|e| e == "txt")) {
        list_images(&[p.to_path_buf()])?
    } else if p.is_file() {
        if !is_image(p) {
            bail!("{source}: not an image file (by its extension), folder, .txt list or glob");
        }
        vec![p.to_path_buf()]
    } else if source.contains(['*', '?', '[']) {
        let paths = glob::glob(source).map_err(|e| anyhow!("{source}: not a valid glob: {e}"))?;
        let mut v: Vec<PathBuf> = paths.filter_map(|r| r.ok()).filter(|p| p.is_file() && is_image(p)).collect();
        v.sort();
        v
    } else {
        bail!("{source}: no such file or folder");
    };
    if found.is_empty() {
        bail!("{source}: no images found");
    }
    Ok(found)
}

/// A compiled model ready to predict image after image.
pub struct Predictor {
    exe: Box<dyn Executable>,
    /// The input size of a model that runs at one size only (an ONNX file); `None` for a model
    /// with a Detect head, which runs at any stride-multiple size.
    fixed: Option<[usize; 2]>,
    stride: usize,
    nc: usize,
    /// Class names (the model's).
    pub names: Vec<String>,
    opts: PredictOptions,
}

/// One image's result.
pub struct ImageResult {
    /// The image as read.
    pub image: Img,
    /// The letterboxed input's (h, w).
    pub input: [usize; 2],
    /// Detections in the original image's pixels, clipped to it, by descending confidence.
    pub dets: Vec<Detection>,
    /// Milliseconds spent letterboxing, in the model, and in NMS and rescaling.
    pub ms: [f64; 3],
}

impl Predictor {
    /// Compiles `model`'s inference graph on `backend`.
    pub fn new(backend: &dyn Backend, model: &Model, opts: PredictOptions) -> Result<Predictor> {
        let g = &model.graph;
        if g.inputs.len() != 1 || g.outputs.is_empty() {
            bail!("prediction needs a model with one image input, this one takes {}", g.inputs.len());
        }
        let out = g.ty(g.outputs[0]);
        let nc = match out.shape.get(1).and_then(|d| d.fixed()) {
            Some(rows) if out.rank() == 3 && rows > 4 => rows - 4,
            _ => bail!("prediction needs a detector's output [batch, 4 + classes, anchors]; this model's is {out:?}"),
        };
        let input = g.ty(g.inputs[0]);
        let fixed = match (
            model.head_classes(),
            input.shape.get(2).and_then(|d| d.fixed()),
            input.shape.get(3).and_then(|d| d.fixed()),
        ) {
            (None, Some(h), Some(w)) => Some([h, w]),
            _ => None,
        };
        let stride = model.meta.strides.iter().copied().fold(32.0f32, f32::max) as usize;
        let names = (0..nc).map(|c| class_name(&model.meta.names, c)).collect();
        Ok(Predictor { exe: backend.compile(model)?, fixed, stride, nc, names, opts })
    }

    /// Reads and predicts one image file.
    pub fn predict_file(&mut self, path: &Path) -> Result<ImageResult> {
        let image = Img::open(path)?;
        self.predict(image).with_context(|| format!("{}", path.display()))
    }

    /// Predicts one image.
    pub fn predict(&mut self, image: Img) -> Result<ImageResult> {
        let t0 = Instant::now();
        let (lb, _, _) = match self.fixed {
            Some(shape) => letterbox_stride(&image, shape, true, None),
            None => letterbox_stride(&image, self.opts.imgsz, true, Some(self.stride)),
        };
        let (h, w) = (lb.h, lb.w);
        let mut x = vec![0.0f32; 3 * h * w];
        lb.to_chw(&mut x);
        let x = Tensor::from_f32(vec![1, 3, h, w], x)?;
        let t1 = Instant::now();
        let out = self.exe.run_in_order(&[x])?;
        let t2 = Instant::now();
        let o = &out[0];
        let anchors = o.shape[2];
        let mut dets = non_max_suppression(o.f32s()?, self.nc, anchors, &self.opts.nms);
        scale_boxes([h, w], &mut dets, [image.h, image.w]);
        let ms = [t1 - t0, t2 - t1, t2.elapsed()].map(|d| d.as_secs_f64() * 1e3);
        Ok(ImageResult { image, input: [h, w], dets, ms })
    }
}

/// Ultralytics' `scale_boxes` without a given ratio: boxes of a letterboxed `from` (h, w) image
/// back to the original `to` (h, w) image, the gain and padding recomputed from the shapes,
/// then clipped to it.
pub fn scale_boxes(from: [usize; 2], dets: &mut [Detection], to: [usize; 2]) {
    let [h1, w1] = from.map(|v| v as f64);
    let [h0, w0] = to.map(|v| v as f64);
    let gain = (h1 / h0).min(w1 / w0);
    let pad_x = round_half_even((w1 - w0 * gain) / 2.0 - 0.1) as f32;
    let pad_y = round_half_even((h1 - h0 * gain) / 2.0 - 0.1) as f32;
    let g = gain as f32;
    for d in dets {
        let [x1, y1, x2, y2] = d.xyxy;
        let sx = |v: f32| ((v - pad_x) / g).clamp(0.0, w0 as f32);
        let sy = |v: f32| ((v - pad_y) / g).clamp(0.0, h0 as f32);
        d.xyxy = [sx(x1), sy(y1), sx(x2), sy(y2)];
    }
}

impl ImageResult {
    /// The original image with its detections drawn as Ultralytics' `Results.plot()` does
    /// (line width scaled to the image, "name 0.87" labels).
    pub fn annotated(&self, names: &[String]) -> Result<RgbImage> {
        let mut img = RgbImage::from_raw(self.image.w as u32, self.image.h as u32, self.image.data.clone())
            .ok_or_else(|| anyhow!("image buffer of the wrong size"))?;
        let (h, w) = (self.image.h as u32, self.image.w as u32);
        let marks: Vec<Mark> =
            self.dets.iter().map(|d| Mark { xyxy: d.xyxy, class: d.class, conf: Some(d.score) }).collect();
        draw_marks(&mut img, &marks, line_width(h, w), font_size(h, w), |m| {
            Some(format!("{} {:.2}", class_name(names, m.class), m.conf.unwrap_or(1.0)))
        })?;
        Ok(img)
    }

    /// YOLO-format label lines (class, normalised cx, cy, w, h, and with `conf` the confidence),
    /// numbers as Python's `%g` writes them, as Ultralytics' `save_txt`.
    pub fn label_lines(&self, conf: bool) -> String {
        let (w, h) = (self.image.w as f32, self.image.h as f32);
        let mut s = String::new();
        for d in &self.dets {
            let [x1, y1, x2, y2] = d.xyxy;
            let mut v = vec![d.class as f64];
            v.extend([((x1 + x2) / 2.0 / w) as f64, ((y1 + y2) / 2.0 / h) as f64]);
            v.extend([((x2 - x1) / w) as f64, ((y2 - y1) / h) as f64]);
            if conf {
                v.push(d.score as f64);
            }
            s += &v.iter().map(|&x| format_g(x)).collect::<Vec<_>>().join(" ");
            s.push('\n');
        }
        s
    }

    /// "3 trees, 1 car" (or "(no detections)"), classes in id order, as Ultralytics' log line.
    pub fn counts(&self, names: &[String]) -> String {
        let mut per = std::collections::BTreeMap::new();
        for d in &self.dets {
            *per.entry(d.class).or_insert(0usize) += 1;
        }
        if per.is_empty() {
            return "(no detections)".into();
        }
        per.iter()
            .map(|(&c, &n)| format!("{n} {}{}", class_name(names, c), if n > 1 { "s" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Python's `"%g" % x`: six significant digits, trailing zeros dropped, exponent form outside
/// 1e-4 ≤ |x| < 1e6.
pub fn format_g(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    let exp = x.abs().log10().floor() as i32;
    // Rounding to six digits can carry into the next power of ten (999999.5 → 1e+06).
    let rounded: f64 = format!("{x:.5e}").parse().unwrap_or(x);
    let exp = if rounded.abs() >= 10f64.powi(exp + 1) { exp + 1 } else { exp };
    let strip = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-4..6).contains(&exp) {
        strip(format!("{x:.*}", (5 - exp).max(0) as usize))
    } else {
        let s = format!("{x:.5e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        format!("{}e{}{:02}", strip(m.to_string()), if e < 0 { '-' } else { '+' }, e.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_g_writes_what_python_writes() {
        // "%g" % x in Python 3.
        for (x, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (0.5, "0.5"),
            (0.123456789, "0.123457"),
            (12.0, "12"),
            (0.000123456, "0.000123456"),
            (0.0000123456, "1.23456e-05"),
            (123456.7, "123457"),
            (1234567.0, "1.23457e+06"),
            (999999.5, "1e+06"),
            (-0.25, "-0.25"),
        ] {
            assert_eq!(format_g(x), want, "{x}");
        }
    }

    #[test]
    fn boxes_scale_back_through_the_letterbox_and_clip() {
        // A 400×600 image letterboxed to 448×640: gain 640/600. The letterbox put 10 rows of
        // padding on top (round(10.5 - 0.1)), but scale_boxes recomputes it from the shapes
        // unrounded, (448 - 426.67)/2 - 0.1 = 10.57 → 11, as Ultralytics does.
        let mut d = [Detection { xyxy: [64.0, 10.0, 700.0, 117.0], score: 0.9, class: 0 }];
        scale_boxes([448, 640], &mut d, [400, 600]);
        let g = 640.0f32 / 600.0;
        assert_eq!(d[0].xyxy, [64.0 / g, 0.0, 600.0, 106.0 / g]);
    }
}
