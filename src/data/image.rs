//! 8-bit RGB images and the pixel operations of Ultralytics' pipeline: bilinear resize (OpenCV's
//! INTER_LINEAR pixel-centre convention), letterbox, affine warp with a grey border, HSV jitter.

use anyhow::Result;

/// The padding grey Ultralytics uses.
pub const PAD: u8 = 114;

/// An interleaved RGB image.
#[derive(Clone, Debug)]
pub struct Img {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// `h·w·3` bytes, row-major RGB.
    pub data: Vec<u8>,
}

/// Most bytes a decoded image may take (as the `image` crate's default limit): a file that
/// declares more is refused before anything is allocated.
const MAX_DECODED_BYTES: usize = 512 << 20;

/// Decodes an image file's bytes; a JPEG without its end marker is rejected as truncated.
/// JPEGs go through libjpeg-turbo's decoder, the one OpenCV and Pillow use, so slimc reads the
/// very pixels Ultralytics reads (the `image` crate's decoder differs from it in about a fifth
/// of the bytes, by up to 4 levels); what libjpeg cannot read (CMYK, say) and other formats go
/// through the `image` crate.
pub fn decode(bytes: &[u8]) -> std::result::Result<Img, String> {
    let jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    if jpeg && !bytes.ends_with(&[0xFF, 0xD9]) {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let libjpeg = if jpeg { Some(decode_jpeg(bytes)) } else { None };
    match libjpeg {
        Some(Ok(img)) => Ok(img),
        Some(Err(e)) => decode_other(bytes).map_err(|_| e),
        None => decode_other(bytes),
    }
}

/// A JPEG through libjpeg-turbo (the `mozjpeg` crate's build of it): RGB out, fancy upsampling
/// and the integer IDCT, libjpeg's defaults.
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<Img, String> {
    // libjpeg's fatal errors unwind out of the decoder as a String payload.
    let run = std::panic::catch_unwind(|| -> std::result::Result<Img, String> {
        let d = mozjpeg::Decompress::new_mem(bytes).map_err(|e| e.to_string())?;
        let (w, h) = d.size();
        if w == 0 || h == 0 {
            return Err("empty image".into());
        }
        if w.saturating_mul(h).saturating_mul(3) > MAX_DECODED_BYTES {
            return Err(format!("{w}x{h} pixels is beyond the {} MB decoding limit", MAX_DECODED_BYTES >> 20));
        }
        let mut s = d.rgb().map_err(|e| e.to_string())?;
        let data: Vec<u8> = s.read_scanlines().map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        if data.len() != w * h * 3 {
            return Err(format!("decoded {} bytes for {w}x{h} RGB", data.len()));
        }
        Ok(Img { h, w, data })
    });
    match run {
        Ok(r) => r,
        Err(p) => Err(p.downcast_ref::<String>().cloned().unwrap_or_else(|| "libjpeg could not decode it".into())),
    }
}

/// Any format the `image` crate reads.
fn decode_other(bytes: &[u8]) -> std::result::Result<Img, String> {
    let im = image::load_from_memory(bytes).map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = (im.width() as usize, im.height() as usize);
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok(Img { h, w, data: im.into_raw() })
}

impl Img {
    /// A `h×w` image filled with `v`.
    pub fn filled(h: usize, w: usize, v: u8) -> Img {
        Img { h, w, data: vec![v; h * w * 3] }
    }

    /// Reads an image file.
    pub fn open(path: &std::path::Path) -> Result<Img> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Bilinear sample at (x, y) in pixel-centre coordinates; `None` outside the image.
    fn sample(&self, x: f32, y: f32, out: &mut [u8], border: Option<u8>) {
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        for c in 0..3 {
            let px = |xx: isize, yy: isize| -> f32 {
                match border {
                    Some(b) if xx < 0 || yy < 0 || xx >= self.w as isize || yy >= self.h as isize => b as f32,
                    _ => {
                        let xx = xx.clamp(0, self.w as isize - 1) as usize;
                        let yy = yy.clamp(0, self.h as isize - 1) as usize;
                        self.data[(yy * self.w + xx) * 3 + c] as f32
                    }
                }
            };
            let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
            let bot = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
            out[c] = to_u8(top * (1.0 - fy) + bot * fy);
        }
    }

    /// Bilinear resize to `h×w` (edge pixels replicated, as INTER_LINEAR).
    pub fn resize(&self, h: usize, w: usize) -> Img {
        if (h, w) == (self.h, self.w) {
            return self.clone();
        }
        let (sy, sx) = (self.h as f32 / h as f32, self.w as f32 / w as f32);
        let mut out = Img::filled(h, w, 0);
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = ((x as f32 + 0.5) * sx - 0.5, (y as f32 + 0.5) * sy - 0.5);
                self.sample(fx.max(0.0), fy.max(0.0), &mut out.data[(y * w + x) * 3..(y * w + x) * 3 + 3], None);
            }
        }
        out
    }

    /// Ultralytics' `load_image`: the long side becomes `size` (small images are scaled up too).
    pub fn fit_long_side(&self, size: usize) -> Img {
        let r = size as f64 / self.h.max(self.w) as f64;
        if r == 1.0 {
            return self.clone();
        }
        let w = ((self.w as f64 * r).ceil() as usize).min(size);
        let h = ((self.h as f64 * r).ceil() as usize).min(size);
        self.resize(h, w)
    }

    /// Copies `src`'s window at (`sx`, `sy`) of size `w×h` to (`dx`, `dy`).
    pub fn paste(&mut self, src: &Img, [sx, sy]: [usize; 2], [dx, dy]: [usize; 2], [w, h]: [usize; 2]) {
        for r in 0..h {
            let s = ((sy + r) * src.w + sx) * 3;
            let d = ((dy + r) * self.w + dx) * 3;
            self.data[d..d + w * 3].copy_from_slice(&src.data[s..s + w * 3]);
        }
    }

    /// Mirrors the image left to right.
    pub fn flip_lr(&mut self) {
        for row in self.data.chunks_mut(self.w * 3) {
            for x in 0..self.w / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (self.w - 1 - x) * 3 + c);
                }
            }
        }
    }

    /// Warps by the affine map `m` (source → destination, 2×3) into `h×w`, bilinear, grey border.
    pub fn warp_affine(&self, m: &[[f64; 3]; 2], h: usize, w: usize) -> Img {
        let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
        let inv = [[m[1][1] / det, -m[0][1] / det], [-m[1][0] / det, m[0][0] / det]];
        let mut out = Img::filled(h, w, PAD);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f64 - m[0][2], y as f64 - m[1][2]);
                let sx = inv[0][0] * u + inv[0][1] * v;
                let sy = inv[1][0] * u + inv[1][1] * v;
                if sx > -1.0 && sy > -1.0 && sx < self.w as f64 && sy < self.h as f64 {
                    let at = (y * w + x) * 3;
                    self.sample(sx as f32, sy as f32, &mut out.data[at..at + 3], Some(PAD));
                }
            }
        }
        out
    }

    /// Ultralytics' `RandomHSV`: hue shifted by `g[0]·180` (of OpenCV's 0..180 hue), saturation
    /// and value scaled by `1 + g[1]` and `1 + g[2]`.
    pub fn hsv_jitter(&mut self, g: [f32; 3]) {
        for px in self.data.chunks_mut(3) {
            let (r, gg, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
            let v = r.max(gg).max(b);
            let mn = r.min(gg).min(b);
            let s = if v > 0.0 { (v - mn) / v } else { 0.0 };
            let mut hdeg = if v == mn {
                0.0
            } else if v == r {
                60.0 * (gg - b) / (v - mn)
            } else if v == gg {
                120.0 + 60.0 * (b - r) / (v - mn)
            } else {
                240.0 + 60.0 * (r - gg) / (v - mn)
            };
            if hdeg < 0.0 {
                hdeg += 360.0;
            }
            let h8 = ((hdeg / 2.0).round() + g[0] * 180.0).rem_euclid(180.0).floor();
            let s8 = if s == 0.0 { 0.0 } else { ((s * 255.0).round() * (1.0 + g[1])).clamp(0.0, 255.0).floor() };
            let v8 = (v * (1.0 + g[2])).clamp(0.0, 255.0).floor();
            let (hh, ss, vv) = (h8 * 2.0 / 60.0, s8 / 255.0, v8);
            let c = vv * ss;
            let x = c * (1.0 - ((hh % 2.0) - 1.0).abs());
            let (r1, g1, b1) = match hh as usize {
                0 => (c, x, 0.0),
                1 => (x, c, 0.0),
                2 => (0.0, c, x),
                3 => (0.0, x, c),
                4 => (x, 0.0, c),
                _ => (c, 0.0, x),
            };
            let m = vv - c;
            for (o, val) in px.iter_mut().zip([r1 + m, g1 + m, b1 + m]) {
                *o = to_u8(val);
            }
        }
    }

    /// CHW float32 in [0, 1].
    pub fn to_chw(&self, out: &mut [f32]) {
        let hw = self.h * self.w;
        for (i, px) in self.data.chunks(3).enumerate() {
            for c in 0..3 {
                out[c * hw + i] = px[c] as f32 / 255.0;
            }
        }
    }
}

