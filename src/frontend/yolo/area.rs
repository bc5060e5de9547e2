//! YOLO12's `A2C2f` and its area attention (`ABlock`, `AAttn`).
//!
//! Area attention splits the flattened feature map (row-major positions) into `area`
//! contiguous parts and runs multi-head attention inside each. In IR the sequence is never
//! transposed to channels-last: `qkv [B, 3C, H, W]` is viewed as `[B, heads, 3·hd, area, N/area]`
//! (channel `head·3hd + j`, position `a·N/area + m`, as Ultralytics' `view` and `reshape` lay
//! them out), the area axis moved next to the batch, and the products taken over the last two
//! axes, so the graph keeps working at any image size whose positions divide by `area`.

use super::lowering::Lowering;
use anyhow::{bail, Result};
use slimc_ir::{Binary, Reshape, Transpose};
use slimc_ir::{Op, ParamKind, ReshapeDim, ValueId};

/// Channels per attention head in `A2C2f` (Ultralytics builds `ABlock(c_, c_ // 32, ...)`).
const HEAD_CHANNELS: usize = 32;

/// The standard deviation of `ABlock`'s truncated-normal conv init (`trunc_normal_(std=0.02)`).
const ABLOCK_INIT_STD: f32 = 0.02;

/// `A2C2f`'s arguments after the layer's channels: `A2C2f(c1, c2, n, a2, area, residual,
/// mlp_ratio, e, g=1, shortcut)`.
pub struct A2C2fArgs {
    /// Area attention blocks (true) or C3k blocks (false).
    pub a2: bool,
    /// Parts the sequence is split into (1: global attention).
    pub area: usize,
    /// The learnt residual scale `gamma` around the block (scales l and x).
    pub residual: bool,
    /// Hidden width of each `ABlock`'s MLP relative to its input.
    pub mlp_ratio: f64,
    /// Hidden channels relative to `c2`.
    pub e: f64,
    /// Residual adds in the C3k blocks (when `a2` is false).
    pub shortcut: bool,
}

impl Lowering<'_> {
    /// Ultralytics `A2C2f`: `cv1`, `n` blocks (two `ABlock`s each, or a `C3k`) chained,
    /// every output concatenated into `cv2`, and with `residual` the input added back scaled
    /// by the per-channel `gamma`.
    pub fn a2c2f(&mut self, x: ValueId, c2: usize, n: usize, a: &A2C2fArgs, scope: &str) -> Result<ValueId> {
        let c_ = (c2 as f64 * a.e) as usize;
        if a.a2 && !c_.is_multiple_of(HEAD_CHANNELS) {
            bail!("{scope}: A2C2f's hidden width {c_} is not a multiple of {HEAD_CHANNELS} (Ultralytics asserts it)");
        }
        let mut ys = vec![self.conv(x, c_, 1, 1, None, 1, true, &format!("{scope}.cv1"))?];
        for i in 0..n {
            let last = *ys.last().expect("cv1");
            let m = format!("{scope}.m.{i}");
            ys.push(if a.a2 {
                let c = self.channels(last);
                let heads = c / HEAD_CHANNELS;
                if heads == 0 || !c.is_multiple_of(HEAD_CHANNELS) {
                    bail!("{m}: {c} channels do not make {HEAD_CHANNELS}-wide attention heads");
                }
                let hidden = (c as f64 * a.mlp_ratio) as usize;
                let y = self.ablock(last, heads, hidden, a.area, &format!("{m}.0"))?;
                self.ablock(y, heads, hidden, a.area, &format!("{m}.1"))?
            } else {
                let c = self.channels(last);
                self.c3(last, c, 2, a.shortcut, 0.5, [3, 3], &m)?
            });
        }
        let cat = self.concat(&ys, &format!("{scope}.cat"), scope)?;
        let y = self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))?;
        if !(a.a2 && a.residual) {
            return Ok(y);
        }
        let c = self.channels(y);
        if self.channels(x) != c {
            bail!("{scope}: the gamma residual joins {} and {c} channels", self.channels(x));
        }
        let gamma = self.param(&format!("{scope}.gamma"), &[c], ParamKind::Weight, vec![0.01; c]);
        let view = Op::Reshape(Reshape {
            shape: vec![ReshapeDim::Fixed(1), ReshapeDim::Fixed(c), ReshapeDim::Fixed(1), ReshapeDim::Fixed(1)],
        });
        let g4 = self.g.add1(view, &[gamma], &format!("{scope}.gamma_view"), scope)?;
        let scaled = self.g.add1(Op::Binary(Binary::Mul), &[g4, y], &format!("{scope}.scaled"), scope)?;
        self.add(x, scaled, &format!("{scope}.add"), scope)
    }

    /// Ultralytics `ABlock(dim, num_heads, mlp_ratio, area)`: `x + attn(x)`, then `x + mlp(x)`;
    /// its convs start from a normal init of std 0.02.
    fn ablock(&mut self, x: ValueId, heads: usize, hidden: usize, area: usize, scope: &str) -> Result<ValueId> {
        let outer = self.init_std.replace(ABLOCK_INIT_STD);
        let y = (|| {
            let c = self.channels(x);
            let at = self.area_attention(x, heads, area, &format!("{scope}.attn"))?;
            let x = self.add(x, at, &format!("{scope}.add_attn"), scope)?;
            let h = self.conv(x, hidden, 1, 1, None, 1, true, &format!("{scope}.mlp.0"))?;
            let h = self.conv(h, c, 1, 1, None, 1, false, &format!("{scope}.mlp.1"))?;
            self.add(x, h, &format!("{scope}.add_mlp"), scope)
        })();
        self.init_std = outer;
        y
    }

    /// Ultralytics `AAttn(dim, num_heads, area)`: attention within each of `area` parts of the
    /// sequence, plus the 7×7 depthwise position conv `pe` of the values, through `proj`.
    fn area_attention(&mut self, x: ValueId, heads: usize, area: usize, scope: &str) -> Result<ValueId> {
        let dim = self.channels(x);
        let hd = dim / heads;
        let qkv = self.conv(x, 3 * hd * heads, 1, 1, None, 1, false, &format!("{scope}.qkv"))?;
        let b0 = ReshapeDim::Of { input: 0, axis: 0 };
        let view = Op::Reshape(Reshape {
            shape: vec![
                b0.clone(),
                ReshapeDim::Fixed(heads),
                ReshapeDim::Fixed(3 * hd),
                ReshapeDim::Fixed(area),
                ReshapeDim::Infer,
            ],
        });
        let qkv = self.g.add1(view, &[qkv], &format!("{scope}.view"), scope)?;
        // [B, heads, 3hd, area, n] -> [B, area, heads, 3hd, n]
        let t = Op::Transpose(Transpose { perm: vec![0, 3, 1, 2, 4] });
        let qkv = self.g.add1(t, &[qkv], &format!("{scope}.areas"), scope)?;
        let (o, v) = self.dot_product_attention(qkv, 3, [hd, hd], scope)?;
        // [B, area, heads, hd, n] -> [B, heads, hd, area, n] -> [B, C, H, W]
        let mut image = |t: ValueId, name: &str| -> Result<ValueId> {
            let back = Op::Transpose(Transpose { perm: vec![0, 2, 3, 1, 4] });
            let t = self.g.add1(back, &[t], &format!("{scope}.{name}_seq"), scope)?;
            self.image_of(t, x, name, scope)
        };
        let o = image(o, "out")?;
        let vimg = image(v, "v_img")?;
        self.attention_out(o, vimg, 7, scope)
    }
}
