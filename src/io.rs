//! Reading untrusted files: text files of bounded size, YAML without alias expansion, and NumPy
//! `.npy` arrays (inputs and outputs of `slimc run` and `verify`) whose header is checked
//! against the file's length before anything is allocated.

use anyhow::{anyhow, bail, Context, Result};
use npyz::{DType, NpyFile, Order, WriterBuilder};
use slimc_ir::{checked_numel, Tensor};
use std::path::Path;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;
use yaml_rust2::{Yaml, YamlLoader};

/// The largest YAML or label text file slimc reads (64 MiB).
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// Reads a UTF-8 text file of at most [`MAX_TEXT_BYTES`]; errors name the file.
pub fn read_text(path: &Path) -> Result<String> {
    let what = path.display();
    let meta = std::fs::metadata(path).with_context(|| format!("{what}: cannot read"))?;
    if meta.is_dir() {
        bail!("{what}: is a directory, not a file");
    }
    if meta.len() > MAX_TEXT_BYTES {
        bail!("{what}: {} bytes is more than the {} MiB a text file may hold", meta.len(), MAX_TEXT_BYTES >> 20);
    }
    let bytes = std::fs::read(path).with_context(|| format!("{what}: cannot read"))?;
    String::from_utf8(bytes).map_err(|e| anyhow!("{what}: not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// Finds the first alias of a YAML event stream.
#[derive(Default)]
struct FirstAlias(Option<Marker>);

impl MarkedEventReceiver for FirstAlias {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if matches!(ev, Event::Alias(_)) && self.0.is_none() {
            self.0 = Some(mark);
        }
    }
}

/// Parses YAML text; `source` names it in errors. Aliases (`*name`) are refused: the loader
/// copies the anchored node for every alias, so a few lines of nested aliases expand to
/// gigabytes, and no Ultralytics model or dataset file uses them.
pub fn parse_yaml(text: &str, source: &str) -> Result<Vec<Yaml>> {
    let mut first = FirstAlias::default();
    Parser::new_from_str(text).load(&mut first, true).map_err(|e| anyhow!("{source}: invalid YAML: {e}"))?;
    if let Some(m) = first.0 {
        bail!("{source}: line {}: YAML aliases (*name) are not supported", m.line());
    }
    YamlLoader::load_from_str(text).map_err(|e| anyhow!("{source}: invalid YAML: {e}"))
}

/// Checks an `.npy` header against the file: the header fits, and the data holds the elements
/// the shape declares (`itemsize` bytes each).
fn check_npy_header(bytes: &[u8], what: &str) -> Result<()> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{what}: not a .npy file (bad magic)");
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => bail!("{what}: .npy version {v} is not supported"),
    };
    let end = start.checked_add(len).filter(|&e| e <= bytes.len());
    let Some(end) = end else { bail!("{what}: the header declares {len} bytes, the file has {}", bytes.len()) };
    let header = String::from_utf8_lossy(&bytes[start..end]);
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| anyhow!("{what}: the header has no shape"))?;
    let dims: Vec<usize> = shape_text
        .trim_start_matches([' ', '('])
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| anyhow!("{what}: bad dimension `{d}` in the shape")))
        .collect::<Result<_>>()?;
    let itemsize = if header.contains("'<f8'") { 8 } else { 4 };
    let need = checked_numel(&dims).and_then(|n| n.checked_mul(itemsize));
    match need {
        Some(n) if n <= bytes.len() - end => Ok(()),
        Some(n) => {
            bail!("{what}: truncated data: the shape {dims:?} needs {n} bytes, the file has {}", bytes.len() - end)
        }
        None => bail!("{what}: the shape {dims:?} is too large"),
    }
}

/// Reads a C-ordered float32 or float64 `.npy` file as an f32 tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let what = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{what}: cannot read"))?;
    check_npy_header(&bytes, &what.to_string())?;
    let npy = NpyFile::new(&bytes[..]).map_err(|e| anyhow!("{what}: not a valid .npy file: {e}"))?;
    if npy.order() != Order::C {
        bail!("{what}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        DType::Plain(t) => t.to_string(),
        other => bail!("{what}: unsupported dtype {other:?}"),
    };
    let data: Vec<f32> = match descr.as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(|e| anyhow!("{what}: truncated data: {e}"))?,
        "<f8" => npy
            .into_vec::<f64>()
            .map_err(|e| anyhow!("{what}: truncated data: {e}"))?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        d => bail!("{what}: dtype {d} is not supported (use float32)"),
    };
    Tensor::from_f32(shape, data).map_err(|e| anyhow!("{what}: {e}"))
}

/// Writes an f32 tensor as a `.npy` file (atomically).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let mut buf = vec![];
    {
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut buf).begin_nd()?;
        w.extend(t.f32s()?.iter().copied())?;
        w.finish()?;
    }
    slimc_ir::write_atomic(path, &buf)?;
    Ok(())
}
