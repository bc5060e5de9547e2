//! Lowering of Ultralytics YOLO11 modules to IR, with PyTorch-default initialisation.
//!
//! Each method builds one Ultralytics module (Conv, Bottleneck, C3k, C3k2, SPPF, C2PSA,
//! PSABlock, Attention, Detect) from primitive ops, naming parameters exactly as the
//! Ultralytics state dict does (`model.2.m.0.cv1.conv.weight`) and results after the module
//! path, so the IR reads like the PyTorch model.

mod area;
mod blocks;
mod head;

use crate::frontend::yaml::{make_divisible, Arg, ModelSpec};
use anyhow::{anyhow, bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slimc_ir::{Axis, BatchNorm, Binary, Unary, Upsample};
use slimc_ir::{Conv2d, Dim, Graph, Metadata, Model, Op, ParamKind, Tensor, TensorType, ValueId};
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
    /// Conv weights start from a normal init of this standard deviation (truncated to ±2, as
    /// `nn.init.trunc_normal_`) instead of PyTorch's default uniform one while it is set.
    init_std: Option<f32>,
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
            init_std: None,
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

    /// `n` draws of a normal distribution with standard deviation `std`, redrawn outside ±2
    /// (Box-Muller).
    fn truncated_normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let u1: f64 = 1.0 - self.rng.random::<f64>();
            let u2: f64 = self.rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std as f64;
            if z.abs() <= 2.0 {
                out.push(z as f32);
            }
        }
        out
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
        let (c2, g) = match self.widths.and_then(|w| w.get(&wname)) {
            // A depthwise conv stays depthwise at a pruned width.
            Some(s) if s.len() == 4 && g > 1 && s[1] == 1 && s[0] == c1 && s[2] == k && s[3] == k => (c1, c1),
            Some(s) if s.len() == 4 && s[0] > 0 && s[2] == k && s[3] == k && s[1].checked_mul(g) == Some(c1) => {
                (s[0], g)
            }
            Some(s) => bail!(
                "{scope}: weight {wname} has shape {s:?}, but this {k}x{k} conv (groups {g}) receives {c1} channels"
            ),
            None => (c2, g),
        };
        if c2 == 0 {
            bail!("{scope}: the layer's arguments leave this conv no output channels");
        }
        if g == 0 || c1 % g != 0 || c2 % g != 0 {
            bail!("{scope}: {c1} -> {c2} channels cannot use {g} groups");
        }
        let fan_in = c1 / g * k * k;
        let n = c2.checked_mul(fan_in).and_then(|n| n.checked_add(self.total)).filter(|&t| t <= MAX_PARAMETERS);
        let Some(total) = n else {
            bail!("{scope}: the model would have more than {MAX_PARAMETERS} parameters");
        };
        self.total = total;
        let w = match self.init_std {
            Some(std) => self.truncated_normal(c2 * fan_in, std),
            None => self.uniform(c2 * fan_in, 1.0 / (fan_in as f32).sqrt()),
        };
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