/// Ultralytics' `LetterBox(shape, auto=False, scaleup)`: scales to fit `[h, w]`, pads with grey
/// centred. Returns the image, the gain and the (left, top) padding.
pub fn letterbox(img: &Img, shape: [usize; 2], scaleup: bool) -> (Img, f64, [usize; 2]) {
    letterbox_stride(img, shape, scaleup, None)
}

/// [`letterbox`], or with `stride` Ultralytics' `auto=True` (predict's minimum rectangle): each
/// side is padded only up to the next multiple of `stride`, so the result can be smaller than
/// `[h, w]`.
pub fn letterbox_stride(
    img: &Img,
    [th, tw]: [usize; 2],
    scaleup: bool,
    stride: Option<usize>,
) -> (Img, f64, [usize; 2]) {
    let mut r = (th as f64 / img.h as f64).min(tw as f64 / img.w as f64);
    if !scaleup {
        r = r.min(1.0);
    }
    let (nw, nh) = (round_half_even(img.w as f64 * r) as usize, round_half_even(img.h as f64 * r) as usize);
    let (pw, ph) = match stride {
        Some(s) => ((tw - nw) % s, (th - nh) % s),
        None => (tw - nw, th - nh),
    };
    let (oh, ow) = (nh + ph, nw + pw);
    let (dw, dh) = (pw as f64 / 2.0, ph as f64 / 2.0);
    let resized = if (nh, nw) != (img.h, img.w) { img.resize(nh, nw) } else { img.clone() };
    let (top, left) = (round_half_even(dh - 0.1) as usize, round_half_even(dw - 0.1) as usize);
    let mut out = Img::filled(oh, ow, PAD);
    out.paste(&resized, [0, 0], [left, top], [nw.min(ow - left), nh.min(oh - top)]);
    (out, r, [left, top])
}

