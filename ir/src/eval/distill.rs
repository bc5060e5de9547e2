//! Knowledge distillation from a frozen teacher's Detect head, with its hand-written gradient:
//! the meaning of the IR's `distill_loss` and `distill_loss_grad`.
//!
//! Student and teacher share strides, anchors and `reg_max`, so their raw level maps
//! `[N, 4·reg_max + nc, h, w]` line up anchor by anchor. Per anchor `a`, at temperature `T`:
//! - class term: the binary KL divergence of the student's class probabilities `σ(s/T)` from
//!   the teacher's `σ(t/T)`, summed over classes, at every anchor (background included: the
//!   teacher's low scores are what suppresses false positives);
//! - box term (localization distillation, Zheng et al., CVPR 2022): the KL divergence of each
//!   side's DFL distribution `softmax(s/T)` from the teacher's, averaged over the 4 sides and
//!   weighted by the teacher's confidence `w_a = max_c σ(t_c)`.
//!
//! Both are scaled by `T²` (Hinton et al.: gradients keep their size across temperatures),
//! divided by `S = max(Σ_a w_a, 1)` — the teacher's soft count of objects, as Ultralytics divides
//! by the sum of target scores — and weighted by the class and box gains. Outputs: the two terms
//! `[2]` and the total = their sum times the batch size (Ultralytics' convention).

use crate::error::{invalid, Result};
use crate::tensor::Tensor;

/// The settings carried by the IR op.
pub struct DistillSpec<'a> {
    /// Gains of the class and box terms.
    pub gains: &'a [f32],
    /// Softening temperature.
    pub temperature: f32,
    /// DFL bins per box side.
    pub reg_max: usize,
}

/// `ln(1 + eˣ)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The logistic function.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The maps' shared geometry: batch, channels and positions per level.
struct Geometry {
    batch: usize,
    no: usize,
    hw: Vec<usize>,
}

fn geometry(student: &[&Tensor], teacher: &[&Tensor], spec: &DistillSpec) -> Result<Geometry> {
    if spec.gains.len() != 2 {
        return invalid(format!("distill_loss: gains {:?} are not (class, box)", spec.gains));
    }
    if student.is_empty() || student.len() != teacher.len() {
        return invalid(format!("distill_loss: {} student and {} teacher level maps", student.len(), teacher.len()));
    }
    let s0 = &student[0].shape;
    if s0.len() != 4 || s0[1] <= 4 * spec.reg_max {
        return invalid(format!("distill_loss: level map {s0:?} is not [N, 4·{} + nc, h, w]", spec.reg_max));
    }
    let mut hw = vec![];
    for (s, t) in student.iter().zip(teacher) {
        if s.shape != t.shape || s.shape.len() != 4 || s.shape[..2] != s0[..2] {
            return invalid(format!("distill_loss: student map {:?} and teacher map {:?} differ", s.shape, t.shape));
        }
        hw.push(s.shape[2] * s.shape[3]);
    }
    Ok(Geometry { batch: s0[0], no: s0[1], hw })
}

/// One anchor's logits, gathered from its level map: `no` channels.
fn gather(map: &[f32], g: &Geometry, n: usize, hw: usize, p: usize, out: &mut [f64]) {
    for (c, o) in out.iter_mut().enumerate() {
        *o = map[(n * g.no + c) * hw + p] as f64;
    }
}

/// One anchor's teacher confidence `w_a`, class term and weighted box term.
struct Anchor {
    weight: f64,
    class: f64,
    boxes: f64,
}

/// The terms of the anchor whose student and teacher logits are `s` and `t`; with `grad`, also
/// their derivatives with respect to the softened student logits `s/T`: `q − p` on the class
/// channels, `w_a·(Q − P)/4` on the box channels.
fn anchor_terms(s: &[f64], t: &[f64], g: &Geometry, spec: &DistillSpec, grad: Option<&mut [f64]>) -> Anchor {
    let temp = spec.temperature as f64;
    let rm = spec.reg_max;
    let cls = 4 * rm;
    let weight = t[cls..].iter().map(|&v| sigmoid(v)).fold(0.0, f64::max);
    let mut class = 0.0;
    for c in cls..g.no {
        let (a, b) = (t[c] / temp, s[c] / temp);
        let p = sigmoid(a);
        class += p * (softplus(-b) - softplus(-a)) + (1.0 - p) * (softplus(b) - softplus(a));
    }
    let mut boxes = 0.0;
    let mut d = grad;
    for side in 0..4 {
        let (ts, ss) = (&t[side * rm..(side + 1) * rm], &s[side * rm..(side + 1) * rm]);
        let lse = |v: &[f64]| {
            let m = v.iter().fold(f64::MIN, |m, &x| m.max(x / temp));
            m + v.iter().map(|&x| (x / temp - m).exp()).sum::<f64>().ln()
        };
        let (lt, ls) = (lse(ts), lse(ss));
        for k in 0..rm {
            let (log_p, log_q) = (ts[k] / temp - lt, ss[k] / temp - ls);
            boxes += log_p.exp() * (log_p - log_q) / 4.0;
            if let Some(d) = d.as_deref_mut() {
                d[side * rm + k] = weight * (log_q.exp() - log_p.exp()) / 4.0;
            }
        }
    }
    if let Some(d) = d {
        for c in cls..g.no {
            d[c] = sigmoid(s[c] / temp) - sigmoid(t[c] / temp);
        }
    }
    Anchor { weight, class, boxes: weight * boxes }
}

