//! Batches for training (augmented, built in parallel on a background thread ahead of the
//! step) and for validation (Ultralytics' rect batches, no augmentation).

use super::augment::{color_and_flip, letterbox_affine, mosaic4, random_affine, Hyp, Obj};
use super::dataset::Sample;
use super::image::{letterbox, Img};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use slimc_ir::Tensor;
use std::sync::Arc;

/// The loader of one split of a dataset: its samples, with an optional RAM cache of the decoded,
/// resized images, batched for training or validation.
pub struct Loader {
    /// The usable images and their labels.
    pub samples: Vec<Sample>,
    /// Long side of the loaded images.
    pub imgsz: usize,
    cache: Option<Vec<Img>>,
}

/// One batch ready for the network.
pub struct Batch {
    /// `[n, 3, h, w]` in [0, 1].
    pub images: Tensor,
    /// `[M, 6]`: batch index, class, normalised cx, cy, w, h.
    pub targets: Tensor,
    /// Objects per image in input pixels (validation's ground truth).
    pub objects: Vec<Vec<Obj>>,
    /// Sample indices.
    pub indices: Vec<usize>,
}

impl Loader {
    /// Wraps samples; with `cache`, decodes and resizes every image once now.
    pub fn new(samples: Vec<Sample>, imgsz: usize, cache: bool) -> Result<Loader> {
        let mut s = Loader { samples, imgsz, cache: None };
        if cache {
            s.cache = Some((0..s.samples.len()).into_par_iter().map(|i| s.read(i)).collect::<Result<_>>()?);
        }
        Ok(s)
    }

    fn read(&self, i: usize) -> Result<Img> {
        Ok(Img::open(&self.samples[i].path)?.fit_long_side(self.imgsz))
    }

    /// Ultralytics' `load_image`: the image with its long side at `imgsz`, and its objects in
    /// that image's pixels.
    pub fn load(&self, i: usize) -> Result<(Img, Vec<Obj>)> {
        let img = match &self.cache {
            Some(c) => c[i].clone(),
            None => self.read(i)?,
        };
        let (w, h) = (img.w as f32, img.h as f32);
        let objs = self.samples[i]
            .labels
            .iter()
            .map(|l| {
                let [cx, cy, bw, bh] = l.xywh;
                Obj {
                    cls: l.cls,
                    xyxy: [(cx - bw / 2.0) * w, (cy - bh / 2.0) * h, (cx + bw / 2.0) * w, (cy + bh / 2.0) * h],
                }
            })
            .collect();
        Ok((img, objs))
    }

    /// One augmented training image of size `imgsz²`.
    fn train_item(&self, i: usize, hyp: &Hyp, rng: &mut impl Rng) -> Result<(Img, Vec<Obj>)> {
        let s = self.imgsz;
        let (mut img, mut objs) = if rng.random::<f32>() < hyp.mosaic {
            let mut parts = vec![self.load(i)?];
            for _ in 0..3 {
                parts.push(self.load(rng.random_range(0..self.samples.len()))?);
            }
            let (m, o) = mosaic4(&parts, s, rng);
            random_affine(&m, &o, -(s as isize) / 2, hyp, rng)
        } else {
            let (img, objs) = self.load(i)?;
            letterbox_affine(&img, &objs, s, hyp, rng)
        };
        color_and_flip(&mut img, &mut objs, hyp, rng);
        Ok((img, objs))
    }

