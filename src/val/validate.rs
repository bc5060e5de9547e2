//! A validation run over a split: rect batches through the inference graph, NMS, matching and
//! Ultralytics' metrics, with the per-class table it prints.

use super::confusion::ConfusionMatrix;
use super::metrics::{ap_per_class, box_iou, match_predictions, DetMetrics};
use super::nms::{non_max_suppression, Detection, NmsOptions};
use crate::backend::{Backend, Executable};
use crate::data::image::batch_image;
use crate::data::loader::Loader;
use crate::distributed::World;
use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use slimc_ir::{Graph, Model, Tensor, ValueId};
use slimc_passes::{LOSS_ITEMS, LOSS_TOTAL};

/// One kept detection of a validation run, as `--save-json` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Prediction {
    /// Image file.
    pub image: String,
    /// Class id.
    pub class: usize,
    /// Confidence.
    pub score: f32,
    /// x1, y1, x2, y2 in the original image's pixels, clipped to it.
    pub bbox: [f32; 4],
    /// x1, y1, x2, y2 in the network input's (letterboxed) pixels, unclipped: the box that
    /// validation matched against the labels (written by `val --save-json` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_bbox: Option<[f32; 4]>,
}

/// The outcome of a validation run.
pub struct ValResult {
    /// Ultralytics' metrics.
    pub metrics: DetMetrics,
    /// Images validated.
    pub images: usize,
    /// Labelled objects.
    pub instances: usize,
    /// Images per class that contain it, by class id.
    pub images_per_class: Vec<usize>,
    /// Inference and NMS time per image, ms.
    pub ms_per_image: f64,
    /// Every kept detection (when asked for).
    pub predictions: Vec<Prediction>,
    /// Mean detection loss components (box, cls, dfl) over the batches; None for a model
    /// without a Detect head to attach the loss to (an ONNX file, whose anchors are constants).
    pub loss: Option<[f32; 3]>,
    /// Ultralytics' confusion matrix of the run (detections above 0.25, IoU 0.45).
    pub confusion: ConfusionMatrix,
    /// The images of the first [`ValOptions::plot_batches`] batches, for the mosaics.
    pub kept: Vec<Vec<KeptImage>>,
}

/// How a validation run goes.
#[derive(Clone, Copy, Debug)]
pub struct ValOptions {
    /// Images per rect batch.
    pub batch: usize,
    /// Keep every detection in original-image pixels ([`ValResult::predictions`]).
    pub keep_predictions: bool,
    /// Show a progress bar.
    pub bar: bool,
    /// Keep this many first batches as mosaic tiles (Ultralytics plots 3).
    pub plot_batches: usize,
}

impl ValOptions {
    /// Batches of `batch`, nothing kept, no bar.
    pub fn quiet(batch: usize) -> ValOptions {
        ValOptions { batch, keep_predictions: false, bar: false, plot_batches: 0 }
    }
}

/// One validation image kept for the mosaics: as the network saw it (letterboxed), named by its
/// file, with its labels and its detections in its pixels.
pub struct KeptImage {
    /// The letterboxed image.
    pub image: image::RgbImage,
    /// The file's name.
    pub name: String,
    /// Labels: class and box (x1, y1, x2, y2).
    pub labels: Vec<(usize, [f32; 4])>,
    /// Detections after NMS.
    pub detections: Vec<Detection>,
}

/// The image `k` of `b`, kept with its labels and `dets`.
fn keep(b: &crate::data::loader::Batch, split: &Loader, k: usize, dets: &[Detection]) -> Result<KeptImage> {
    let path = &split.samples[b.indices[k]].path;
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let labels = b.objects[k].iter().map(|o| (o.cls, o.xyxy)).collect();
    Ok(KeptImage { image: batch_image(&b.images, k)?, name, labels, detections: dets.to_vec() })
}

/// The detection loss of `model`'s Detect head as a graph of its own: the head's level maps
/// and the targets in, the loss components out; with the level maps (the loss's inputs but the
/// last) as `model`'s graph names them.
fn loss_graph(model: &Model) -> Result<(Model, Vec<ValueId>)> {
    let mut g = model.graph.clone();
    let node = slimc_passes::attach_detect_loss(&mut g).map_err(|e| anyhow!("validation loss: {e}"))?;
    let n = &g.nodes[node.0];
    let mut loss = Graph::new("loss");
    let inputs: Vec<ValueId> = n.inputs.iter().map(|&v| loss.add_input(&g.value(v).name, g.ty(v).clone())).collect();
    let outs = loss.add_node(n.op.clone(), &inputs, &[LOSS_ITEMS, LOSS_TOTAL], "loss")?;
    loss.outputs = vec![outs[0]];
    let levels = n.inputs[..n.inputs.len() - 1].to_vec();
    let meta = model.meta.clone();
    Ok((Model { graph: loss, tensors: Default::default(), meta, training_state: vec![] }, levels))
}

