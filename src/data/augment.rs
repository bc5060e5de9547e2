//! Ultralytics' training transforms: mosaic, random perspective (affine: translate, scale,
//! rotation), HSV, horizontal flip; and the letterbox path used after `close_mosaic`.

use super::image::{letterbox, Img, PAD};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// An object in pixel coordinates of the current image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Obj {
    /// Class id.
    pub cls: usize,
    /// x1, y1, x2, y2 in pixels.
    pub xyxy: [f32; 4],
}

/// Augmentation hyper-parameters (Ultralytics' names and defaults); all zero trains on the
/// letterboxed images as they are.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyp {
    /// Hue gain.
    pub hsv_h: f32,
    /// Saturation gain.
    pub hsv_s: f32,
    /// Value gain.
    pub hsv_v: f32,
    /// Rotation range in degrees.
    pub degrees: f32,
    /// Translation fraction.
    pub translate: f32,
    /// Scale gain.
    pub scale: f32,
    /// Probability of a left-right flip.
    pub fliplr: f32,
    /// Probability of mosaic (until `close_mosaic`).
    pub mosaic: f32,
}

impl Default for Hyp {
    fn default() -> Self {
        Hyp { hsv_h: 0.015, hsv_s: 0.7, hsv_v: 0.4, degrees: 0.0, translate: 0.1, scale: 0.5, fliplr: 0.5, mosaic: 1.0 }
    }
}

impl Hyp {
    /// Checks every gain is finite and in Ultralytics' range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let gains = [
            ("hsv-h", self.hsv_h, 1.0),
            ("hsv-s", self.hsv_s, 1.0),
            ("hsv-v", self.hsv_v, 1.0),
            ("degrees", self.degrees, 180.0),
            ("translate", self.translate, 1.0),
            ("scale", self.scale, 1.0),
            ("fliplr", self.fliplr, 1.0),
            ("mosaic", self.mosaic, 1.0),
        ];
        for (what, v, hi) in gains {
            if !(v.is_finite() && (0.0..=hi).contains(&v)) {
                anyhow::bail!("--{what} {v} must be a finite number in [0, {hi}]");
            }
        }
        Ok(())
    }
}

/// Python's `random.uniform(a, b)`: `a` when the range is empty (a gain of 0).
fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    if a < b {
        rng.random_range(a..b)
    } else {
        a
    }
}

/// Four images around a random centre on a `2s×2s` grey canvas (Ultralytics' `_mosaic4`).
/// `parts` are the images (already long-side `s`) with their objects.
pub fn mosaic4(parts: &[(Img, Vec<Obj>)], s: usize, rng: &mut impl Rng) -> (Img, Vec<Obj>) {
    let s2 = 2 * s;
    let yc = rng.random_range(s as f64 / 2.0..1.5 * s as f64) as usize;
    let xc = rng.random_range(s as f64 / 2.0..1.5 * s as f64) as usize;
    let mut canvas = Img::filled(s2, s2, PAD);
    let mut objs = vec![];
    for (k, (img, labels)) in parts.iter().enumerate() {
        let (h, w) = (img.h, img.w);
        let (a, b) = match k {
            0 => {
                let a = [xc.saturating_sub(w), yc.saturating_sub(h), xc, yc];
                (a, [w - (a[2] - a[0]), h - (a[3] - a[1]), w, h])
            }
            1 => {
                let a = [xc, yc.saturating_sub(h), (xc + w).min(s2), yc];
                (a, [0, h - (a[3] - a[1]), w.min(a[2] - a[0]), h])
            }
            2 => {
                let a = [xc.saturating_sub(w), yc, xc, s2.min(yc + h)];
                (a, [w - (a[2] - a[0]), 0, w, h.min(a[3] - a[1])])
            }
            _ => {
                let a = [xc, yc, (xc + w).min(s2), s2.min(yc + h)];
                (a, [0, 0, w.min(a[2] - a[0]), h.min(a[3] - a[1])])
            }
        };
        canvas.paste(img, [b[0], b[1]], [a[0], a[1]], [a[2] - a[0], a[3] - a[1]]);
        let (padw, padh) = (a[0] as f32 - b[0] as f32, a[1] as f32 - b[1] as f32);
        for o in labels {
            let x = [o.xyxy[0] + padw, o.xyxy[1] + padh, o.xyxy[2] + padw, o.xyxy[3] + padh];
            let c = x.map(|v| v.clamp(0.0, s2 as f32));
            if c[2] > c[0] && c[3] > c[1] {
                objs.push(Obj { cls: o.cls, xyxy: c });
            }
        }
    }
    (canvas, objs)
}