    /// The training batches of one epoch: a seeded shuffle, each batch assembled in parallel
    /// on a background thread that keeps `ahead` batches ready.
    ///
    /// Data-parallel, the epoch's order is sharded among `ranks` ranks as PyTorch's
    /// `DistributedSampler` does ([`crate::distributed::shard`]), each rank batching its share by
    /// `batch` with augmentation seeded per rank; this process feeds the ranks `hosted` (its own
    /// under MPI; all of them when one process reproduces a run of several): their `k`-th
    /// batches one after the other, then the `k+1`-th. With one rank this is the plain order.
    pub fn train_epoch(
        self: &Arc<Self>,
        batch: usize,
        hyp: Hyp,
        seed: u64,
        epoch: usize,
        ranks: usize,
        hosted: std::ops::Range<usize>,
    ) -> std::sync::mpsc::Receiver<Result<Batch>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut order: Vec<usize> = (0..me.samples.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            // Augmentation: one stream per rank (a run of one rank keeps the shuffle's).
            let mut feeds: Vec<(Vec<usize>, rand_chacha::ChaCha8Rng)> = hosted
                .map(|r| {
                    let mut own = rng.clone();
                    if ranks > 1 {
                        own.set_stream(r as u64 + 1);
                    }
                    (crate::distributed::shard::shard(&order, r, ranks), own)
                })
                .collect();
            let per_rank = crate::distributed::shard::batches_per_rank(me.samples.len(), ranks, batch);
            for k in 0..per_rank {
                for (share, rng) in &mut feeds {
                    let chunk = &share[k * batch..((k + 1) * batch).min(share.len())];
                    let seeds: Vec<u64> = chunk.iter().map(|_| rng.random()).collect();
                    let items: Result<Vec<_>> = chunk
                        .par_iter()
                        .zip(seeds)
                        .map(|(&i, sd)| me.train_item(i, &hyp, &mut rand_chacha::ChaCha8Rng::seed_from_u64(sd)))
                        .collect();
                    let b = items.and_then(|items| assemble(items, chunk.to_vec()));
                    if tx.send(b).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Ultralytics' rect validation batches: images sorted by aspect ratio, each batch
    /// letterboxed (no upscaling) to `ceil(ratio·imgsz/32 + 0.5)·32`.
    pub fn val_batches(&self, batch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        let ar = |i: usize| self.samples[i].shape[0] as f64 / self.samples[i].shape[1] as f64;
        order.sort_by(|&a, &b| ar(a).total_cmp(&ar(b)));
        order.chunks(batch).map(|c| c.to_vec()).collect()
    }

    /// Builds one validation batch from sample indices at the rect shape of its images.
    pub fn val_batch(&self, idx: &[usize]) -> Result<Batch> {
        self.val_batch_at(idx, self.rect_shape(idx))
    }

    /// Ultralytics' rect shape of a batch: the letterbox (h, w) that fits its aspect ratios.
    fn rect_shape(&self, idx: &[usize]) -> [usize; 2] {
        let ars: Vec<f64> =
            idx.iter().map(|&i| self.samples[i].shape[0] as f64 / self.samples[i].shape[1] as f64).collect();
        let (mn, mx) = (ars.iter().copied().fold(f64::MAX, f64::min), ars.iter().copied().fold(f64::MIN, f64::max));
        let ratio = if mx < 1.0 {
            [mx, 1.0]
        } else if mn > 1.0 {
            [1.0, 1.0 / mn]
        } else {
            [1.0, 1.0]
        };
        ratio.map(|r| ((r * self.imgsz as f64 / 32.0 + 0.5).ceil() as usize) * 32)
    }

    /// Builds one validation batch from sample indices, every image letterboxed (no upscaling
    /// beyond `imgsz`) to `shape` (h, w): for models that run at one input size only.
    pub fn val_batch_at(&self, idx: &[usize], shape: [usize; 2]) -> Result<Batch> {
        let items: Result<Vec<_>> = idx
            .par_iter()
            .map(|&i| {
                let (img, objs) = self.load(i)?;
                let (lb, r, [left, top]) = letterbox(&img, shape, false);
                let f = |v: f32, off: usize| v * r as f32 + off as f32;
                let moved = objs
                    .iter()
                    .map(|o| Obj {
                        cls: o.cls,
                        xyxy: [f(o.xyxy[0], left), f(o.xyxy[1], top), f(o.xyxy[2], left), f(o.xyxy[3], top)],
                    })
                    .collect();
                Ok((lb, moved))
            })
            .collect();
        assemble(items?, idx.to_vec())
    }
}

/// Stacks images into a tensor and objects into the `[M, 6]` targets.
fn assemble(items: Vec<(Img, Vec<Obj>)>, indices: Vec<usize>) -> Result<Batch> {
    let (h, w) = (items[0].0.h, items[0].0.w);
    let mut data = vec![0.0f32; items.len() * 3 * h * w];
    let mut rows = vec![];
    for (k, ((img, objs), dst)) in items.iter().zip(data.chunks_mut(3 * h * w)).enumerate() {
        img.to_chw(dst);
        for o in objs {
            let [x1, y1, x2, y2] = o.xyxy;
            rows.extend([k as f32, o.cls as f32, (x1 + x2) / 2.0 / w as f32, (y1 + y2) / 2.0 / h as f32]);
            rows.extend([(x2 - x1) / w as f32, (y2 - y1) / h as f32]);
        }
    }
    let m = rows.len() / 6;
    Ok(Batch {
        images: Tensor::from_f32(vec![items.len(), 3, h, w], data)?,
        targets: Tensor::from_f32(vec![m, 6], rows)?,
        objects: items.into_iter().map(|(_, o)| o).collect(),
        indices,
    })
}
