//! `slimc predict`: a model on image files, annotated images and labels out.

use super::args::{refuse_overwrite, run_dir, DeviceArg, ModelArgs};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use slimc::commands::predict::{find_sources, ImageResult, PredictOptions, Predictor};
use slimc::device::Device;
use slimc::load::{load_model, LoadOptions};
use slimc::plot::annotate::{save_image, side_by_side};
use slimc::val::validate::Prediction;
use std::path::{Path, PathBuf};

/// `slimc predict`.
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Images: a file, a folder, a glob ("imgs/*.jpg", quoted) or a .txt list of paths.
    #[arg(long)]
    source: String,
    /// Confidence threshold.
    #[arg(long, default_value_t = 0.25)]
    conf: f32,
    /// IoU threshold of NMS.
    #[arg(long, default_value_t = 0.7)]
    iou: f32,
    /// Detections kept per image.
    #[arg(long, default_value_t = 300)]
    max_det: usize,
    /// Keep only these class ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<usize>,
    /// Class-agnostic NMS.
    #[arg(long)]
    agnostic_nms: bool,
    /// Write YOLO-format labels (labels/<image>.txt: class cx cy w h, normalised).
    #[arg(long)]
    save_txt: bool,
    /// With --save-txt, append each box's confidence.
    #[arg(long)]
    save_conf: bool,
    /// Write every detection (original-image pixels) to predictions.json.
    #[arg(long)]
    save_json: bool,
    /// Do not write annotated images.
    #[arg(long)]
    no_save: bool,
    /// A second model run on the same images: each written image shows both side by side.
    #[arg(long, value_name = "OTHER_MODEL")]
    compare: Option<String>,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Parent folder of runs.
    #[arg(long, default_value = "runs/predict")]
    project: PathBuf,
    /// Run name (a number is appended if it exists).
    #[arg(long, default_value = "predict")]
    name: String,
}

/// Runs a model on images and writes what was asked.
pub fn predict(a: PredictArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.conf) || !(0.0..=1.0).contains(&a.iou) {
        bail!("--conf and --iou must lie in [0, 1]");
    }
    if a.max_det == 0 {
        bail!("--max-det must be at least 1");
    }
    let sources = find_sources(&a.source)?;
    let model = a.m.load()?;
    let imgsz = a.m.imgsz.unwrap_or(model.meta.imgsz);
    let mut opts = PredictOptions::new(imgsz);
    opts.nms.conf = a.conf;
    opts.nms.iou = a.iou;
    opts.nms.max_det = a.max_det;
    opts.nms.agnostic = a.agnostic_nms;
    opts.nms.classes = (!a.classes.is_empty()).then(|| a.classes.clone());
    let backend = Device::from(a.device).backend()?;
    let mut main = Predictor::new(&*backend, &model, opts.clone())?;
    let mut other = match &a.compare {
        Some(path) => {
            let m = load_model(path, &LoadOptions { imgsz: a.m.imgsz, ..Default::default() })?;
            Some(Predictor::new(&*backend, &m, opts)?)
        }
        None => None,
    };
    let dir = run_dir(&a.project, &a.name)?;
    let inputs = [a.m.input_files(), sources.clone(), a.compare.iter().map(PathBuf::from).collect()];
    let pb = if sources.len() > 1 { ProgressBar::new(sources.len() as u64) } else { ProgressBar::hidden() };
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}<{eta}, {per_sec}]").expect("template"));
    let (mut failed, mut json, mut total_ms, mut done, mut labels) = (vec![], vec![], [0.0; 3], 0usize, 0usize);
    let mut shape = [0, 0];
    for (i, path) in sources.iter().enumerate() {
        let r = match main.predict_file(path) {
            Ok(r) => r,
            Err(e) => {
                pb.suspend(|| eprintln!("WARNING image {}/{} skipped: {e:#}", i + 1, sources.len()));
                failed.push(path.clone());
                pb.inc(1);
                continue;
            }
        };
        let extra = match &mut other {
            Some(p) => Some(p.predict(r.image.clone())?),
            None => None,
        };
        let ms = r.ms.iter().sum::<f64>();
        let mut line = format!(
            "image {}/{} {}: {}x{} {}, {ms:.1}ms",
            i + 1,
            sources.len(),
            path.display(),
            r.input[0],
            r.input[1],
            r.counts(&main.names)
        );
        if let Some(o) = &extra {
            line += &format!(" | compare: {}", o.counts(&main.names));
        }
        pb.suspend(|| println!("{line}"));
        for (t, v) in total_ms.iter_mut().zip(r.ms) {
            *t += v;
        }
        done += 1;
        shape = r.input;
        let file = path.file_name().map_or_else(|| PathBuf::from(format!("image{i}.jpg")), PathBuf::from);
        if !a.no_save {
            let out = dir.join(saveable(&file));
            refuse_overwrite(&out, &inputs)?;
            let img = r.annotated(&main.names)?;
            let img = match &extra {
                Some(o) => side_by_side(
                    &img,
                    &o.annotated(&main.names)?,
                    [&a.m.model, &a.compare.clone().unwrap_or_default()],
                )?,
                None => img,
            };
            save_image(&img, &out)?;
        }
        if a.save_txt && !r.dets.is_empty() {
            let out = dir.join("labels").join(file.with_extension("txt"));
            std::fs::create_dir_all(dir.join("labels"))?;
            slimc_ir::write_atomic(&out, r.label_lines(a.save_conf).as_bytes())?;
            labels += 1;
        }
        if a.save_json {
            json.extend(predictions(path, &r));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if done > 0 {
        let n = done as f64;
        println!(
            "Speed: {:.1}ms preprocess, {:.1}ms inference, {:.1}ms postprocess per image at shape (1, 3, {}, {}) on {}",
            total_ms[0] / n,
            total_ms[1] / n,
            total_ms[2] / n,
            shape[0],
            shape[1],
            Device::from(a.device).describe()
        );
    }
    if a.save_json {
        slimc_ir::write_atomic(&dir.join("predictions.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    println!("Results saved to {}", dir.display());
    if a.save_txt {
        println!("{labels} label file(s) saved to {}", dir.join("labels").display());
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|p| p.display().to_string()).collect();
        eprintln!("WARNING {} of {} images could not be read: {}", failed.len(), sources.len(), list.join(", "));
        if done == 0 {
            bail!("no image of {} could be read", a.source);
        }
    }
    Ok(())
}

/// The output name of an annotated image: its own name where slimc writes that format, else
/// the same stem as .jpg.
fn saveable(file: &Path) -> PathBuf {
    let ext = file.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ["jpg", "jpeg", "png", "bmp"].contains(&ext.as_str()) {
        file.to_path_buf()
    } else {
        file.with_extension("jpg")
    }
}

/// An image's detections as the JSON rows `slimc val --save-json` writes.
fn predictions(path: &Path, r: &ImageResult) -> Vec<Prediction> {
    r.dets
        .iter()
        .map(|d| Prediction {
            image: path.display().to_string(),
            class: d.class,
            score: d.score,
            bbox: d.xyxy,
            input_bbox: None,
        })
        .collect()
}
