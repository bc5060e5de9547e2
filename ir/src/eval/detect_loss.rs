//! Ultralytics' `v8DetectionLoss` (8.3.253) on the Detect head's raw level maps, with its
//! hand-written gradient: the meaning of the IR's `detect_loss` and `detect_loss_grad`, which
//! every backend computes or is tested against.

use super::assign::{assign, ciou, Assignment, Box4, Gt};
use crate::error::{invalid, Result};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// The loss settings carried by the IR op.
pub struct LossSpec<'a> {
    /// Stride of each level.
    pub strides: &'a [f32],
    /// Gains of the box, class and DFL terms.
    pub gains: &'a [f32],
    /// DFL bins per box side.
    pub reg_max: usize,
}

/// The level maps regrouped per anchor, with everything the loss and its gradient share.
struct Prepared {
    batch: usize,
    nc: usize,
    reg_max: usize,
    /// Per level: (offset of its first anchor, h·w).
    levels: Vec<(usize, usize)>,
    /// Anchor centres in grid units and their strides.
    points: Vec<[f32; 2]>,
    strides: Vec<f32>,
    /// Per image: box logits `[A][4·reg_max]` and class logits `[A][nc]`.
    distri: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
    /// Per image: predicted boxes (grid xyxy), the softmax of every side's bins and the assignment.
    boxes: Vec<Vec<Box4>>,
    probs: Vec<Vec<f32>>,
    /// Per image: the log-sum-exp of every side's bins `[A][4]`.
    lse: Vec<Vec<f32>>,
    assigned: Vec<Assignment>,
    gts: Vec<Vec<Gt>>,
    /// `max(Σ target scores, 1)`.
    score_sum: f32,
}

/// Refuses a target row whose image index or class is not a whole number in range.
pub fn check_targets(targets: &Tensor, batch: usize, nc: usize) -> Result<()> {
    for r in targets.f32s()?.chunks(6) {
        if r[0] < 0.0 || r[0] as usize >= batch || r[0].fract() != 0.0 {
            return invalid(format!("target row {r:?}: batch index out of range for a batch of {batch}"));
        }
        if r[1] < 0.0 || r[1] as usize >= nc || r[1].fract() != 0.0 {
            return invalid(format!("target row {r:?}: class out of range for {nc} classes"));
        }
    }
    Ok(())
}