/// The largest stride of the model's layers (32 for P3-P5 detectors, 64 with a P6 level): each
/// layer's stride from its inputs, strided convs multiplying it and upsampling dividing it.
fn max_stride(spec: &ModelSpec) -> usize {
    let mut strides: Vec<usize> = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let from = layer.from.iter().map(|f| f.map_or(1, |k| strides[k])).max().unwrap_or(1);
        let s = match (layer.module.as_str(), layer.args.get(1), layer.args.get(2)) {
            ("Conv", _, Some(Arg::Int(s))) if *s > 0 => from.saturating_mul(*s as usize),
            ("nn.Upsample" | "Upsample", Some(Arg::Int(f)), _) if *f > 0 => (from / *f as usize).max(1),
            _ => from,
        };
        strides.push(s.min(1 << 16));
    }
    strides.into_iter().max().unwrap_or(1)
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
    let graph_name =
        if spec.scale.is_empty() || name.ends_with(&spec.scale) || super::yaml::guess_scale(&spec.source).is_some() {
            name.clone()
        } else {
            format!("{name}{}", spec.scale)
        };
    // The text form's names take letters, digits and `_./-`; a file name may hold others.
    let graph_name: String =
        graph_name.chars().map(|c| if c.is_ascii_alphanumeric() || "_./-".contains(c) { c } else { '_' }).collect();
    let stride = max_stride(spec);
    if imgsz.iter().any(|&s| s == 0 || s % stride != 0) {
        let (lo, hi) = (imgsz[0] / stride * stride, imgsz[0].div_ceil(stride) * stride);
        bail!(
            "{}: image size {}x{} is not a multiple of the model's largest stride {stride} (e.g. {})",
            spec.source,
            imgsz[0],
            imgsz[1],
            if lo > 0 { format!("{lo} or {hi}") } else { hi.to_string() }
        );
    }
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
    // Ultralytics' `legacy` Detect head (the v3/v5/v8/v9 class branch) unless a C3k2 or A2C2f
    // comes before it.
    let mut legacy = true;
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
        legacy &= !matches!(layer.module.as_str(), "C3k2" | "A2C2f");
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
                "C2f" | "C3" | "C2" => {
                    let m = layer.module.as_str();
                    single(m)?;
                    arg_count(a, 1, 4, m, &at)?;
                    let c2 = channels(a, &at)?;
                    let shortcut = bool_arg(a, 1, m != "C2f", &at)?;
                    if int_arg(a, 2, Some(1), &at)? != 1 {
                        bail!("{at}: grouped {m} is not supported");
                    }
                    let e = float_arg(a, 3, 0.5, &at)?;
                    match m {
                        "C2f" => l.c2f(x, c2, n, shortcut, e, &scope)?,
                        "C3" => l.c3(x, c2, n, shortcut, e, [1, 3], &scope)?,
                        _ => l.c2(x, c2, n, shortcut, e, &scope)?,
                    }
                }
                "A2C2f" => {
                    single("A2C2f")?;
                    arg_count(a, 1, 8, "A2C2f", &at)?;
                    let c2 = channels(a, &at)?;
                    // Ultralytics appends `residual=True, mlp_ratio=1.2` for scales l and x.
                    let mut a = a.clone();
                    if matches!(spec.scale.as_str(), "l" | "x") {
                        a.extend([Arg::Bool(true), Arg::Float(1.2)]);
                        arg_count(&a, 1, 8, "A2C2f", &at)?;
                    }
                    if int_arg(&a, 6, Some(1), &at)? != 1 {
                        bail!("{at}: grouped A2C2f is not supported");
                    }
                    // Ultralytics splits the sequence only for area > 1 (the neck passes -1).
                    let area = int_arg(&a, 2, Some(1), &at)?;
                    if !(-1..=64).contains(&area) {
                        bail!("{at}: area {area} is outside -1..=64");
                    }
                    let area = area.max(1) as usize;
                    let args = A2C2fArgs {
                        a2: bool_arg(&a, 1, true, &at)?,
                        area,
                        residual: bool_arg(&a, 3, false, &at)?,
                        mlp_ratio: float_arg(&a, 4, 2.0, &at)?,
                        e: float_arg(&a, 5, 0.5, &at)?,
                        shortcut: bool_arg(&a, 7, true, &at)?,
                    };
                    if !(args.mlp_ratio > 0.0 && args.mlp_ratio <= 16.0 && args.e > 0.0 && args.e <= 16.0) {
                        bail!("{at}: mlp_ratio {} or e {} is outside (0, 16]", args.mlp_ratio, args.e);
                    }
                    l.a2c2f(x, c2, n, &args, &scope)?
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
                    l.c3(x, c2, n, shortcut, e, [k, k], &scope)?
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
                    let out = l.detect(&ins, nc, &strides, legacy, &scope)?;
                    output = Some(out);
                    out
                }
                other => bail!(
                    "{at}: unknown module `{other}` (supported: Conv, C2f, C3, C2, C3k2, C3k, SPPF, C2PSA, A2C2f, \
                     nn.Upsample, Concat, Detect)"
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
            architecture: spec.yaml.clone(),
        },
        training_state: vec![],
    };
    model.check().map_err(|e| anyhow!("{}: internal error, lowered graph does not verify: {e}", spec.source))?;
    Ok(model)
}
