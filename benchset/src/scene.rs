//! One scene: a random crop of an aerial photo with Fashion-MNIST products composited on top at
//! varied scales, aspect ratios, tints and rotations, later products partly hiding earlier ones.

use crate::fashion::{Fashion, SIDE};
use crate::silhouette::Mask;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// An RGB photo, row-major, 3 bytes a pixel.
pub struct Photo {
    /// Width in pixels.
    pub w: usize,
    /// Height in pixels.
    pub h: usize,
    /// The pixels.
    pub rgb: Vec<u8>,
}

impl Photo {
    /// Channel `c` at `(x, y)` by bilinear interpolation between pixel centres (edges clamped).
    fn sample(&self, x: f64, y: f64, c: usize) -> f64 {
        let (x, y) = ((x - 0.5).clamp(0.0, (self.w - 1) as f64), (y - 0.5).clamp(0.0, (self.h - 1) as f64));
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.w - 1), (y0 + 1).min(self.h - 1));
        let (fx, fy) = (x - x0 as f64, y - y0 as f64);
        let p = |xx: usize, yy: usize| self.rgb[(yy * self.w + xx) * 3 + c] as f64;
        (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy) + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy
    }
}

/// How scenes are drawn.
#[derive(Clone, Debug)]
pub struct SceneParams {
    /// Side of the square scene in pixels.
    pub size: usize,
    /// Fewest and most products a scene tries to place.
    pub objects: (usize, usize),
    /// Longest side of a product, in pixels: from this...
    pub min_side: f64,
    /// ...to this share of the scene's side (drawn log-uniformly).
    pub max_side: f64,
    /// Rotations are drawn from ±this many degrees.
    pub max_degrees: f64,
    /// A product placed later may hide at most `1 −` this share of an earlier one.
    pub min_visible: f64,
    /// Fewest pixels a product (and what is visible of it) must cover.
    pub min_pixels: usize,
}

impl SceneParams {
    /// The defaults at a scene side of `size` pixels.
    pub fn new(size: usize) -> SceneParams {
        SceneParams {
            size,
            objects: (3, 10),
            min_side: 12.0,
            max_side: 1.0 / 3.0,
            max_degrees: 45.0,
            min_visible: 0.6,
            min_pixels: 16,
        }
    }
}

/// A product in a scene.
pub struct Object {
    /// Its Fashion-MNIST class.
    pub class: usize,
    /// The angle of its upright axes in the scene, in radians.
    pub theta: f64,
    /// Its footprint (coverage at least one half) before anything hides it.
    pub full: Mask,
    /// What later products leave of it: one 8-connected piece.
    pub visible: Mask,
}

/// A composed scene.
pub struct Scene {
    /// Side in pixels.
    pub size: usize,
    /// The image, RGB.
    pub rgb: Vec<u8>,
    /// The products in the order they were drawn (later ones on top).
    pub objects: Vec<Object>,
}

/// A product drawn in its own layer before it is placed: coverage and colour per scene pixel.
struct Layer {
    alpha: Vec<f64>,
    rgb: Vec<[f64; 3]>,
    full: Mask,
    theta: f64,
}

/// A colour from hue, saturation and value in [0, 1].
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match i as i64 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Fills `out` (size × size) with a random crop of one of `photos`, randomly flipped and
/// transposed, each pixel the mean of 2×2 bilinear samples.
fn background(rng: &mut ChaCha8Rng, photos: &[Photo], size: usize) -> Vec<[f64; 3]> {
    let photo = &photos[rng.random_range(0..photos.len())];
    let short = photo.w.min(photo.h) as f64;
    let crop = rng.random_range(short / 2.0..=short);
    let (x0, y0) = (rng.random_range(0.0..=photo.w as f64 - crop), rng.random_range(0.0..=photo.h as f64 - crop));
    let (flip_x, flip_y, transpose) = (rng.random_bool(0.5), rng.random_bool(0.5), rng.random_bool(0.5));
    let scale = crop / size as f64;
    let mut out = vec![[0.0; 3]; size * size];
    for y in 0..size {
        for x in 0..size {
            let mut acc = [0.0; 3];
            for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (mut u, mut v) = ((x as f64 + sx) * scale, (y as f64 + sy) * scale);
                if transpose {
                    (u, v) = (v, u);
                }
                if flip_x {
                    u = crop - u;
                }
                if flip_y {
                    v = crop - v;
                }
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += photo.sample(x0 + u, y0 + v, c) / 4.0;
                }
            }
            out[y * size + x] = acc;
        }
    }
    out
}