fn prepare(levels: &[&Tensor], targets: &Tensor, spec: &LossSpec) -> Result<Prepared> {
    let s0 = &levels[0].shape;
    let (batch, no) = (s0[0], s0[1]);
    let reg_max = spec.reg_max;
    let nc = no - 4 * reg_max;
    let mut offsets = vec![];
    let (mut points, mut strides) = (vec![], vec![]);
    for (t, &s) in levels.iter().zip(spec.strides) {
        let (h, w) = (t.shape[2], t.shape[3]);
        offsets.push((points.len(), h * w));
        for y in 0..h {
            for x in 0..w {
                points.push([x as f32 + 0.5, y as f32 + 0.5]);
                strides.push(s);
            }
        }
    }
    let na = points.len();
    let img = [s0[3] as f32 * spec.strides[0], s0[2] as f32 * spec.strides[0]];
    let mut gts: Vec<Vec<Gt>> = vec![vec![]; batch];
    check_targets(targets, batch, nc)?;
    for r in targets.f32s()?.chunks(6) {
        let b = r[0] as usize;
        let (cx, cy, w, h) = (r[2] * img[0], r[3] * img[1], r[4] * img[0], r[5] * img[1]);
        let bbox = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        gts[b].push(Gt { cls: r[1] as usize, bbox });
    }
    let per_image: Vec<_> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let mut distri = vec![0.0f32; na * 4 * reg_max];
            let mut logits = vec![0.0f32; na * nc];
            for (t, &(off, hw)) in levels.iter().zip(&offsets) {
                let d = t.f32s().expect("f32 level maps");
                let base = b * no * hw;
                for c in 0..no {
                    for i in 0..hw {
                        let v = d[base + c * hw + i];
                        if c < 4 * reg_max {
                            distri[(off + i) * 4 * reg_max + c] = v;
                        } else {
                            logits[(off + i) * nc + c - 4 * reg_max] = v;
                        }
                    }
                }
            }
            let mut probs = vec![0.0f32; distri.len()];
            let mut lse = vec![0.0f32; na * 4];
            let mut boxes = Vec::with_capacity(na);
            for a in 0..na {
                let mut dist = [0.0f32; 4];
                for (s, d) in dist.iter_mut().enumerate() {
                    let at = (a * 4 + s) * reg_max;
                    let l = &distri[at..at + reg_max];
                    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = l.iter().map(|v| (v - m).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    lse[a * 4 + s] = m + sum.ln();
                    for k in 0..reg_max {
                        probs[at + k] = e[k] / sum;
                        *d += probs[at + k] * k as f32;
                    }
                }
                let p = points[a];
                boxes.push([p[0] - dist[0], p[1] - dist[1], p[0] + dist[2], p[1] + dist[3]]);
            }
            let scores: Vec<f32> = logits.iter().map(|&v| super::nn::sigmoid(v)).collect();
            let px: Vec<Box4> = boxes.iter().zip(&strides).map(|(b, &s)| b.map(|v| v * s)).collect();
            let pts: Vec<[f32; 2]> = points.iter().zip(&strides).map(|(p, &s)| [p[0] * s, p[1] * s]).collect();
            let assigned = assign(&scores, nc, &px, &pts, &gts[b]);
            (distri, logits, probs, lse, boxes, assigned)
        })
        .collect();
    let mut p = Prepared {
        batch,
        nc,
        reg_max,
        levels: offsets,
        points,
        strides,
        distri: vec![],
        logits: vec![],
        boxes: vec![],
        probs: vec![],
        lse: vec![],
        assigned: vec![],
        gts,
        score_sum: 0.0,
    };
    let mut total = 0.0f64;
    for (distri, logits, probs, lse, boxes, assigned) in per_image {
        total += assigned.score.iter().map(|&s| s as f64).sum::<f64>();
        p.distri.push(distri);
        p.logits.push(logits);
        p.probs.push(probs);
        p.lse.push(lse);
        p.boxes.push(boxes);
        p.assigned.push(assigned);
    }
    p.score_sum = (total as f32).max(1.0);
    Ok(p)
}

impl Prepared {
    /// The assigned target box of foreground anchor `a` of image `b`, in grid units.
    fn target(&self, b: usize, a: usize) -> Box4 {
        let s = self.strides[a];
        self.gts[b][self.assigned[b].gt[a]].bbox.map(|v| v / s)
    }

    /// DFL targets of one anchor: per side, (left bin, left weight, right weight).
    fn dfl_targets(&self, a: usize, t: Box4) -> [(usize, f32, f32); 4] {
        let p = self.points[a];
        let hi = self.reg_max as f32 - 1.0 - 0.01;
        let d = [p[0] - t[0], p[1] - t[1], t[2] - p[0], t[3] - p[1]];
        d.map(|v| {
            let v = v.clamp(0.0, hi);
            let tl = v.floor();
            let wl = tl + 1.0 - v;
            (tl as usize, wl, 1.0 - wl)
        })
    }

    /// The softmax cross-entropy of one side's bins against `bin`.
    fn ce(&self, b: usize, a: usize, side: usize, bin: usize) -> f32 {
        self.lse[b][a * 4 + side] - self.distri[b][(a * 4 + side) * self.reg_max + bin]
    }
}

fn bce(x: f32, t: f32) -> f64 {
    (x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()) as f64
}

