//! Turning any model argument (`.slim`, Ultralytics `.yaml` or `.pt`, `.onnx`) into a [`Model`].

use crate::frontend::checkpoint::{load_checkpoint, read_state_dict};
use crate::frontend::weights::{assign_weights, read_safetensors};
use crate::frontend::{onnx::import_onnx, yaml, yolo};
use anyhow::{bail, Result};
use slimc_ir::Model;
use std::path::Path;

/// Options that apply when a model is built rather than read from a `.slim` file.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Number of classes: overrides a YAML's `nc`; for a checkpoint of another class count,
    /// the model is rebuilt for `nc` classes and the tensors that fit are transferred.
    pub nc: Option<usize>,
    /// Weights to load into a YAML-built model (safetensors, or a `.pt` state dict).
    pub weights: Option<std::path::PathBuf>,
    /// Image size (h, w): the reference size of a YAML model, or the size that fixes an ONNX
    /// file's symbolic input.
    pub imgsz: Option<[usize; 2]>,
    /// Seed of the weight initialisation.
    pub seed: u64,
}

/// The kinds of model argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// slimc's own model file.
    Slim,
    /// An Ultralytics model YAML.
    Yaml,
    /// An ONNX file.
    Onnx,
    /// An Ultralytics checkpoint (`torch.save` zip archive).
    Pt,
}

/// The format a model argument names, from its extension.
pub fn format_of(path: &str) -> Result<ModelFormat> {
    let ext = Path::new(path).extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    Ok(match ext.as_str() {
        "slim" => ModelFormat::Slim,
        "yaml" | "yml" => ModelFormat::Yaml,
        "onnx" => ModelFormat::Onnx,
        "pt" | "pth" => ModelFormat::Pt,
        _ => bail!("{path}: unknown model format (expected .slim, .yaml, .pt or .onnx)"),
    })
}

/// Loads or builds a model from a `.slim`, `.yaml`, `.pt` or `.onnx` argument.
pub fn load_model(path: &str, opts: &LoadOptions) -> Result<Model> {
    let format = format_of(path)?;
    if opts.weights.is_some() && format != ModelFormat::Yaml {
        bail!("{path}: --weights applies to YAML models only");
    }
    if opts.nc.is_some() && !matches!(format, ModelFormat::Yaml | ModelFormat::Pt) {
        bail!("{path}: --nc applies to YAML models and checkpoints only");
    }
    match format {
        ModelFormat::Slim => Ok(Model::load(Path::new(path))?),
        ModelFormat::Onnx => import_onnx(Path::new(path), opts.imgsz),
        ModelFormat::Pt => load_checkpoint(Path::new(path), opts.nc, opts.imgsz, opts.seed),
        ModelFormat::Yaml => {
            let spec = yaml::load_spec(path, opts.nc)?;
            let mut model = yolo::lower(&spec, opts.imgsz.unwrap_or([640, 640]), opts.seed, None)?;
            if let Some(w) = &opts.weights {
                load_weights(&mut model, w)?;
            }
            Ok(model)
        }
    }
}

/// Replaces the model's weights, frozen parameters and buffers by the tensors of a safetensors
/// file or a `.pt` file (a bare state dict, or a checkpoint's model). Every parameter must be
/// present with its shape and every tensor in the file must be used (`num_batches_tracked`
/// aside); otherwise the error lists each missing, extra and mis-shaped name.
pub fn load_weights(model: &mut Model, path: &Path) -> Result<()> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let file = match ext.as_str() {
        "pt" | "pth" => read_state_dict(path)?,
        _ => read_safetensors(path)?,
    };
    assign_weights(model, file, &path.display().to_string())
}

/// Refuses a model with a NaN or infinite weight, naming the first such tensor; `what` names
/// the model in the error.
pub fn check_finite(model: &Model, what: &str) -> Result<()> {
    for (name, t) in &model.tensors {
        if let Ok(v) = t.f32s() {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{what}: tensor {name} holds {} at element {i}; pass --allow-nonfinite to use the model anyway",
                    v[i]
                );
            }
        }
    }
    Ok(())
}
