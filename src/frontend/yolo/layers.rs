//! One YAML layer to IR, module by module: [`lower_layer`] dispatches on the [`Module`] to a
//! function per module that reads the layer's arguments (Ultralytics' defaults and bounds) and
//! builds it with the [`Lowering`]'s blocks.

use super::area::A2C2fArgs;
use super::args::{arg_count, bool_arg, float_arg, int_arg, ranged_arg};
use super::lowering::{Lowering, MAX_CHANNELS};
use super::modules::Module;
use crate::frontend::yaml::{make_divisible, Arg, ModelSpec, MAX_CLASSES};
use anyhow::{bail, Result};
use slimc_ir::{Op, Upsample, ValueId};

/// A layer being lowered: where it is (for messages and names), what it reads and its
/// arguments.
pub(super) struct Layer<'a> {
    /// `file: layer i (module)`, the prefix of its messages.
    pub at: String,
    /// `model.i`, the prefix of its parameters' and results' names.
    pub scope: String,
    /// The values its `from` names.
    pub ins: Vec<ValueId>,
    /// Its arguments.
    pub args: &'a [Arg],
    /// Its repeats (`n`, after depth scaling).
    pub repeats: usize,
    /// The model it belongs to (scale, class count, width).
    pub spec: &'a ModelSpec,
    /// The image size the model is lowered at (h, w).
    pub imgsz: [usize; 2],
}

impl Layer<'_> {
    /// The layer's (first) input.
    fn x(&self) -> ValueId {
        self.ins[0]
    }

    /// Refuses a layer of module `m` that reads more than one input.
    fn single(&self, m: &str) -> Result<()> {
        if self.ins.len() != 1 {
            bail!("{}: {m} takes one input, `from` lists {}", self.at, self.ins.len());
        }
        Ok(())
    }

    /// Refuses a repeated layer of module `m`.
    fn simple_repeat(&self, m: &str) -> Result<()> {
        if self.repeats != 1 {
            bail!("{}: repeating {m} {} times is not supported", self.at, self.repeats);
        }
        Ok(())
    }

    /// The output channels of argument 0 of `a`, scaled by the model's width (but the class
    /// count's) and bounded before and after.
    fn channels(&self, a: &[Arg]) -> Result<usize> {
        let at = &self.at;
        let spec = self.spec;
        let c2 = ranged_arg(a, 0, None, 1, MAX_CHANNELS, "channels", at)?;
        let c2 = if c2 != spec.nc { make_divisible(c2.min(spec.max_channels) as f64 * spec.width, 8) } else { c2 };
        if c2 == 0 || c2 > MAX_CHANNELS as usize {
            bail!("{at}: {c2} channels after width scaling is outside 1..={MAX_CHANNELS}");
        }
        Ok(c2)
    }

    /// Whether the model's scale is m, l or x (where C3k2 always uses C3k blocks).
    fn mlx(&self) -> bool {
        matches!(self.spec.scale.as_str(), "m" | "l" | "x")
    }
}

/// What a lowered layer gives: its result, and for the Detect head the strides of its levels.
pub(super) struct Lowered {
    /// The layer's result.
    pub y: ValueId,
    /// The Detect head's level strides (in input pixels).
    pub strides: Option<Vec<f32>>,
}

/// Lowers layer `x` of module `m`; `legacy` picks the Detect head's legacy form.
pub(super) fn lower_layer(l: &mut Lowering, m: Module, x: &Layer, legacy: bool) -> Result<Lowered> {
    let y = match m {
        Module::Conv => conv(l, x)?,
        Module::C3k2 => c3k2(l, x)?,
        Module::C2f | Module::C3 | Module::C2 => csp(l, m, x)?,
        Module::A2C2f => a2c2f(l, x)?,
        Module::C3k => c3k(l, x)?,
        Module::Sppf => sppf(l, x)?,
        Module::C2psa => c2psa(l, x)?,
        Module::Upsample => upsample(l, x)?,
        Module::Concat => concat(l, x)?,
        Module::Detect => return detect(l, x, legacy),
    };
    Ok(Lowered { y, strides: None })
}