/// A channel value rounded to the nearest byte (halves up) and clamped to 0..=255; `as u8`
/// saturates, so this needs no library `round` call per pixel.
fn to_u8(v: f32) -> u8 {
    (v + 0.5) as u8
}

/// Python's `round`: halves go to the even neighbour.
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_centres_and_rounds_padding_like_ultralytics() {
        let img = Img::filled(300, 400, 10);
        let (out, r, [left, top]) = letterbox(&img, [352, 352], false);
        assert_eq!((r, left, top), (0.88, 0, 44));
        assert_eq!(out.data[(43 * 352) * 3], PAD);
        assert_eq!(out.data[(44 * 352) * 3], 10);
        // No upscaling: a small image is padded only.
        let (_, r, pad) = letterbox(&Img::filled(100, 100, 0), [352, 352], false);
        assert_eq!((r, pad), (1.0, [126, 126]));
    }

    #[test]
    fn letterbox_with_a_stride_pads_to_the_minimum_rectangle() {
        // 400×600 at 640: scaled by 16/15 to 427×640; 213 rows of padding mod 32 = 21, split
        // round(10.5 - 0.1) = 10 above and 11 below, as Ultralytics' LetterBox(auto=True).
        let (out, r, [left, top]) = letterbox_stride(&Img::filled(400, 600, 7), [640, 640], true, Some(32));
        assert_eq!((out.h, out.w, left, top), (448, 640, 0, 10));
        assert!((r - 640.0 / 600.0).abs() < 1e-12);
        assert_eq!(out.data[(9 * 640) * 3], PAD);
        assert_eq!(out.data[(10 * 640) * 3], 7);
        assert_eq!(out.data[(436 * 640) * 3], 7);
        assert_eq!(out.data[(437 * 640) * 3], PAD);
    }

    #[test]
    fn hsv_round_trip_without_gain_keeps_colours() {
        let mut img = Img { h: 1, w: 4, data: vec![200, 30, 40, 10, 250, 90, 5, 5, 5, 120, 60, 230] };
        let before = img.data.clone();
        img.hsv_jitter([0.0, 0.0, 0.0]);
        for (a, b) in img.data.iter().zip(&before) {
            assert!((*a as i32 - *b as i32).abs() <= 3, "{:?} vs {before:?}", img.data);
        }
    }

    /// The pixels OpenCV's `cv2.imread` (libjpeg-turbo) gives for two trees images, as RGB:
    /// their byte sum and a position-weighted checksum, computed with opencv-python 4.13 in
    /// benches/vs_ultralytics_predict.sh's venv. The `image` crate's own JPEG decoder differs
    /// from these in about a fifth of the bytes.
    #[test]
    fn jpeg_pixels_are_the_ones_opencv_reads() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/trees/images");
        for (file, sum, weighted) in [
            ("val/2019_YELL_2_541000_4977000_image_crop_0_0.jpg", 49041527u64, 1521038383365u64),
            ("train/2019_YELL_2_528000_4978000_image_crop2_256_0.jpg", 49606301, 1552181763223),
        ] {
            let img = Img::open(&root.join(file)).unwrap();
            assert_eq!((img.h, img.w), (320, 320));
            let s: u64 = img.data.iter().map(|&v| v as u64).sum();
            let w = img
                .data
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, &v)| (acc + v as u64 * (i as u64 % 65521 + 1)) % ((1u64 << 61) - 1));
            assert_eq!((s, w), (sum, weighted), "{file}");
        }
    }

    #[test]
    fn corrupt_jpeg_data_is_an_error_not_a_panic() {
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("datasets/trees/images/val/2019_YELL_2_541000_4977000_image_crop_0_0.jpg"),
        )
        .unwrap();
        // A valid header and end marker around garbage where the frame header should be.
        let mut bad = bytes[..20].to_vec();
        bad.extend(std::iter::repeat_n(0x5A, 400));
        bad.extend([0xFF, 0xD9]);
        assert!(decode(&bad).is_err());
    }

    /// A JPEG whose frame header declares 60000×60000 pixels (10 GB of RGB) is refused before
    /// anything is allocated.
    #[test]
    fn jpeg_declaring_huge_dimensions_is_refused() {
        let mut bytes = vec![];
        image::RgbImage::new(16, 16).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
        let e = decode(&bytes).unwrap_err();
        assert!(e.contains("60000x60000") || e.contains("limit"), "{e}");
    }

    #[test]
    fn truncated_jpeg_is_rejected() {
        let mut bytes = vec![];
        image::RgbImage::new(8, 8).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
        assert!(decode(&bytes).is_ok());
        assert!(decode(&bytes[..bytes.len() / 2]).unwrap_err().contains("truncated"));
    }
}

/// Image `k` of an `[n, 3, h, w]` batch in [0, 1] as 8-bit RGB.
pub fn batch_image(images: &slimc_ir::Tensor, k: usize) -> Result<image::RgbImage> {
    let (h, w) = (images.shape[2], images.shape[3]);
    let px = &images.f32s()?[k * 3 * h * w..(k + 1) * 3 * h * w];
    let byte = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    Ok(image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let at = y as usize * w + x as usize;
        image::Rgb([byte(px[at]), byte(px[h * w + at]), byte(px[2 * h * w + at])])
    }))
}
