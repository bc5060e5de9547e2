//! A YAML layer's positional arguments, read with Ultralytics' defaults and bounds: every
//! message names the layer (`at`) and the argument's position.

use crate::frontend::yaml::Arg;
use anyhow::{anyhow, bail, Result};

/// Argument `i` as an integer (`default` when absent or `None`).
pub(super) fn int_arg(args: &[Arg], i: usize, default: Option<i64>, at: &str) -> Result<i64> {
    match args.get(i) {
        Some(Arg::Int(v)) => Ok(*v),
        Some(Arg::None) | None => default.ok_or_else(|| anyhow!("{at}: argument {i} is required")),
        Some(a) => bail!("{at}: argument {i} must be an integer, found {a:?}"),
    }
}

/// An integer argument in `lo..=hi` (`what` names it in the error).
pub(super) fn ranged_arg(
    args: &[Arg],
    i: usize,
    default: Option<i64>,
    lo: i64,
    hi: i64,
    what: &str,
    at: &str,
) -> Result<usize> {
    let v = int_arg(args, i, default, at)?;
    if v < lo || v > hi {
        bail!("{at}: {what} {v} is outside {lo}..={hi}");
    }
    Ok(v as usize)
}

/// Argument `i` as a boolean (`default` when absent).
pub(super) fn bool_arg(args: &[Arg], i: usize, default: bool, at: &str) -> Result<bool> {
    match args.get(i) {
        Some(Arg::Bool(b)) => Ok(*b),
        None => Ok(default),
        Some(a) => bail!("{at}: argument {i} must be True or False, found {a:?}"),
    }
}

/// Argument `i` as a number (`default` when absent).
pub(super) fn float_arg(args: &[Arg], i: usize, default: f64, at: &str) -> Result<f64> {
    match args.get(i) {
        Some(Arg::Float(v)) => Ok(*v),
        Some(Arg::Int(v)) => Ok(*v as f64),
        None => Ok(default),
        Some(a) => bail!("{at}: argument {i} must be a number, found {a:?}"),
    }
}

/// Refuses fewer than `lo` or more than `hi` arguments to `module`.
pub(super) fn arg_count(args: &[Arg], lo: usize, hi: usize, module: &str, at: &str) -> Result<()> {
    if args.len() < lo || args.len() > hi {
        bail!("{at}: {module} takes {lo} to {hi} arguments, found {}", args.len());
    }
    Ok(())
}
