//! The backbone and neck blocks: Bottleneck, C3 and C3k, C2f and C3k2, C2, SPPF, and C2PSA with
//! its attention (YOLO12's A2C2f is in [`super::area`]).

use super::lowering::Lowering;
use anyhow::{bail, Result};
use slimc_ir::{Axis, Binary, Pool, Reshape, Split, Transpose};
use slimc_ir::{Op, ReshapeDim, ValueId};

impl Lowering<'_> {
    /// Ultralytics `Bottleneck(c1, c2, shortcut, k=(k1, k2), e)`.
    pub fn bottleneck(
        &mut self,
        x: ValueId,
        c2: usize,
        shortcut: bool,
        k: [usize; 2],
        e: f64,
        scope: &str,
    ) -> Result<ValueId> {
        let c1 = self.channels(x);
        let c_ = (c2 as f64 * e) as usize;
        let y = self.conv(x, c_, k[0], 1, None, 1, true, &format!("{scope}.cv1"))?;
        let y = self.conv(y, c2, k[1], 1, None, 1, true, &format!("{scope}.cv2"))?;
        // Ultralytics decides the shortcut when it builds the module, from its nominal widths
        // (`c1 == c2`, which every caller here passes), and keeps it in a pruned checkpoint;
        // the widths taken from one must still match for the add.
        let out = self.channels(y);
        if shortcut && out != c1 {
            bail!(
                "{scope}: the residual add joins {c1} and {out} channels (the checkpoint's widths break the shortcut)"
            );
        }
        if shortcut {
            self.add(x, y, &format!("{scope}.add"), scope)
        } else {
            Ok(y)
        }
    }

    /// Ultralytics `C3(c1, c2, n, shortcut, e=0.5)` with bottleneck kernels `k` (`(1, 3)`;
    /// YOLO11's `C3k(c1, c2, n, shortcut, e, k)` is the same block with `(k, k)`).
    pub fn c3(
        &mut self,
        x: ValueId,
        c2: usize,
        n: usize,
        shortcut: bool,
        e: f64,
        k: [usize; 2],
        scope: &str,
    ) -> Result<ValueId> {
        let c_ = (c2 as f64 * e) as usize;
        let mut a = self.conv(x, c_, 1, 1, None, 1, true, &format!("{scope}.cv1"))?;
        let b = self.conv(x, c_, 1, 1, None, 1, true, &format!("{scope}.cv2"))?;
        for i in 0..n {
            a = self.bottleneck(a, c_, shortcut, k, 1.0, &format!("{scope}.m.{i}"))?;
        }
        let cat = self.concat(&[a, b], &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv3"))
    }

    /// The C2f form shared by `C2f` and `C3k2`: `cv1` to `2c` channels split in halves, `n`
    /// inner blocks chained on the last part (`inner(self, x, c, scope)`), every part
    /// concatenated into `cv2`.
    fn c2f_form(
        &mut self,
        x: ValueId,
        c2: usize,
        n: usize,
        e: f64,
        scope: &str,
        inner: &mut dyn FnMut(&mut Self, ValueId, usize, &str) -> Result<ValueId>,
    ) -> Result<ValueId> {
        let (parts, c) = self.cv1_halves(x, c2, e, scope)?;
        let mut ys = parts.to_vec();
        for i in 0..n {
            let last = *ys.last().expect("two parts");
            ys.push(inner(self, last, c, &format!("{scope}.m.{i}"))?);
        }
        let cat = self.concat(&ys, &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }

    /// Ultralytics `C2f(c1, c2, n, shortcut, e=0.5)` (YOLOv8).
    pub fn c2f(&mut self, x: ValueId, c2: usize, n: usize, shortcut: bool, e: f64, scope: &str) -> Result<ValueId> {
        self.c2f_form(x, c2, n, e, scope, &mut |l, x, c, m| l.bottleneck(x, c, shortcut, [3, 3], 1.0, m))
    }

    /// Ultralytics `C3k2(c1, c2, n, c3k, e, shortcut=True)` in its C2f form.
    pub fn c3k2(
        &mut self,
        x: ValueId,
        c2: usize,
        n: usize,
        c3k: bool,
        e: f64,
        shortcut: bool,
        scope: &str,
    ) -> Result<ValueId> {
        self.c2f_form(x, c2, n, e, scope, &mut |l, x, c, m| {
            if c3k {
                l.c3(x, c, 2, shortcut, 0.5, [3, 3], m)
            } else {
                l.bottleneck(x, c, shortcut, [3, 3], 0.5, m)
            }
        })
    }

    /// Ultralytics `C2(c1, c2, n, shortcut, e=0.5)` (YOLOv8-p6's head): the first half
    /// through `n` chained bottlenecks, concatenated with the second into `cv2`.
    pub fn c2(&mut self, x: ValueId, c2: usize, n: usize, shortcut: bool, e: f64, scope: &str) -> Result<ValueId> {
        let (ab, c) = self.cv1_halves(x, c2, e, scope)?;
        let mut a = ab[0];
        for i in 0..n {
            a = self.bottleneck(a, c, shortcut, [3, 3], 1.0, &format!("{scope}.m.{i}"))?;
        }
        let cat = self.concat(&[a, ab[1]], &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }

    /// `cv1` to `2·int(c2·e)` channels chunked in two halves (`self.cv1(x).chunk(2, 1)` of C2f,
    /// C3k2, C2 and C2PSA): the halves and their width (from the conv's actual width, which a
    /// checkpoint may have narrowed).
    fn cv1_halves(&mut self, x: ValueId, c2: usize, e: f64, scope: &str) -> Result<([ValueId; 2], usize)> {
        let y = self.conv(x, 2 * (c2 as f64 * e) as usize, 1, 1, None, 1, true, &format!("{scope}.cv1"))?;
        let c = self.channels(y);
        if c % 2 != 0 {
            bail!("{scope}: cv1 gives {c} channels, which no longer split in two halves");
        }
        let c = c / 2;
        let names = [format!("{scope}.split.0"), format!("{scope}.split.1")];
        let parts =
            self.g.add_node(Op::Split(Split { axis: 1, sizes: vec![c, c] }), &[y], &[&names[0], &names[1]], scope)?;
        Ok(([parts[0], parts[1]], c))
    }

    /// Ultralytics `SPPF(c1, c2, k)`: three chained max pools.
    pub fn sppf(&mut self, x: ValueId, c2: usize, k: usize, scope: &str) -> Result<ValueId> {
        let c_ = self.channels(x) / 2;
        let mut ys = vec![self.conv(x, c_, 1, 1, None, 1, true, &format!("{scope}.cv1"))?];
        for i in 0..3 {
            let p = k / 2;
            let op = Op::MaxPool2d(Pool { kernel: [k, k], stride: [1, 1], pad: [p, p, p, p] });
            let last = *ys.last().expect("non-empty");
            ys.push(self.g.add1(op, &[last], &format!("{scope}.m.{i}"), &format!("{scope}.m"))?);
        }
        let cat = self.concat(&ys, &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }

    /// Ultralytics `Attention(dim, num_heads, attn_ratio=0.5)`.
    pub fn attention(&mut self, x: ValueId, heads: usize, scope: &str) -> Result<ValueId> {
        let dim = self.channels(x);
        let head_dim = dim / heads;
        let key_dim = head_dim / 2;
        let qkv = self.conv(x, dim + 2 * key_dim * heads, 1, 1, None, 1, false, &format!("{scope}.qkv"))?;
        let view = Op::Reshape(Reshape {
            shape: vec![
                ReshapeDim::Of { input: 0, axis: 0 },
                ReshapeDim::Fixed(heads),
                ReshapeDim::Fixed(2 * key_dim + head_dim),
                ReshapeDim::Infer,
            ],
        });
        let qkv = self.g.add1(view, &[qkv], &format!("{scope}.view"), scope)?;
        let (o, v) = self.dot_product_attention(qkv, 2, [key_dim, head_dim], scope)?;
        let o = self.image_of(o, x, "out", scope)?;
        let vimg = self.image_of(v, x, "v_img", scope)?;
        self.attention_out(o, vimg, 3, scope)
    }

    /// The attention shared by C2PSA's `Attention` and YOLO12's `AAttn`: `qkv` split along
    /// `axis` into q, k (`sizes[0]` each) and v (`sizes[1]`), each laid out `[..., d, n]`;
    /// `softmax(qᵀk · d^-½)` over the last axis, and `v · attnᵀ`. Returns that product and v.
    pub(super) fn dot_product_attention(
        &mut self,
        qkv: ValueId,
        axis: usize,
        sizes: [usize; 2],
        scope: &str,
    ) -> Result<(ValueId, ValueId)> {
        let names = [format!("{scope}.q"), format!("{scope}.k"), format!("{scope}.v")];
        let qkv = self.g.add_node(
            Op::Split(Split { axis, sizes: vec![sizes[0], sizes[0], sizes[1]] }),
            &[qkv],
            &[&names[0], &names[1], &names[2]],
            scope,
        )?;
        let (q, k, v) = (qkv[0], qkv[1], qkv[2]);
        let r = self.g.ty(q).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        let t = Op::Transpose(Transpose { perm });
        let qt = self.g.add1(t.clone(), &[q], &format!("{scope}.qT"), scope)?;
        let attn = self.g.add1(Op::MatMul, &[qt, k], &format!("{scope}.qk"), scope)?;
        let scale = self.scalar(&format!("{scope}.scale"), (sizes[0] as f32).powf(-0.5));
        let attn = self.g.add1(Op::Binary(Binary::Mul), &[attn, scale], &format!("{scope}.scaled"), scope)?;
        let attn = self.g.add1(Op::Softmax(Axis { axis: r - 1 }), &[attn], &format!("{scope}.softmax"), scope)?;
        let at = self.g.add1(t, &[attn], &format!("{scope}.attnT"), scope)?;
        let o = self.g.add1(Op::MatMul, &[v, at], &format!("{scope}.av"), scope)?;
        Ok((o, v))
    }

    /// `t` viewed as a feature map shaped like `like` (`{scope}.{name}`).
    pub(super) fn image_of(&mut self, t: ValueId, like: ValueId, name: &str, scope: &str) -> Result<ValueId> {
        let back = Op::Reshape(Reshape {
            shape: vec![
                ReshapeDim::Of { input: 0, axis: 0 },
                ReshapeDim::Fixed(self.channels(like)),
                ReshapeDim::Of { input: 1, axis: 2 },
                ReshapeDim::Of { input: 1, axis: 3 },
            ],
        });
        Ok(self.g.add1(back, &[t, like], &format!("{scope}.{name}"), scope)?)
    }

    /// An attention's output: `o` plus the depthwise `k`×`k` position conv `pe` of the values
    /// `vimg`, through the 1×1 `proj`.
    pub(super) fn attention_out(&mut self, o: ValueId, vimg: ValueId, k: usize, scope: &str) -> Result<ValueId> {
        let dim = self.channels(vimg);
        let pe = self.conv(vimg, dim, k, 1, None, dim, false, &format!("{scope}.pe"))?;
        let o = self.add(o, pe, &format!("{scope}.add"), scope)?;
        self.conv(o, dim, 1, 1, None, 1, false, &format!("{scope}.proj"))
    }

    /// Ultralytics `C2PSA(c1, c2, n, e=0.5)` with `n` PSABlocks.
    pub fn c2psa(&mut self, x: ValueId, c2: usize, n: usize, scope: &str) -> Result<ValueId> {
        let c1 = self.channels(x);
        // Ultralytics asserts c1 == c2 when it builds the module; a pruned checkpoint's widths
        // (which the convs take from their weights) may narrow the input alone.
        if c1 != c2 && self.widths.is_none() {
            bail!("{scope}: C2PSA needs equal input and output channels, got {c1} and {c2}");
        }
        let (ab, c) = self.cv1_halves(x, c2, 0.5, scope)?;
        if c < 64 {
            bail!("{scope}: C2PSA with {} channels leaves no 64-wide attention head", 2 * c);
        }
        let mut b = ab[1];
        for i in 0..n {
            let m = format!("{scope}.m.{i}");
            let at = self.attention(b, c / 64, &format!("{m}.attn"))?;
            b = self.add(b, at, &format!("{m}.add_attn"), &m)?;
            let f = self.conv(b, 2 * c, 1, 1, None, 1, true, &format!("{m}.ffn.0"))?;
            let f = self.conv(f, c, 1, 1, None, 1, false, &format!("{m}.ffn.1"))?;
            b = self.add(b, f, &format!("{m}.add_ffn"), &m)?;
        }
        let cat = self.concat(&[ab[0], b], &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }
}
