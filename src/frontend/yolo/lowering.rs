//! The [`Lowering`]: the graph under construction, the parameters it creates with PyTorch's
//! initialisation (or a checkpoint's widths), and the primitives every block is built from
//! (`nn.Conv2d`, Ultralytics' `Conv`, adds and concats). The blocks are in `blocks`, `area` and
//! `head`.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slimc_ir::{Axis, BatchNorm, Binary, Unary};
use slimc_ir::{Conv2d, Graph, Op, ParamKind, Tensor, TensorType, ValueId};
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
    /// Each weight's shape in the checkpoint whose widths the model takes.
    pub(super) widths: Option<&'w BTreeMap<String, Vec<usize>>>,
    /// Weight elements created so far, bounded by [`MAX_PARAMETERS`].
    total: usize,
    /// Conv weights start from a normal init of this standard deviation (truncated to ±2, as
    /// `nn.init.trunc_normal_`) instead of PyTorch's default uniform one while it is set.
    pub(super) init_std: Option<f32>,
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

    pub(super) fn channels(&self, v: ValueId) -> usize {
        self.g.ty(v).shape[1].fixed().expect("channel dims are static")
    }

    pub(super) fn param(&mut self, name: &str, shape: &[usize], kind: ParamKind, data: Vec<f32>) -> ValueId {
        self.tensors.insert(name.to_string(), Tensor::from_f32(shape.to_vec(), data).expect("sized by shape"));
        self.g.add_param(name, TensorType::f32(shape), kind)
    }

    pub(super) fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(-bound..bound)).collect()
    }

    /// `n` draws of a normal distribution with standard deviation `std`, redrawn outside ±2
    /// (Box-Muller).
    pub(super) fn truncated_normal(&mut self, n: usize, std: f32) -> Vec<f32> {
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
    pub(super) fn scalar(&mut self, name: &str, v: f32) -> ValueId {
        self.tensors.insert(name.to_string(), Tensor::scalar(v));
        self.g.add_param(name, TensorType { dtype: slimc_ir::DType::F32, shape: vec![] }, ParamKind::Const)
    }

    /// `nn.Conv2d(c1, c2, k, s, k//2, groups=g)` with PyTorch's default weight init; `bias`
    /// gives the bias values when the conv has one. Returns the conv result.
    pub(super) fn conv2d(
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

    pub(super) fn add(&mut self, a: ValueId, b: ValueId, name: &str, scope: &str) -> Result<ValueId> {
        Ok(self.g.add1(Op::Binary(Binary::Add), &[a, b], name, scope)?)
    }

    pub(super) fn concat(&mut self, xs: &[ValueId], name: &str, scope: &str) -> Result<ValueId> {
        Ok(self.g.add1(Op::Concat(Axis { axis: 1 }), xs, name, scope)?)
    }
}
