//! NumPy `.npy` arrays in and out (inputs and outputs of `slimc run` and `verify`).

use anyhow::{anyhow, bail, Context, Result};
use npyz::{DType, NpyFile, Order, WriterBuilder};
use slimc_ir::Tensor;
use std::path::Path;

/// Reads a C-ordered float32 or float64 `.npy` file as an f32 tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let what = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{what}: cannot read"))?;
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