/// The loss components `[box, cls, dfl]` (after gains, divided by the target-score sum) and the
/// total (their sum times the batch size).
pub fn detect_loss(levels: &[&Tensor], targets: &Tensor, spec: &LossSpec) -> Result<([f32; 3], f32)> {
    let p = prepare(levels, targets, spec)?;
    let (mut lbox, mut lcls, mut ldfl) = (0.0f64, 0.0f64, 0.0f64);
    for b in 0..p.batch {
        let asg = &p.assigned[b];
        for (a, &fg) in asg.fg.iter().enumerate() {
            let cls = p.gts[b].get(asg.gt[a]).map(|g| g.cls);
            for c in 0..p.nc {
                let t = if fg && cls == Some(c) { asg.score[a] } else { 0.0 };
                lcls += bce(p.logits[b][a * p.nc + c], t);
            }
            if !fg {
                continue;
            }
            let weight = asg.score[a] as f64;
            let t = p.target(b, a);
            lbox += (1.0 - ciou(p.boxes[b][a], t).value as f64) * weight;
            let dfl: f64 = p
                .dfl_targets(a, t)
                .iter()
                .enumerate()
                .map(|(s, &(tl, wl, wr))| (p.ce(b, a, s, tl) * wl + p.ce(b, a, s, tl + 1) * wr) as f64)
                .sum();
            ldfl += dfl / 4.0 * weight;
        }
    }
    let tss = p.score_sum as f64;
    let items =
        [(lbox / tss) as f32 * spec.gains[0], (lcls / tss) as f32 * spec.gains[1], (ldfl / tss) as f32 * spec.gains[2]];
    Ok((items, items.iter().sum::<f32>() * p.batch as f32))
}

/// The gradient of [`detect_loss`]'s total with respect to each level map.
pub fn detect_loss_grad(levels: &[&Tensor], targets: &Tensor, spec: &LossSpec) -> Result<Vec<Tensor>> {
    let p = prepare(levels, targets, spec)?;
    let r = p.reg_max;
    let scale = p.batch as f32 / p.score_sum;
    let (gbox, gcls, gdfl) = (spec.gains[0] * scale, spec.gains[1] * scale, spec.gains[2] * scale);
    let per_image: Vec<(Vec<f32>, Vec<f32>)> = (0..p.batch)
        .into_par_iter()
        .map(|b| {
            let asg = &p.assigned[b];
            let na = asg.fg.len();
            let mut dd = vec![0.0f32; na * 4 * r];
            let mut dl = vec![0.0f32; na * p.nc];
            for a in 0..na {
                let cls = p.gts[b].get(asg.gt[a]).map(|g| g.cls);
                for c in 0..p.nc {
                    let t = if asg.fg[a] && cls == Some(c) { asg.score[a] } else { 0.0 };
                    dl[a * p.nc + c] = (super::nn::sigmoid(p.logits[b][a * p.nc + c]) - t) * gcls;
                }
                if !asg.fg[a] {
                    continue;
                }
                let weight = asg.score[a];
                let t = p.target(b, a);
                let pb = p.boxes[b][a];
                let dbox = ciou(pb, t).grad_a(pb, t).map(|g| -g * weight * gbox);
                // x1 = ax − d0, y1 = ay − d1, x2 = ax + d2, y2 = ay + d3.
                let ddist = [-dbox[0], -dbox[1], dbox[2], dbox[3]];
                for (s, &(tl, wl, wr)) in p.dfl_targets(a, t).iter().enumerate() {
                    let at = (a * 4 + s) * r;
                    let pr = &p.probs[b][at..at + r];
                    let dist: f32 = pr.iter().enumerate().map(|(k, &q)| q * k as f32).sum();
                    let cf = weight * gdfl / 4.0;
                    for k in 0..r {
                        let hot = if k == tl {
                            wl
                        } else if k == tl + 1 {
                            wr
                        } else {
                            0.0
                        };
                        dd[at + k] = pr[k] * (k as f32 - dist) * ddist[s] + cf * (pr[k] - hot);
                    }
                }
            }
            (dd, dl)
        })
        .collect();
    let no = 4 * r + p.nc;
    let mut out = vec![];
    for (t, &(off, hw)) in levels.iter().zip(&p.levels) {
        let mut g = vec![0.0f32; t.numel()];
        for (b, (dd, dl)) in per_image.iter().enumerate() {
            for c in 0..no {
                for i in 0..hw {
                    g[(b * no + c) * hw + i] =
                        if c < 4 * r { dd[(off + i) * 4 * r + c] } else { dl[(off + i) * p.nc + c - 4 * r] };
                }
            }
        }
        out.push(Tensor::from_f32(t.shape.clone(), g)?);
    }
    Ok(out)
}
