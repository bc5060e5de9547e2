//! Loading named weights (safetensors, or a PyTorch `.pt` state dict) into a model built from a
//! YAML.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use slimc_ir::{Model, ParamKind, Tensor, ValueDef};
use std::path::Path;

/// Reads every tensor of a safetensors file as f32 (f64 is narrowed).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut out = vec![];
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F64 => {
                view.data().chunks_exact(8).map(|c| f64::from_le_bytes(std::array::from_fn(|i| c[i])) as f32).collect()
            }
            Dtype::I64 if name.ends_with("num_batches_tracked") => continue,
            d => bail!("{}: tensor {name} has element type {d:?}; slimc reads F32 and F64", path.display()),
        };
        let t = Tensor::from_f32(shape, data).map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes f32 tensors as a safetensors file (atomically).
pub fn write_safetensors<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Result<()> {
    let arrays =
        tensors.into_iter().map(|(n, t)| Ok((n.clone(), t.shape.clone(), t.f32s()?))).collect::<Result<Vec<_>>>()?;
    slimc_ir::write_atomic(path, &safetensors_bytes(arrays, None)?)?;
    Ok(())
}

/// The safetensors encoding of named f32 arrays `(name, shape, elements)`, with `meta` in its
/// header; the arrays' memory is viewed as bytes, copied once, into the encoding.
pub fn safetensors_bytes<'a>(
    arrays: impl IntoIterator<Item = (String, Vec<usize>, &'a [f32])>,
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let arrays: Vec<_> = arrays.into_iter().map(|(n, shape, v)| (n, shape, slimc_ir::le_bytes(v))).collect();
    let views = arrays
        .iter()
        .map(|(n, shape, data)| Ok((n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, meta)?)
}

/// Replaces the model's weights, frozen parameters and buffers by `file`'s tensors, which must
/// match them one to one in name and shape; `what` names the source in errors.
pub fn assign_weights(model: &mut Model, file: Vec<(String, Tensor)>, what: &str) -> Result<()> {
    let g = &model.graph;
    let wanted: Vec<(String, Vec<usize>)> = g
        .params
        .iter()
        .map(|&p| g.value(p))
        .filter(|v| matches!(v.def, ValueDef::Param(ParamKind::Weight | ParamKind::Frozen | ParamKind::Buffer)))
        .map(|v| (v.name.clone(), v.ty.fixed_shape().unwrap_or_default()))
        .collect();
    let mut problems = vec![];
    for (name, shape) in &wanted {
        match file.iter().find(|(n, _)| n == name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some((_, t)) if &t.shape != shape => {
                problems.push(format!("{name} has shape {:?}, the model needs {shape:?}", t.shape))
            }
            Some(_) => {}
        }
    }
    for (name, t) in &file {
        if !wanted.iter().any(|(n, _)| n == name) {
            problems.push(format!("unexpected {name} {:?}", t.shape));
        }
    }
    if !problems.is_empty() {
        bail!("{what}: {} weight mismatch(es): {}", problems.len(), problems.join("; "));
    }
    for (name, t) in file {
        model.tensors.insert(name, t);
    }
    Ok(())
}