/// Ultralytics' `RandomPerspective` without shear and perspective: output is the input grown
/// by `2·border` on each axis; boxes are transformed, clipped and filtered by `box_candidates`.
pub fn random_affine(img: &Img, objs: &[Obj], border: isize, hyp: &Hyp, rng: &mut impl Rng) -> (Img, Vec<Obj>) {
    let out_h = (img.h as isize + 2 * border) as usize;
    let out_w = (img.w as isize + 2 * border) as usize;
    let (cx, cy) = (-(img.w as f64) / 2.0, -(img.h as f64) / 2.0);
    let deg = hyp.degrees as f64;
    let angle = if deg > 0.0 { rng.random_range(-deg..deg) } else { 0.0 };
    let sc = uniform(rng, 1.0 - hyp.scale as f64, 1.0 + hyp.scale as f64);
    let t = hyp.translate as f64;
    let tx = uniform(rng, 0.5 - t, 0.5 + t) * out_w as f64;
    let ty = uniform(rng, 0.5 - t, 0.5 + t) * out_h as f64;
    let (sa, ca) = angle.to_radians().sin_cos();
    let (a, b) = (sc * ca, sc * sa);
    // M = T · R · C
    let m = [[a, b, a * cx + b * cy + tx], [-b, a, -b * cx + a * cy + ty]];
    let out = img.warp_affine(&m, out_h, out_w);
    let apply = |x: f32, y: f32| {
        let (x, y) = (x as f64, y as f64);
        ((m[0][0] * x + m[0][1] * y + m[0][2]) as f32, (m[1][0] * x + m[1][1] * y + m[1][2]) as f32)
    };
    let mut kept = vec![];
    for o in objs {
        let [x1, y1, x2, y2] = o.xyxy;
        let pts = [apply(x1, y1), apply(x2, y1), apply(x1, y2), apply(x2, y2)];
        let nx1 = pts.iter().map(|p| p.0).fold(f32::MAX, f32::min).clamp(0.0, out_w as f32);
        let nx2 = pts.iter().map(|p| p.0).fold(f32::MIN, f32::max).clamp(0.0, out_w as f32);
        let ny1 = pts.iter().map(|p| p.1).fold(f32::MAX, f32::min).clamp(0.0, out_h as f32);
        let ny2 = pts.iter().map(|p| p.1).fold(f32::MIN, f32::max).clamp(0.0, out_h as f32);
        let (w1, h1) = ((x2 - x1) * sc as f32, (y2 - y1) * sc as f32);
        let (w2, h2) = (nx2 - nx1, ny2 - ny1);
        let ar = (w2 / (h2 + 1e-16)).max(h2 / (w2 + 1e-16));
        if w2 > 2.0 && h2 > 2.0 && w2 * h2 / (w1 * h1 + 1e-16) > 0.1 && ar < 100.0 {
            kept.push(Obj { cls: o.cls, xyxy: [nx1, ny1, nx2, ny2] });
        }
    }
    (out, kept)
}

/// HSV jitter and a random horizontal flip, in Ultralytics' order.
pub fn color_and_flip(img: &mut Img, objs: &mut [Obj], hyp: &Hyp, rng: &mut impl Rng) {
    let hsv = [hyp.hsv_h, hyp.hsv_s, hyp.hsv_v];
    if hsv.iter().any(|&g| g > 0.0) {
        let g = hsv.map(|g| rng.random_range(-1.0f32..1.0) * g);
        img.hsv_jitter(g);
    }
    if rng.random::<f32>() < hyp.fliplr {
        img.flip_lr();
        let w = img.w as f32;
        for o in objs.iter_mut() {
            o.xyxy = [w - o.xyxy[2], o.xyxy[1], w - o.xyxy[0], o.xyxy[3]];
        }
    }
}

/// The non-mosaic training path: letterbox to `s×s`, then the affine with no border.
pub fn letterbox_affine(img: &Img, objs: &[Obj], s: usize, hyp: &Hyp, rng: &mut impl Rng) -> (Img, Vec<Obj>) {
    let (lb, r, [left, top]) = letterbox(img, [s, s], true);
    let moved: Vec<Obj> = objs
        .iter()
        .map(|o| {
            let x = o.xyxy;
            let f = |v: f32, off: usize| v * r as f32 + off as f32;
            Obj { cls: o.cls, xyxy: [f(x[0], left), f(x[1], top), f(x[2], left), f(x[3], top)] }
        })
        .collect();
    random_affine(&lb, &moved, 0, hyp, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mosaic_and_affine_keep_boxes_on_their_pixels() {
        // A white square object on a black image: after mosaic and affine, each kept box must
        // still cover bright pixels at its centre.
        let mut img = Img::filled(64, 64, 0);
        for y in 20..40 {
            for x in 10..30 {
                img.data[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let objs = vec![Obj { cls: 0, xyxy: [10.0, 20.0, 30.0, 40.0] }];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut seen = 0;
        for _ in 0..20 {
            let parts: Vec<_> = (0..4).map(|_| (img.clone(), objs.clone())).collect();
            let (m, o) = mosaic4(&parts, 64, &mut rng);
            let (a, o) = random_affine(&m, &o, -32, &Hyp::default(), &mut rng);
            assert_eq!((a.h, a.w), (64, 64));
            for b in o {
                let (cx, cy) = (((b.xyxy[0] + b.xyxy[2]) / 2.0) as usize, ((b.xyxy[1] + b.xyxy[3]) / 2.0) as usize);
                assert!(a.data[(cy * 64 + cx) * 3] > 100, "box {:?} is not on its object", b.xyxy);
                seen += 1;
            }
        }
        assert!(seen > 10);
    }
}