fn conv(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("Conv")?;
    x.simple_repeat("Conv")?;
    arg_count(a, 1, 7, "Conv", at)?;
    let c2 = x.channels(a)?;
    let k = ranged_arg(a, 1, Some(1), 1, 31, "kernel", at)?;
    let s = ranged_arg(a, 2, Some(1), 1, 32, "stride", at)?;
    let p = match a.get(3) {
        Some(Arg::Int(_)) => Some(ranged_arg(a, 3, None, 0, 31, "padding", at)?),
        _ => None,
    };
    let g = ranged_arg(a, 4, Some(1), 1, MAX_CHANNELS, "groups", at)?;
    if int_arg(a, 5, Some(1), at)? != 1 {
        bail!("{at}: dilated Conv is not supported");
    }
    let act = bool_arg(a, 6, true, at)?;
    l.conv(x.x(), c2, k, s, p, g, act, &x.scope)
}

fn c3k2(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("C3k2")?;
    arg_count(a, 1, 5, "C3k2", at)?;
    let c2 = x.channels(a)?;
    let c3k = bool_arg(a, 1, false, at)? || x.mlx();
    let e = float_arg(a, 2, 0.5, at)?;
    if int_arg(a, 3, Some(1), at)? != 1 {
        bail!("{at}: grouped C3k2 is not supported");
    }
    let shortcut = bool_arg(a, 4, true, at)?;
    l.c3k2(x.x(), c2, x.repeats, c3k, e, shortcut, &x.scope)
}

/// `C2f`, `C3` and `C2`, which take the same arguments.
fn csp(l: &mut Lowering, m: Module, x: &Layer) -> Result<ValueId> {
    let (a, at, name) = (x.args, x.at.as_str(), m.name());
    x.single(name)?;
    arg_count(a, 1, 4, name, at)?;
    let c2 = x.channels(a)?;
    let shortcut = bool_arg(a, 1, m != Module::C2f, at)?;
    if int_arg(a, 2, Some(1), at)? != 1 {
        bail!("{at}: grouped {name} is not supported");
    }
    let e = float_arg(a, 3, 0.5, at)?;
    let (n, scope) = (x.repeats, &x.scope);
    match m {
        Module::C2f => l.c2f(x.x(), c2, n, shortcut, e, scope),
        Module::C3 => l.c3(x.x(), c2, n, shortcut, e, [1, 3], scope),
        _ => l.c2(x.x(), c2, n, shortcut, e, scope),
    }
}

fn a2c2f(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let at = x.at.as_str();
    x.single("A2C2f")?;
    arg_count(x.args, 1, 8, "A2C2f", at)?;
    let c2 = x.channels(x.args)?;
    // Ultralytics appends `residual=True, mlp_ratio=1.2` for scales l and x.
    let mut a = x.args.to_vec();
    if matches!(x.spec.scale.as_str(), "l" | "x") {
        a.extend([Arg::Bool(true), Arg::Float(1.2)]);
        arg_count(&a, 1, 8, "A2C2f", at)?;
    }
    if int_arg(&a, 6, Some(1), at)? != 1 {
        bail!("{at}: grouped A2C2f is not supported");
    }
    // Ultralytics splits the sequence only for area > 1 (the neck passes -1).
    let area = int_arg(&a, 2, Some(1), at)?;
    if !(-1..=64).contains(&area) {
        bail!("{at}: area {area} is outside -1..=64");
    }
    let area = area.max(1) as usize;
    let args = A2C2fArgs {
        a2: bool_arg(&a, 1, true, at)?,
        area,
        residual: bool_arg(&a, 3, false, at)?,
        mlp_ratio: float_arg(&a, 4, 2.0, at)?,
        e: float_arg(&a, 5, 0.5, at)?,
        shortcut: bool_arg(&a, 7, true, at)?,
    };
    if !(args.mlp_ratio > 0.0 && args.mlp_ratio <= 16.0 && args.e > 0.0 && args.e <= 16.0) {
        bail!("{at}: mlp_ratio {} or e {} is outside (0, 16]", args.mlp_ratio, args.e);
    }
    l.a2c2f(x.x(), c2, x.repeats, &args, &x.scope)
}

