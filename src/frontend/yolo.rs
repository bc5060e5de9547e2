//! Lowering of Ultralytics YOLO11 modules to IR, with PyTorch-default initialisation.
//!
//! Each method builds one Ultralytics module (Conv, Bottleneck, C3k, C3k2, SPPF, C2PSA,
//! PSABlock, Attention, Detect) from primitive ops, naming parameters exactly as the
//! Ultralytics state dict does (`model.2.m.0.cv1.conv.weight`) and results after the module
//! path, so the IR reads like the PyTorch model.

use super::yaml::{make_divisible, Arg, ModelSpec};
use anyhow::{anyhow, bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slimc_ir::{Anchors, Axis, BatchNorm, Binary, Pool, Reshape, Slice, Split, Transpose, Unary, Upsample};
use slimc_ir::{Conv2d, Dim, Graph, Metadata, Model, Op, ParamKind, ReshapeDim, Tensor, TensorType, ValueId};
use std::collections::BTreeMap;

/// BatchNorm epsilon and momentum set by Ultralytics' `initialize_weights`.
pub const BN_EPS: f32 = 1e-3;
/// BatchNorm momentum (PyTorch convention).
pub const BN_MOMENTUM: f32 = 0.03;
/// Distribution bins per box side in the Detect head.
pub const REG_MAX: usize = 16;

/// Builds IR for YOLO modules while holding the parameters it creates.
pub struct Lowering<'w> {
    /// The graph under construction.
    pub g: Graph,
    /// Parameter tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    rng: ChaCha8Rng,
    widths: Option<&'w BTreeMap<String, Vec<usize>>>,
    /// Weight elements created so far, bounded by [`MAX_PARAMETERS`].
    total: usize,
}

/// The most weight elements a lowered model may have (2^29, 2 GiB of f32; YOLO11x has 57M).
pub const MAX_PARAMETERS: usize = 1 << 29;

/// The widest a layer may be (channels), before and after width scaling.
pub const MAX_CHANNELS: i64 = 16384;