/// The matching statistics of one validation batch.
#[derive(Default, Serialize, Deserialize)]
struct BatchStats {
    /// The batch's place among the run's batches.
    index: usize,
    /// Per detection: matched at each IoU threshold.
    tp: Vec<[bool; 10]>,
    /// Per detection: confidence and class.
    conf: Vec<f32>,
    pred_cls: Vec<usize>,
    /// Per label: its class.
    true_cls: Vec<usize>,
    /// The kept detections (when asked for).
    predictions: Vec<Prediction>,
}

/// What a rank sends rank 0 after validating its share of the batches.
#[derive(Serialize, Deserialize)]
struct Share {
    batches: Vec<BatchStats>,
    images_per_class: Vec<usize>,
    loss: [f32; 3],
    confusion: Vec<Vec<f64>>,
}

/// Validates `model` (its inference graph, compiled once on `backend`) on `split`, a dataset of
/// `nc` classes.
pub fn validate(
    backend: &dyn Backend,
    model: &Model,
    split: &Loader,
    nc: usize,
    opts: &ValOptions,
) -> Result<ValResult> {
    validate_ranks(backend, model, split, nc, opts, &World::solo())
}

/// [`validate`] with the batches shared among the ranks of `world` (rank 0 takes the first
/// [`ValOptions::plot_batches`], whose images it keeps for the mosaics; of the others rank `r`
/// takes every N-th from the `r`-th, each at the rect shape one process gives it) and the
/// statistics gathered in batch order, so every rank returns what one process validating every
/// batch would (the mosaic images on rank 0).
pub fn validate_ranks(
    backend: &dyn Backend,
    model: &Model,
    split: &Loader,
    nc: usize,
    opts: &ValOptions,
    world: &World,
) -> Result<ValResult> {
    validate_reusing(backend, model, split, nc, opts, world, &mut ValProgram::default())
}

/// The compiled validation programs of one graph, kept between validations of that graph with
/// new weights (the trainer's, every epoch): compiled once, their arenas' memory kept.
#[derive(Default)]
pub struct ValProgram {
    compiled: Option<(Graph, Programs)>,
}

/// A graph's validation programs: the inference graph, with a Detect head's level maps as extra
/// outputs, and for a model with a Detect head the detection loss over a whole batch's level
/// maps and targets (so the forward can run in chunks of images while the loss, normalised over
/// the whole batch, sees the batch).
struct Programs {
    forward: Box<dyn Executable>,
    loss: Option<Box<dyn Executable>>,
}

impl ValProgram {
    /// The programs for `model` on `backend` (the same backend on every call): the kept ones with
    /// `model`'s weights written into them when they were compiled from the same graph, else new.
    fn for_model(&mut self, backend: &dyn Backend, model: &Model, has_head: bool) -> Result<&mut Programs> {
        match &mut self.compiled {
            Some((graph, programs)) if *graph == model.graph => {
                for &p in &model.graph.params {
                    let name = &model.graph.value(p).name;
                    let t = model.tensors.get(name).ok_or_else(|| anyhow!("no tensor for parameter {name}"))?;
                    programs.forward.write(name, t)?;
                }
            }
            kept => {
                let mut forward = model.clone();
                let loss = if has_head {
                    let (loss, levels) = loss_graph(model)?;
                    forward.graph.outputs.extend(levels);
                    Some(backend.compile(&loss)?)
                } else {
                    None
                };
                *kept = Some((model.graph.clone(), Programs { forward: backend.compile(&forward)?, loss }));
            }
        }
        Ok(&mut self.compiled.as_mut().expect("compiled above").1)
    }
}

impl Programs {
    /// The predictions for `images` (run through the forward `chunk` images at a time) and,
    /// with a loss program, the loss components against `targets` over the whole batch.
    fn run(&mut self, images: &Tensor, targets: &Tensor, chunk: usize) -> Result<(Tensor, Option<Vec<f32>>)> {
        let (n, chunk) = (images.shape[0], chunk.max(1));
        let mut outs = if chunk >= n {
            self.forward.run(&[images])?
        } else {
            let mut parts: Vec<Vec<Tensor>> = vec![];
            for k in (0..n).step_by(chunk) {
                parts.push(self.forward.run(&[&images.outer_range(k..n.min(k + chunk))?])?);
            }
            (0..parts[0].len())
                .map(|j| Tensor::concat_outer(&parts.iter().map(|p| &p[j]).collect::<Vec<_>>()))
                .collect::<Result<_, _>>()?
        };
        let loss = match &mut self.loss {
            Some(exe) => {
                let inputs: Vec<&Tensor> = outs[1..].iter().chain([targets]).collect();
                Some(exe.run(&inputs)?[0].f32s()?.to_vec())
            }
            None => None,
        };
        Ok((outs.swap_remove(0), loss))
    }
}