/// Visits every anchor of every image, level by level: `f(level, image, position, student
/// logits, teacher logits)`.
fn each_anchor(
    student: &[&Tensor],
    teacher: &[&Tensor],
    g: &Geometry,
    mut f: impl FnMut(usize, usize, usize, &[f64], &[f64]),
) -> Result<()> {
    let (mut s, mut t) = (vec![0.0; g.no], vec![0.0; g.no]);
    for (l, (sm, tm)) in student.iter().zip(teacher).enumerate() {
        let (sv, tv) = (sm.f32s()?, tm.f32s()?);
        for n in 0..g.batch {
            for p in 0..g.hw[l] {
                gather(sv, g, n, g.hw[l], p, &mut s);
                gather(tv, g, n, g.hw[l], p, &mut t);
                f(l, n, p, &s, &t);
            }
        }
    }
    Ok(())
}

/// The distillation terms `[class, box]` (after their gains) and the total (their sum times the
/// batch size) of the student's level maps against the teacher's.
pub fn distill_loss(student: &[&Tensor], teacher: &[&Tensor], spec: &DistillSpec) -> Result<([f32; 2], f32)> {
    let g = geometry(student, teacher, spec)?;
    let (mut w, mut c, mut b) = (0.0, 0.0, 0.0);
    each_anchor(student, teacher, &g, |_, _, _, s, t| {
        let a = anchor_terms(s, t, &g, spec, None);
        (w, c, b) = (w + a.weight, c + a.class, b + a.boxes);
    })?;
    let scale = (spec.temperature as f64).powi(2) / f64::max(w, 1.0);
    let items = [(spec.gains[0] as f64 * c * scale) as f32, (spec.gains[1] as f64 * b * scale) as f32];
    Ok((items, (items[0] + items[1]) * g.batch as f32))
}

/// The gradient of [`distill_loss`]'s total with respect to each student level map.
pub fn distill_loss_grad(student: &[&Tensor], teacher: &[&Tensor], spec: &DistillSpec) -> Result<Vec<Tensor>> {
    let g = geometry(student, teacher, spec)?;
    let mut w = 0.0;
    each_anchor(student, teacher, &g, |_, _, _, _, t| {
        w += t[4 * spec.reg_max..].iter().map(|&v| sigmoid(v)).fold(0.0, f64::max);
    })?;
    // d total / d s = N·gain·T²/S · d(term)/d(s/T) · 1/T.
    let common = g.batch as f64 * spec.temperature as f64 / f64::max(w, 1.0);
    let (gc, gb) = (spec.gains[0] as f64 * common, spec.gains[1] as f64 * common);
    let mut out: Vec<Vec<f32>> = student.iter().map(|m| vec![0.0; m.numel()]).collect();
    let mut d = vec![0.0; g.no];
    each_anchor(student, teacher, &g, |l, n, p, s, t| {
        anchor_terms(s, t, &g, spec, Some(&mut d));
        let hw = g.hw[l];
        for (c, &v) in d.iter().enumerate() {
            let factor = if c < 4 * spec.reg_max { gb } else { gc };
            out[l][(n * g.no + c) * hw + p] = (factor * v) as f32;
        }
    })?;
    student.iter().zip(out).map(|(m, v)| Tensor::from_f32(m.shape.clone(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Level maps of `shapes` with values spread over ±`spread`, from a small linear congruential
    /// stream starting at `seed`.
    fn maps(seed: &mut u64, shapes: &[[usize; 4]], spread: f32) -> Vec<Tensor> {
        let mut next = || {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
        };
        shapes
            .iter()
            .map(|s| Tensor::from_f32(s.to_vec(), (0..s.iter().product()).map(|_| next()).collect()).unwrap())
            .collect()
    }

    fn refs(v: &[Tensor]) -> Vec<&Tensor> {
        v.iter().collect()
    }

    const SPEC: DistillSpec<'static> = DistillSpec { gains: &[0.5, 1.5], temperature: 2.0, reg_max: 4 };

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = 1u64;
        let shapes = [[2, 4 * 4 + 3, 2, 3], [2, 4 * 4 + 3, 1, 2]];
        let student = maps(&mut rng, &shapes, 3.0);
        let teacher = maps(&mut rng, &shapes, 3.0);
        let grad = distill_loss_grad(&refs(&student), &refs(&teacher), &SPEC).unwrap();
        let h = 1e-2f32;
        let mut worst = 0.0f64;
        for l in 0..student.len() {
            for i in 0..student[l].numel() {
                let at = |d: f32| {
                    let mut s = student.clone();
                    s[l].f32s_mut().unwrap()[i] += d;
                    distill_loss(&refs(&s), &refs(&teacher), &SPEC).unwrap().1 as f64
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                let an = grad[l].f32s().unwrap()[i] as f64;
                worst = worst.max((fd - an).abs() / (1e-2 + an.abs()));
            }
        }
        assert!(worst < 2e-3, "worst relative error {worst}");
    }

    #[test]
    fn a_student_equal_to_its_teacher_has_no_loss_and_no_gradient() {
        let mut rng = 2u64;
        let m = maps(&mut rng, &[[1, 4 * 4 + 2, 3, 3]], 4.0);
        let r: Vec<&Tensor> = m.iter().collect();
        let (items, total) = distill_loss(&r, &r, &SPEC).unwrap();
        assert!(items.iter().all(|v| v.abs() < 1e-6) && total.abs() < 1e-6, "{items:?} {total}");
        let g = distill_loss_grad(&r, &r, &SPEC).unwrap();
        assert!(g[0].f32s().unwrap().iter().all(|v| v.abs() < 1e-7));
        // And a different teacher gives a positive loss on both terms.
        let t = maps(&mut rng, &[[1, 4 * 4 + 2, 3, 3]], 4.0);
        let (items, _) = distill_loss(&r, &[&t[0]], &SPEC).unwrap();
        assert!(items[0] > 0.0 && items[1] > 0.0, "{items:?}");
    }
}