impl<'w> Lowering<'w> {
    /// An empty lowering with a seeded initialiser. `widths` (weight name to shape, from a
    /// checkpoint) overrides each conv's output width where it names the conv's weight.
    pub fn new(name: &str, seed: u64, widths: Option<&'w BTreeMap<String, Vec<usize>>>) -> Lowering<'w> {
        Lowering {
            g: Graph::new(name),
            tensors: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            widths,
            total: 0,
        }
    }

    fn channels(&self, v: ValueId) -> usize {
        self.g.ty(v).shape[1].fixed().expect("channel dims are static")
    }

    fn param(&mut self, name: &str, shape: &[usize], kind: ParamKind, data: Vec<f32>) -> ValueId {
        self.tensors.insert(name.to_string(), Tensor::from_f32(shape.to_vec(), data).expect("sized by shape"));
        self.g.add_param(name, TensorType::f32(shape), kind)
    }

    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(-bound..bound)).collect()
    }

    /// A scalar constant.
    fn scalar(&mut self, name: &str, v: f32) -> ValueId {
        self.tensors.insert(name.to_string(), Tensor::scalar(v));
        self.g.add_param(name, TensorType { dtype: slimc_ir::DType::F32, shape: vec![] }, ParamKind::Const)
    }

    /// `nn.Conv2d(c1, c2, k, s, k//2, groups=g)` with PyTorch's default weight init; `bias`
    /// gives the bias values when the conv has one. Returns the conv result.
    fn conv2d(
        &mut self,
        x: ValueId,
        c2: usize,
        k: usize,
        s: usize,
        p: usize,
        g: usize,
        bias: Option<Vec<f32>>,
        scope: &str,
    ) -> Result<ValueId> {
        let c1 = self.channels(x);
        let wname = format!("{scope}.weight");
        let c2 = match self.widths.and_then(|w| w.get(&wname)) {
            Some(s) if s.len() == 4 && s[0] > 0 && s[2] == k && s[3] == k && s[1].checked_mul(g) == Some(c1) => s[0],
            Some(s) => bail!(
                "{scope}: weight {wname} has shape {s:?}, but this {k}x{k} conv (groups {g}) receives {c1} channels"
            ),
            None => c2,
        };
        if g == 0 || c1 % g != 0 || c2 % g != 0 {
            bail!("{scope}: {c1} -> {c2} channels cannot use {g} groups");
        }
        let fan_in = c1 / g * k * k;
        let n = c2.checked_mul(fan_in).and_then(|n| n.checked_add(self.total)).filter(|&t| t <= MAX_PARAMETERS);
        let Some(total) = n else {
            bail!("{scope}: the model would have more than {MAX_PARAMETERS} parameters");
        };
        self.total = total;
        let w = self.uniform(c2 * fan_in, 1.0 / (fan_in as f32).sqrt());
        let wv = self.param(&wname, &[c2, c1 / g, k, k], ParamKind::Weight, w);
        let mut inputs = vec![x, wv];
        if let Some(b) = bias {
            inputs.push(self.param(&format!("{scope}.bias"), &[c2], ParamKind::Weight, b));
        }
        let op = Op::Conv2d(Conv2d { stride: [s, s], pad: [p, p, p, p], dilation: [1, 1], groups: g });
        Ok(self.g.add1(op, &inputs, scope, scope)?)
    }

    /// Ultralytics `Conv`: conv (no bias) → BatchNorm → SiLU (or identity when `act` is false).
    pub fn conv(
        &mut self,
        x: ValueId,
        c2: usize,
        k: usize,
        s: usize,
        p: Option<usize>,
        g: usize,
        act: bool,
        scope: &str,
    ) -> Result<ValueId> {
        let y = self.conv2d(x, c2, k, s, p.unwrap_or(k / 2), g, None, &format!("{scope}.conv"))?;
        let c2 = self.channels(y);
        let bn = format!("{scope}.bn");
        let ps = [
            self.param(&format!("{bn}.weight"), &[c2], ParamKind::Weight, vec![1.0; c2]),
            self.param(&format!("{bn}.bias"), &[c2], ParamKind::Weight, vec![0.0; c2]),
            self.param(&format!("{bn}.running_mean"), &[c2], ParamKind::Buffer, vec![0.0; c2]),
            self.param(&format!("{bn}.running_var"), &[c2], ParamKind::Buffer, vec![1.0; c2]),
        ];
        let op = Op::BatchNorm(BatchNorm { eps: BN_EPS, momentum: BN_MOMENTUM });
        let y = self.g.add1(op, &[y, ps[0], ps[1], ps[2], ps[3]], &bn, &bn)?;
        if act {
            Ok(self.g.add1(Op::Unary(Unary::Silu), &[y], scope, scope)?)
        } else {
            Ok(y)
        }
    }

    fn add(&mut self, a: ValueId, b: ValueId, name: &str, scope: &str) -> Result<ValueId> {
        Ok(self.g.add1(Op::Binary(Binary::Add), &[a, b], name, scope)?)
    }

    fn concat(&mut self, xs: &[ValueId], name: &str, scope: &str) -> Result<ValueId> {
        Ok(self.g.add1(Op::Concat(Axis { axis: 1 }), xs, name, scope)?)
    }

    /// Ultralytics `Bottleneck(c1, c2, shortcut, k=(k, k), e)`.
    pub fn bottleneck(
        &mut self,
        x: ValueId,
        c2: usize,
        shortcut: bool,
        k: usize,
        e: f64,
        scope: &str,
    ) -> Result<ValueId> {
        let c1 = self.channels(x);
        let c_ = (c2 as f64 * e) as usize;
        let y = self.conv(x, c_, k, 1, None, 1, true, &format!("{scope}.cv1"))?;
        let y = self.conv(y, c2, k, 1, None, 1, true, &format!("{scope}.cv2"))?;
        // Ultralytics decides the shortcut from the module's nominal widths (`c1 == c2`);
        // widths taken from a checkpoint must still match for the add.
        let out = self.channels(y);
        if shortcut && c1 == c2 && out != c1 {
            bail!(
                "{scope}: the residual add joins {c1} and {out} channels (the checkpoint's widths break the shortcut)"
            );
        }
        if shortcut && c1 == c2 {
            self.add(x, y, &format!("{scope}.add"), scope)
        } else {
            Ok(y)
        }
    }

    /// Ultralytics `C3k(c1, c2, n, shortcut, e=0.5, k=3)`.
    pub fn c3k(
        &mut self,
        x: ValueId,
        c2: usize,
        n: usize,
        shortcut: bool,
        e: f64,
        k: usize,
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
        let c = (c2 as f64 * e) as usize;
        let y = self.conv(x, 2 * c, 1, 1, None, 1, true, &format!("{scope}.cv1"))?;
        let c = self.halves(y, scope)?;
        let names = [format!("{scope}.split.0"), format!("{scope}.split.1")];
        let parts =
            self.g.add_node(Op::Split(Split { axis: 1, sizes: vec![c, c] }), &[y], &[&names[0], &names[1]], scope)?;
        let mut ys = parts.clone();
        for i in 0..n {
            let last = *ys.last().expect("two parts");
            let m = format!("{scope}.m.{i}");
            ys.push(if c3k {
                self.c3k(last, c, 2, shortcut, 0.5, 3, &m)?
            } else {
                self.bottleneck(last, c, shortcut, 3, 0.5, &m)?
            });
        }
        let cat = self.concat(&ys, &format!("{scope}.cat"), scope)?;
        self.conv(cat, c2, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }

    /// Half the channels of `y`, which a C2f-style module splits in two (`chunk(2, 1)`).
    fn halves(&self, y: ValueId, scope: &str) -> Result<usize> {
        let c = self.channels(y);
        if c % 2 != 0 {
            bail!("{scope}: cv1 gives {c} channels, which no longer split in two halves");
        }
        Ok(c / 2)
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
        let names = [format!("{scope}.q"), format!("{scope}.k"), format!("{scope}.v")];
        let qkv = self.g.add_node(
            Op::Split(Split { axis: 2, sizes: vec![key_dim, key_dim, head_dim] }),
            &[qkv],
            &[&names[0], &names[1], &names[2]],
            scope,
        )?;
        let (q, k, v) = (qkv[0], qkv[1], qkv[2]);
        let t = Op::Transpose(Transpose { perm: vec![0, 1, 3, 2] });
        let qt = self.g.add1(t.clone(), &[q], &format!("{scope}.qT"), scope)?;
        let attn = self.g.add1(Op::MatMul, &[qt, k], &format!("{scope}.qk"), scope)?;
        let scale = self.scalar(&format!("{scope}.scale"), (key_dim as f32).powf(-0.5));
        let attn = self.g.add1(Op::Binary(Binary::Mul), &[attn, scale], &format!("{scope}.scaled"), scope)?;
        let attn = self.g.add1(Op::Softmax(Axis { axis: 3 }), &[attn], &format!("{scope}.softmax"), scope)?;
        let at = self.g.add1(t, &[attn], &format!("{scope}.attnT"), scope)?;
        let o = self.g.add1(Op::MatMul, &[v, at], &format!("{scope}.av"), scope)?;
        let back = Op::Reshape(Reshape {
            shape: vec![
                ReshapeDim::Of { input: 0, axis: 0 },
                ReshapeDim::Fixed(dim),
                ReshapeDim::Of { input: 1, axis: 2 },
                ReshapeDim::Of { input: 1, axis: 3 },
            ],
        });
        let o = self.g.add1(back.clone(), &[o, x], &format!("{scope}.out"), scope)?;
        let vimg = self.g.add1(back, &[v, x], &format!("{scope}.v_img"), scope)?;
        let pe = self.conv(vimg, dim, 3, 1, None, dim, false, &format!("{scope}.pe"))?;
        let o = self.add(o, pe, &format!("{scope}.add"), scope)?;
        self.conv(o, dim, 1, 1, None, 1, false, &format!("{scope}.proj"))
    }

    /// Ultralytics `C2PSA(c1, c2, n, e=0.5)` with `n` PSABlocks.
    pub fn c2psa(&mut self, x: ValueId, c2: usize, n: usize, scope: &str) -> Result<ValueId> {
        let c1 = self.channels(x);
        if c1 != c2 {
            bail!("{scope}: C2PSA needs equal input and output channels, got {c1} and {c2}");
        }
        let c = c1 / 2;
        if c < 64 {
            bail!("{scope}: C2PSA with {c1} channels leaves no 64-wide attention head");
        }
        let y = self.conv(x, 2 * c, 1, 1, None, 1, true, &format!("{scope}.cv1"))?;
        let c = self.halves(y, scope)?;
        let names = [format!("{scope}.split.0"), format!("{scope}.split.1")];
        let ab =
            self.g.add_node(Op::Split(Split { axis: 1, sizes: vec![c, c] }), &[y], &[&names[0], &names[1]], scope)?;
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
        self.conv(cat, c1, 1, 1, None, 1, true, &format!("{scope}.cv2"))
    }

    /// The YOLO11 `Detect` head with the depthwise class branch, DFL and box decoding.
    /// Returns the decoded output `[N, 4+nc, A]` (boxes as cx, cy, w, h in input pixels, then
    /// sigmoid class scores). The raw level maps are values named `{scope}.feat.{i}`.
    pub fn detect(&mut self, xs: &[ValueId], nc: usize, strides: &[f32], scope: &str) -> Result<ValueId> {
        let ch0 = self.channels(xs[0]);
        let c2 = 16.max(ch0 / 4).max(REG_MAX * 4);
        let c3 = ch0.max(nc.min(100));
        let no = 4 * REG_MAX + nc;
        let mut flat = vec![];
        for (i, &x) in xs.iter().enumerate() {
            let ci = self.channels(x);
            let b = format!("{scope}.cv2.{i}");
            let y = self.conv(x, c2, 3, 1, None, 1, true, &format!("{b}.0"))?;
            let y = self.conv(y, c2, 3, 1, None, 1, true, &format!("{b}.1"))?;
            let box_ = self.conv2d(y, 4 * REG_MAX, 1, 1, 0, 1, Some(vec![1.0; 4 * REG_MAX]), &format!("{b}.2"))?;
            let c = format!("{scope}.cv3.{i}");
            let y = self.conv(x, ci, 3, 1, None, ci, true, &format!("{c}.0.0"))?;
            let y = self.conv(y, c3, 1, 1, None, 1, true, &format!("{c}.0.1"))?;
            let y = self.conv(y, c3, 3, 1, None, c3, true, &format!("{c}.1.0"))?;
            let y = self.conv(y, c3, 1, 1, None, 1, true, &format!("{c}.1.1"))?;
            let cls_bias = (5.0 / nc as f64 / (640.0 / strides[i] as f64).powi(2)).ln() as f32;
            let cls = self.conv2d(y, nc, 1, 1, 0, 1, Some(vec![cls_bias; nc]), &format!("{c}.2"))?;
            let feat = self.concat(&[box_, cls], &format!("{scope}.feat.{i}"), scope)?;
            let view = Op::Reshape(Reshape {
                shape: vec![ReshapeDim::Of { input: 0, axis: 0 }, ReshapeDim::Fixed(no), ReshapeDim::Infer],
            });
            flat.push((feat, self.g.add1(view, &[feat], &format!("{scope}.flat.{i}"), scope)?));
        }
        let feats: Vec<ValueId> = flat.iter().map(|f| f.0).collect();
        let all: Vec<ValueId> = flat.iter().map(|f| f.1).collect();
        let x = self.g.add1(Op::Concat(Axis { axis: 2 }), &all, &format!("{scope}.cat"), scope)?;
        let parts = self.g.add_node(
            Op::Split(Split { axis: 1, sizes: vec![4 * REG_MAX, nc] }),
            &[x],
            &[&format!("{scope}.box"), &format!("{scope}.cls")],
            scope,
        )?;
        // DFL: softmax over the 16 bins of each side, expectation by a fixed 1x1 conv.
        let dfl = format!("{scope}.dfl");
        let b0 = ReshapeDim::Of { input: 0, axis: 0 };
        let v = self.g.add1(
            Op::Reshape(Reshape {
                shape: vec![b0.clone(), ReshapeDim::Fixed(4), ReshapeDim::Fixed(REG_MAX), ReshapeDim::Infer],
            }),
            &[parts[0]],
            &format!("{dfl}.view"),
            &dfl,
        )?;
        let v = self.g.add1(
            Op::Transpose(Transpose { perm: vec![0, 2, 1, 3] }),
            &[v],
            &format!("{dfl}.transpose"),
            &dfl,
        )?;
        let v = self.g.add1(Op::Softmax(Axis { axis: 1 }), &[v], &format!("{dfl}.softmax"), &dfl)?;
        let w = self.param(
            &format!("{dfl}.conv.weight"),
            &[1, REG_MAX, 1, 1],
            ParamKind::Frozen,
            (0..REG_MAX).map(|i| i as f32).collect(),
        );
        let op = Op::Conv2d(Conv2d { stride: [1, 1], pad: [0; 4], dilation: [1, 1], groups: 1 });
        let v = self.g.add1(op, &[v, w], &format!("{dfl}.conv"), &format!("{dfl}.conv"))?;
        let dist = self.g.add1(
            Op::Reshape(Reshape { shape: vec![b0, ReshapeDim::Fixed(4), ReshapeDim::Infer] }),
            &[v],
            &format!("{dfl}.dist"),
            &dfl,
        )?;
        // dist2bbox (xywh) times stride.
        let slice = |s: i64, e: i64| Op::Slice(Slice { axes: vec![1], starts: vec![s], ends: vec![e], steps: vec![1] });
        let lt = self.g.add1(slice(0, 2), &[dist], &format!("{scope}.lt"), scope)?;
        let rb = self.g.add1(slice(2, 4), &[dist], &format!("{scope}.rb"), scope)?;
        let anc = self.g.add_node(
            Op::Anchors(Anchors { strides: strides.to_vec(), offset: 0.5 }),
            &feats,
            &[&format!("{scope}.anchors"), &format!("{scope}.strides")],
            scope,
        )?;
        let x1y1 = self.g.add1(Op::Binary(Binary::Sub), &[anc[0], lt], &format!("{scope}.x1y1"), scope)?;
        let x2y2 = self.g.add1(Op::Binary(Binary::Add), &[anc[0], rb], &format!("{scope}.x2y2"), scope)?;
        let sum = self.g.add1(Op::Binary(Binary::Add), &[x1y1, x2y2], &format!("{scope}.sum"), scope)?;
        let two = self.scalar(&format!("{scope}.two"), 2.0);
        let c_xy = self.g.add1(Op::Binary(Binary::Div), &[sum, two], &format!("{scope}.c_xy"), scope)?;
        let wh = self.g.add1(Op::Binary(Binary::Sub), &[x2y2, x1y1], &format!("{scope}.wh"), scope)?;
        let xywh = self.concat(&[c_xy, wh], &format!("{scope}.xywh"), scope)?;
        let dbox = self.g.add1(Op::Binary(Binary::Mul), &[xywh, anc[1]], &format!("{scope}.dbox"), scope)?;
        let cls = self.g.add1(Op::Unary(Unary::Sigmoid), &[parts[1]], &format!("{scope}.scores"), scope)?;
        Ok(self.concat(&[dbox, cls], "output0", scope)?)
    }
}