fn c3k(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("C3k")?;
    arg_count(a, 1, 5, "C3k", at)?;
    let c2 = x.channels(a)?;
    let shortcut = bool_arg(a, 1, true, at)?;
    if int_arg(a, 2, Some(1), at)? != 1 {
        bail!("{at}: grouped C3k is not supported");
    }
    let e = float_arg(a, 3, 0.5, at)?;
    let k = ranged_arg(a, 4, Some(3), 1, 31, "kernel", at)?;
    l.c3(x.x(), c2, x.repeats, shortcut, e, [k, k], &x.scope)
}

fn sppf(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("SPPF")?;
    x.simple_repeat("SPPF")?;
    arg_count(a, 1, 2, "SPPF", at)?;
    let c2 = x.channels(a)?;
    let k = ranged_arg(a, 1, Some(5), 1, 31, "kernel", at)?;
    l.sppf(x.x(), c2, k, &x.scope)
}

fn c2psa(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("C2PSA")?;
    arg_count(a, 1, 2, "C2PSA", at)?;
    let c2 = x.channels(a)?;
    if float_arg(a, 1, 0.5, at)? != 0.5 {
        bail!("{at}: C2PSA supports only e=0.5");
    }
    l.c2psa(x.x(), c2, x.repeats, &x.scope)
}

fn upsample(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.single("Upsample")?;
    x.simple_repeat("Upsample")?;
    arg_count(a, 2, 3, "nn.Upsample", at)?;
    let s = ranged_arg(a, 1, None, 1, 32, "scale factor", at)?;
    if !matches!(a.get(2), None | Some(Arg::Str(_))) || matches!(a.get(2), Some(Arg::Str(m)) if m != "nearest") {
        bail!("{at}: only nearest upsampling is supported");
    }
    Ok(l.g.add1(Op::UpsampleNearest(Upsample { scale: [s, s] }), &[x.x()], &x.scope, &x.scope)?)
}

fn concat(l: &mut Lowering, x: &Layer) -> Result<ValueId> {
    let (a, at) = (x.args, x.at.as_str());
    x.simple_repeat("Concat")?;
    arg_count(a, 0, 1, "Concat", at)?;
    if int_arg(a, 0, Some(1), at)? != 1 {
        bail!("{at}: Concat is supported on the channel dimension (1) only");
    }
    l.concat(&x.ins, &x.scope, &x.scope)
}

fn detect(l: &mut Lowering, x: &Layer, legacy: bool) -> Result<Lowered> {
    let (a, at) = (x.args, x.at.as_str());
    x.simple_repeat("Detect")?;
    arg_count(a, 1, 1, "Detect", at)?;
    let nc = ranged_arg(a, 0, None, 1, MAX_CLASSES as i64, "nc", at)?;
    let h = x.imgsz[0] as f32;
    let strides: Vec<f32> = x.ins.iter().map(|&v| h / l.g.ty(v).shape[2].fixed().unwrap_or(1) as f32).collect();
    let y = l.detect(&x.ins, nc, &strides, legacy, &x.scope)?;
    Ok(Lowered { y, strides: Some(strides) })
}

/// A layer's stride given its input's (`from`): a strided Conv multiplies it, upsampling
/// divides it, every other module keeps its input's resolution (the blocks' own strided convs
/// are Conv layers of their own). An unknown module keeps it too (lowering refuses it).
pub(super) fn stride_after(m: Option<Module>, args: &[Arg], from: usize) -> usize {
    match m {
        Some(Module::Conv) => match args.get(2) {
            Some(Arg::Int(s)) if *s > 0 => from.saturating_mul(*s as usize),
            _ => from,
        },
        Some(Module::Upsample) => match args.get(1) {
            Some(Arg::Int(f)) if *f > 0 => (from / *f as usize).max(1),
            _ => from,
        },
        Some(Module::C2f | Module::C3 | Module::C2 | Module::C3k2 | Module::C3k | Module::Sppf) => from,
        Some(Module::C2psa | Module::A2C2f | Module::Concat | Module::Detect) | None => from,
    }
}