/// [`validate_ranks`] with the program kept in `program` for the next call.
#[allow(clippy::too_many_arguments)]
pub fn validate_reusing(
    backend: &dyn Backend,
    model: &Model,
    split: &Loader,
    nc: usize,
    opts: &ValOptions,
    world: &World,
    program: &mut ValProgram,
) -> Result<ValResult> {
    let ValOptions { batch, keep_predictions, bar, plot_batches } = *opts;
    let nms = NmsOptions { multi_label: nc > 1, ..Default::default() };
    if model.graph.inputs.len() != 1 {
        return Err(anyhow!(
            "validation needs a model with one image input, this one takes {}",
            model.graph.inputs.len()
        ));
    }
    let batches = split.val_batches(batch);
    let (rank, ranks) = (world.rank(), world.size());
    let owner = |k: usize| if k < plot_batches { 0 } else { (k - plot_batches) % ranks };
    let mine = (0..batches.len()).filter(|&k| owner(k) == rank).count();
    let pb = if bar { ProgressBar::new(mine as u64) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{msg:>24} {bar:30} {pos}/{len} [{elapsed}<{eta}, {per_sec}]").expect("template"),
    );
    pb.set_message("Class Images Instances");
    let mut stats: Vec<BatchStats> = vec![];
    let mut images_per_class = vec![0; nc];
    let mut confusion = ConfusionMatrix::new(nc);
    let mut kept = vec![];
    // A graph with a Detect head runs at any size, in rect batches, with the loss beside the
    // predictions; one whose anchors were folded (an ONNX file) runs at its own input size and
    // batch only, as Ultralytics validates exported models.
    let has_head = model.head_classes().is_some();
    let input = model.graph.ty(model.graph.inputs[0]).clone();
    let fixed = |i: usize| input.shape.get(i).and_then(|d| d.fixed());
    let batches = if has_head {
        batches
    } else {
        let n = fixed(0).unwrap_or(batch);
        let all: Vec<usize> = batches.into_iter().flatten().collect();
        if all.len() % n != 0 {
            return Err(anyhow!("the model takes batches of exactly {n} images; the split has {}", all.len()));
        }
        all.chunks(n).map(|c| c.to_vec()).collect()
    };
    let shape = match (has_head, fixed(2), fixed(3)) {
        (false, Some(h), Some(w)) => Some([h, w]),
        (false, _, _) => Some([split.imgsz; 2]),
        _ => None,
    };
    let programs = program.for_model(backend, model, has_head)?;
    // Images are independent at inference: a graph that takes any batch runs in the backend's
    // chunks (on the CPU one image per thread, whose activations stay in its cache).
    let chunk = match fixed(0) {
        Some(n) => n,
        None => backend.inference_batch().unwrap_or(usize::MAX),
    };
    let mut loss = [0.0f32; 3];
    let start = std::time::Instant::now();
    let total = batches.len();
    for (ni, idx) in batches.iter().enumerate().filter(|(k, _)| owner(*k) == rank) {
        let mut st = BatchStats { index: ni, ..Default::default() };
        let b = match shape {
            Some(s) => split.val_batch_at(idx, s)?,
            None => split.val_batch(idx)?,
        };
        let (o, batch_loss) = programs.run(&b.images, &b.targets, chunk).map_err(|e| anyhow!("validation: {e:#}"))?;
        for (l, v) in loss.iter_mut().zip(batch_loss.unwrap_or_default()) {
            *l += v / total as f32;
        }
        let &[_, rows, anchors] = o.shape.as_slice() else {
            return Err(anyhow!("the model's first output is {}, not [batch, 4 + classes, anchors]", o.ty()));
        };
        if rows != 4 + nc {
            let what = rows.checked_sub(4).map_or(format!("{rows} rows"), |c| format!("{c} classes"));
            return Err(anyhow!("the model predicts {what}, the dataset has {nc} classes"));
        }
        let data = o.f32s()?;
        let mut kept_images = vec![];
        for (k, objs) in b.objects.iter().enumerate() {
            let dets = non_max_suppression(&data[k * rows * anchors..(k + 1) * rows * anchors], nc, anchors, &nms);
            confusion.add_image(&dets, objs);
            if ni < plot_batches {
                kept_images.push(keep(&b, split, k, &dets)?);
            }
            let true_cls: Vec<usize> = objs.iter().map(|o| o.cls).collect();
            let pred_cls: Vec<usize> = dets.iter().map(|d| d.class).collect();
            let iou: Vec<Vec<f32>> = objs
                .iter()
                .map(|o| dets.iter().map(|d| if d.class == o.cls { box_iou(&o.xyxy, &d.xyxy) } else { 0.0 }).collect())
                .collect();
            st.tp.extend(match_predictions(&pred_cls, &true_cls, &iou));
            st.conf.extend(dets.iter().map(|d| d.score));
            let mut seen = vec![false; nc];
            for &c in &true_cls {
                seen[c] = true;
            }
            for (c, s) in seen.iter().enumerate() {
                images_per_class[c] += *s as usize;
            }
            st.true_cls.extend(true_cls);
            st.pred_cls.extend(pred_cls);
            if keep_predictions {
                let sample = &split.samples[b.indices[k]];
                let (h, w) = (b.images.shape[2] as f32, b.images.shape[3] as f32);
                let [h0, w0] = sample.shape.map(|v| v as f32);
                let r = (h / h0).min(w / w0).min(split.imgsz as f32 / h0.max(w0));
                let (padx, pady) =
                    (((w - (w0 * r).round()) / 2.0 - 0.1).round(), ((h - (h0 * r).round()) / 2.0 - 0.1).round());
                for d in &dets {
                    let x = d.xyxy;
                    let un = |v: f32, p: f32, lim: f32| ((v - p) / r).clamp(0.0, lim);
                    st.predictions.push(Prediction {
                        image: sample.path.display().to_string(),
                        class: d.class,
                        score: d.score,
                        bbox: [un(x[0], padx, w0), un(x[1], pady, h0), un(x[2], padx, w0), un(x[3], pady, h0)],
                        input_bbox: Some(x),
                    });
                }
            }
        }
        if ni < plot_batches {
            kept.push(kept_images);
        }
        stats.push(st);
        pb.inc(1);
    }
    pb.finish_and_clear();
    if ranks > 1 {
        let mine = Share { batches: stats, images_per_class, loss, confusion: confusion.matrix };
        let shares = world.comm.all_gather(&serde_json::to_vec(&mine)?)?;
        let shares: Vec<Share> = shares.iter().map(|b| serde_json::from_slice(b)).collect::<Result<_, _>>()?;
        (stats, images_per_class, loss) = (vec![], vec![0; nc], [0.0; 3]);
        confusion = ConfusionMatrix::new(nc);
        for sh in shares {
            stats.extend(sh.batches);
            images_per_class.iter_mut().zip(sh.images_per_class).for_each(|(a, b)| *a += b);
            loss.iter_mut().zip(sh.loss).for_each(|(a, b)| *a += b);
            for (row, other) in confusion.matrix.iter_mut().zip(sh.confusion) {
                row.iter_mut().zip(other).for_each(|(a, b)| *a += b);
            }
        }
        // One process's order: batch by batch.
        stats.sort_by_key(|s| s.index);
    }
    let (mut tp, mut conf, mut pcls, mut tcls, mut predictions) = (vec![], vec![], vec![], vec![], vec![]);
    for s in stats {
        predictions.extend(s.predictions);
        tp.extend(s.tp);
        conf.extend(s.conf);
        pcls.extend(s.pred_cls);
        tcls.extend(s.true_cls);
    }
    let n = split.samples.len();
    Ok(ValResult {
        metrics: ap_per_class(&tp, &conf, &pcls, &tcls),
        images: n,
        instances: tcls.len(),
        images_per_class,
        ms_per_image: start.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64,
        predictions,
        loss: has_head.then_some(loss),
        confusion,
        kept,
    })
}

impl ValResult {
    /// Ultralytics' validation table: the `all` row, then one row per class when there are
    /// several.
    pub fn table(&self, names: &[String]) -> String {
        let m = &self.metrics;
        let mut s = format!(
            "{:>22}{:>11}{:>11}{:>11}{:>11}{:>11}{:>11}\n",
            "Class", "Images", "Instances", "Box(P", "R", "mAP50", "mAP50-95)"
        );
        s += &format!(
            "{:>22}{:>11}{:>11}{:>11.3}{:>11.3}{:>11.3}{:>11.3}\n",
            "all", self.images, self.instances, m.mp, m.mr, m.map50, m.map
        );
        if names.len() > 1 {
            for (i, &c) in m.classes.iter().enumerate() {
                let ap50 = m.ap[i][0];
                let ap = m.ap[i].iter().sum::<f64>() / 10.0;
                s += &format!(
                    "{:>22}{:>11}{:>11}{:>11.3}{:>11.3}{:>11.3}{:>11.3}\n",
                    names.get(c).map(String::as_str).unwrap_or("?"),
                    self.images_per_class[c],
                    m.labels[i],
                    m.p[i],
                    m.r[i],
                    ap50,
                    ap
                );
            }
        }
        s
    }
}