fn int_arg(args: &[Arg], i: usize, default: Option<i64>, at: &str) -> Result<i64> {
    match args.get(i) {
        Some(Arg::Int(v)) => Ok(*v),
        Some(Arg::None) | None => default.ok_or_else(|| anyhow!("{at}: argument {i} is required")),
        Some(a) => bail!("{at}: argument {i} must be an integer, found {a:?}"),
    }
}

/// An integer argument in `lo..=hi` (`what` names it in the error).
fn ranged_arg(args: &[Arg], i: usize, default: Option<i64>, lo: i64, hi: i64, what: &str, at: &str) -> Result<usize> {
    let v = int_arg(args, i, default, at)?;
    if v < lo || v > hi {
        bail!("{at}: {what} {v} is outside {lo}..={hi}");
    }
    Ok(v as usize)
}

fn bool_arg(args: &[Arg], i: usize, default: bool, at: &str) -> Result<bool> {
    match args.get(i) {
        Some(Arg::Bool(b)) => Ok(*b),
        None => Ok(default),
        Some(a) => bail!("{at}: argument {i} must be True or False, found {a:?}"),
    }
}

fn float_arg(args: &[Arg], i: usize, default: f64, at: &str) -> Result<f64> {
    match args.get(i) {
        Some(Arg::Float(v)) => Ok(*v),
        Some(Arg::Int(v)) => Ok(*v as f64),
        None => Ok(default),
        Some(a) => bail!("{at}: argument {i} must be a number, found {a:?}"),
    }
}