/// A product's source: its pixels with everything but the largest piece of its silhouette (and a
/// one-pixel fringe) cleared, and that piece's pixel-edge bounding box.
struct Source {
    value: Vec<f64>,
    alpha: Vec<f64>,
    bbox: [usize; 4],
}

/// Coverage of a Fashion-MNIST pixel value: 0 up to 4, 1 from 24.
fn coverage(v: f64) -> f64 {
    ((v - 4.0) / 20.0).clamp(0.0, 1.0)
}

impl Source {
    fn new(pixels: &[u8]) -> Option<Source> {
        let fg = Mask { w: SIDE, h: SIDE, bits: pixels.iter().map(|&v| v > 12).collect() };
        let piece = fg.largest_component();
        let bbox = piece.bbox()?;
        let near = |i: usize| {
            let (x, y) = ((i % SIDE) as i64, (i / SIDE) as i64);
            (-1..=1).any(|dy| (-1..=1).any(|dx| piece.get(x + dx, y + dy)))
        };
        let value: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
        let alpha = (0..SIDE * SIDE).map(|i| if near(i) { coverage(value[i]) } else { 0.0 }).collect();
        Some(Source { value, alpha, bbox })
    }

    /// Coverage and value at source point `(x, y)` by bilinear interpolation (zero outside).
    fn sample(&self, x: f64, y: f64) -> (f64, f64) {
        let (x, y) = (x - 0.5, y - 0.5);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (mut a, mut v) = (0.0, 0.0);
        for (dx, dy, wgt) in
            [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)]
        {
            let (xi, yi) = (x0 as i64 + dx, y0 as i64 + dy);
            if (0..SIDE as i64).contains(&xi) && (0..SIDE as i64).contains(&yi) {
                let i = yi as usize * SIDE + xi as usize;
                a += wgt * self.alpha[i];
                v += wgt * self.value[i];
            }
        }
        (a, v)
    }
}

/// Draws `src` at a random scale, aspect, angle, tint and place; None when the drawing covers
/// fewer than `p.min_pixels` pixels.
fn draw(rng: &mut ChaCha8Rng, src: &Source, p: &SceneParams) -> Option<Layer> {
    let s = p.size as f64;
    let [bx0, by0, bx1, by1] = src.bbox.map(|v| v as f64);
    let (cx0, cy0) = ((bx0 + bx1) / 2.0, (by0 + by1) / 2.0);
    let side = rng.random_range(p.min_side.ln()..=(s * p.max_side).ln()).exp();
    let aspect = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp().sqrt();
    let k = side / (bx1 - bx0).max(by1 - by0);
    let (kx, ky) = (k * aspect, k / aspect);
    let theta = rng.random_range(-p.max_degrees..=p.max_degrees).to_radians();
    let (c, sn) = (theta.cos(), theta.sin());
    // Half extents of the rotated, scaled source box; the centre keeps it 2 pixels inside.
    let (hw, hh) = ((bx1 - bx0) * kx / 2.0, (by1 - by0) * ky / 2.0);
    let (ex, ey) = (hw * c.abs() + hh * sn.abs(), hw * sn.abs() + hh * c.abs());
    let margin = 2.0;
    if 2.0 * (ex + margin) >= s || 2.0 * (ey + margin) >= s {
        return None;
    }
    let (px, py) = (rng.random_range(ex + margin..=s - ex - margin), rng.random_range(ey + margin..=s - ey - margin));
    let tint = hsv(rng.random_range(0.0..1.0), rng.random_range(0.3..=1.0), rng.random_range(0.55..=1.0));
    let n = p.size;
    let mut layer = Layer { alpha: vec![0.0; n * n], rgb: vec![[0.0; 3]; n * n], full: Mask::new(n, n), theta };
    let (xa, xb) = ((px - ex).floor().max(0.0) as usize, ((px + ex).ceil() as usize).min(n));
    let (ya, yb) = ((py - ey).floor().max(0.0) as usize, ((py + ey).ceil() as usize).min(n));
    for y in ya..yb {
        for x in xa..xb {
            let (mut a, mut col) = (0.0, [0.0; 3]);
            for (sx, sy) in [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)] {
                let (dx, dy) = (x as f64 + sx - px, y as f64 + sy - py);
                let (u, v) = (dx * c + dy * sn, -dx * sn + dy * c);
                let (sa, sv) = src.sample(u / kx + cx0, v / ky + cy0);
                let shade = 0.3 + 0.7 * sv / 255.0;
                a += sa / 4.0;
                for (ch, t) in col.iter_mut().zip(tint) {
                    *ch += sa / 4.0 * t * shade * 255.0;
                }
            }
            let i = y * n + x;
            layer.alpha[i] = a;
            if a > 0.0 {
                layer.rgb[i] = col.map(|v| v / a);
            }
            layer.full.bits[i] = a >= 0.5;
        }
    }
    // Resampling can cut a thin part off: keep the largest piece and clear the rest.
    let piece = layer.full.largest_component();
    for i in 0..n * n {
        if layer.full.bits[i] && !piece.bits[i] {
            layer.alpha[i] = 0.0;
        }
    }
    layer.full = piece;
    (layer.full.count() >= p.min_pixels).then_some(layer)
}

/// What stays visible of each of `objects` under `on_top`, or None if one of them would keep
/// less than `p.min_visible` of itself, fewer than `p.min_pixels` pixels, or fall apart.
fn hidden_by(objects: &[Object], on_top: &Mask, p: &SceneParams) -> Option<Vec<Mask>> {
    objects
        .iter()
        .map(|o| {
            let mut vis = o.visible.clone();
            for (b, &t) in vis.bits.iter_mut().zip(&on_top.bits) {
                *b &= !t;
            }
            let (left, whole) = (vis.count(), o.full.count());
            let ok = left >= p.min_pixels && left as f64 >= p.min_visible * whole as f64;
            (ok && vis.components().len() == 1).then_some(vis)
        })
        .collect()
}

/// Attempts to place each product before it is given up.
const ATTEMPTS: usize = 30;

/// Composes one scene from `rng`: a background from `photos`, products from `fashion`.
pub fn compose(rng: &mut ChaCha8Rng, photos: &[Photo], fashion: &Fashion, p: &SceneParams) -> Scene {
    let n = p.size;
    let mut canvas = background(rng, photos, n);
    let mut objects: Vec<Object> = vec![];
    let count = rng.random_range(p.objects.0..=p.objects.1);
    for _ in 0..count {
        for _ in 0..ATTEMPTS {
            let (pixels, class) = fashion.item(rng.random_range(0..fashion.len()));
            let Some(src) = Source::new(pixels) else { continue };
            let Some(layer) = draw(rng, &src, p) else { continue };
            let Some(visible) = hidden_by(&objects, &layer.full, p) else { continue };
            for (o, v) in objects.iter_mut().zip(visible) {
                o.visible = v;
            }
            for (i, px) in canvas.iter_mut().enumerate() {
                let a = layer.alpha[i];
                if a > 0.0 {
                    for (ch, l) in px.iter_mut().zip(layer.rgb[i]) {
                        *ch = a * l + (1.0 - a) * *ch;
                    }
                }
            }
            objects.push(Object { class, theta: layer.theta, visible: layer.full.clone(), full: layer.full });
            break;
        }
    }
    let rgb = canvas.iter().flat_map(|px| px.map(|v| v.round().clamp(0.0, 255.0) as u8)).collect();
    Scene { size: n, rgb, objects }
}