fn arg_count(args: &[Arg], lo: usize, hi: usize, module: &str, at: &str) -> Result<()> {
    if args.len() < lo || args.len() > hi {
        bail!("{at}: {module} takes {lo} to {hi} arguments, found {}", args.len());
    }
    Ok(())
}

/// Lowers a parsed model YAML to a model with freshly initialised weights, at image size
/// `imgsz` (h, w; the graph itself works at any multiple of the largest stride). `widths`
/// (weight name to shape, from a checkpoint) gives convs the widths their weights have.
pub fn lower(
    spec: &ModelSpec,
    imgsz: [usize; 2],
    seed: u64,
    widths: Option<&BTreeMap<String, Vec<usize>>>,
) -> Result<Model> {
    let name = spec.source.trim_end_matches(".yaml").to_string();
    let graph_name = if spec.scale.is_empty() || name.ends_with(&spec.scale) {
        name.clone()
    } else {
        format!("{name}{}", spec.scale)
    };
    // The text form's names take letters, digits and `_./-`; a file name may hold others.
    let graph_name: String =
        graph_name.chars().map(|c| if c.is_ascii_alphanumeric() || "_./-".contains(c) { c } else { '_' }).collect();
    let mut l = Lowering::new(&graph_name, seed, widths);
    let images = l.g.add_input(
        "images",
        TensorType {
            dtype: slimc_ir::DType::F32,
            shape: vec![Dim::Sym("N".into()), Dim::Fixed(3), Dim::Fixed(imgsz[0]), Dim::Fixed(imgsz[1])],
        },
    );
    let scale_c2 = |c2: usize| -> usize {
        if c2 != spec.nc {
            make_divisible(c2.min(spec.max_channels) as f64 * spec.width, 8)
        } else {
            c2
        }
    };
    let channels = |a: &[Arg], at: &str| -> Result<usize> {
        let c2 = scale_c2(ranged_arg(a, 0, None, 1, MAX_CHANNELS, "channels", at)?);
        if c2 == 0 || c2 > MAX_CHANNELS as usize {
            bail!("{at}: {c2} channels after width scaling is outside 1..={MAX_CHANNELS}");
        }
        Ok(c2)
    };
    let mlx = matches!(spec.scale.as_str(), "m" | "l" | "x");
    let mut outs: Vec<ValueId> = vec![];
    let mut output = None;
    let mut strides = vec![];
    for (i, layer) in spec.layers.iter().enumerate() {
        let at = format!("{}: layer {i} ({})", spec.source, layer.module);
        let scope = format!("model.{i}");
        let ins: Vec<ValueId> = layer.from.iter().map(|f| f.map(|k| outs[k]).unwrap_or(images)).collect();
        let x = ins[0];
        let a = &layer.args;
        let n = layer.repeats;
        let single = |m: &str| -> Result<()> {
            if ins.len() != 1 {
                bail!("{at}: {m} takes one input, `from` lists {}", ins.len());
            }
            Ok(())
        };
        let simple_repeat = |m: &str| -> Result<()> {
            if n != 1 {
                bail!("{at}: repeating {m} {n} times is not supported");
            }
            Ok(())
        };
        let y = (|| -> Result<ValueId> {
            Ok(match layer.module.as_str() {
                "Conv" => {
                    single("Conv")?;
                    simple_repeat("Conv")?;
                    arg_count(a, 1, 7, "Conv", &at)?;
                    let c2 = channels(a, &at)?;
                    let k = ranged_arg(a, 1, Some(1), 1, 31, "kernel", &at)?;
                    let s = ranged_arg(a, 2, Some(1), 1, 32, "stride", &at)?;
                    let p = match a.get(3) {
                        Some(Arg::Int(_)) => Some(ranged_arg(a, 3, None, 0, 31, "padding", &at)?),
                        _ => None,
                    };
                    let g = ranged_arg(a, 4, Some(1), 1, MAX_CHANNELS, "groups", &at)?;
                    if int_arg(a, 5, Some(1), &at)? != 1 {
                        bail!("{at}: dilated Conv is not supported");
                    }
                    let act = bool_arg(a, 6, true, &at)?;
                    l.conv(x, c2, k, s, p, g, act, &scope)?
                }
                "C3k2" => {
                    single("C3k2")?;
                    arg_count(a, 1, 5, "C3k2", &at)?;
                    let c2 = channels(a, &at)?;
                    let c3k = bool_arg(a, 1, false, &at)? || mlx;
                    let e = float_arg(a, 2, 0.5, &at)?;
                    if int_arg(a, 3, Some(1), &at)? != 1 {
                        bail!("{at}: grouped C3k2 is not supported");
                    }
                    let shortcut = bool_arg(a, 4, true, &at)?;
                    l.c3k2(x, c2, n, c3k, e, shortcut, &scope)?
                }
                "C3k" => {
                    single("C3k")?;
                    arg_count(a, 1, 5, "C3k", &at)?;
                    let c2 = channels(a, &at)?;
                    let shortcut = bool_arg(a, 1, true, &at)?;
                    if int_arg(a, 2, Some(1), &at)? != 1 {
                        bail!("{at}: grouped C3k is not supported");
                    }
                    let e = float_arg(a, 3, 0.5, &at)?;
                    let k = ranged_arg(a, 4, Some(3), 1, 31, "kernel", &at)?;
                    l.c3k(x, c2, n, shortcut, e, k, &scope)?
                }
                "SPPF" => {
                    single("SPPF")?;
                    simple_repeat("SPPF")?;
                    arg_count(a, 1, 2, "SPPF", &at)?;
                    let c2 = channels(a, &at)?;
                    let k = ranged_arg(a, 1, Some(5), 1, 31, "kernel", &at)?;
                    l.sppf(x, c2, k, &scope)?
                }
                "C2PSA" => {
                    single("C2PSA")?;
                    arg_count(a, 1, 2, "C2PSA", &at)?;
                    let c2 = channels(a, &at)?;
                    if float_arg(a, 1, 0.5, &at)? != 0.5 {
                        bail!("{at}: C2PSA supports only e=0.5");
                    }
                    l.c2psa(x, c2, n, &scope)?
                }
                "nn.Upsample" | "Upsample" => {
                    single("Upsample")?;
                    simple_repeat("Upsample")?;
                    arg_count(a, 2, 3, "nn.Upsample", &at)?;
                    let s = ranged_arg(a, 1, None, 1, 32, "scale factor", &at)?;
                    if !matches!(a.get(2), None | Some(Arg::Str(_)))
                        || matches!(a.get(2), Some(Arg::Str(m)) if m != "nearest")
                    {
                        bail!("{at}: only nearest upsampling is supported");
                    }
                    l.g.add1(Op::UpsampleNearest(Upsample { scale: [s, s] }), &[x], &scope, &scope)?
                }
                "Concat" => {
                    simple_repeat("Concat")?;
                    arg_count(a, 0, 1, "Concat", &at)?;
                    if int_arg(a, 0, Some(1), &at)? != 1 {
                        bail!("{at}: Concat is supported on the channel dimension (1) only");
                    }
                    l.concat(&ins, &scope, &scope)?
                }
                "Detect" => {
                    simple_repeat("Detect")?;
                    arg_count(a, 1, 1, "Detect", &at)?;
                    let nc = ranged_arg(a, 0, None, 1, super::yaml::MAX_CLASSES as i64, "nc", &at)?;
                    let h = imgsz[0] as f32;
                    strides = ins.iter().map(|&v| h / l.g.ty(v).shape[2].fixed().unwrap_or(1) as f32).collect();
                    let out = l.detect(&ins, nc, &strides, &scope)?;
                    output = Some(out);
                    out
                }
                other => bail!(
                "{at}: unknown module `{other}` (supported: Conv, C3k2, C3k, SPPF, C2PSA, nn.Upsample, Concat, Detect)"
            ),
            })
        })()
        // Errors from building the graph get the file and layer; the checks above name them already.
        .map_err(|e| if e.to_string().starts_with(&spec.source) { e } else { anyhow!("{at}: {e:#}") })?;
        outs.push(y);
    }
    let out = output.ok_or_else(|| anyhow!("{}: the model has no Detect layer", spec.source))?;
    l.g.outputs.push(out);
    // Canonical value order (inputs, parameters, results), as the text form parses back.
    l.g.compact();
    let names = (0..spec.nc).map(|i| format!("class{i}")).collect();
    let model = Model {
        graph: l.g,
        tensors: l.tensors,
        meta: Metadata {
            names,
            strides,
            imgsz,
            source: spec.source.clone(),
            scale: spec.scale.clone(),
            origin: Default::default(),
        },
        training_state: vec![],
    };
    model.check().map_err(|e| anyhow!("{}: internal error, lowered graph does not verify: {e}", spec.source))?;
    Ok(model)
}
