//! Lowering of Ultralytics YOLO detectors (YOLO11, YOLOv8 with its P2 and P6 variants,
//! YOLOv5u, YOLO12) to IR, with PyTorch-default initialisation.
//!
//! [`lower`] walks the model YAML's layers and `layers` lowers each by its [`Module`] (the list
//! the `.pt` writer shares). The `Lowering`'s methods (`lowering`, `blocks`, `area`, `head`)
//! build the Ultralytics modules
//! (Conv, Bottleneck, C2f, C3, C2, C3k, C3k2, SPPF, C2PSA, PSABlock, Attention, A2C2f with area
//! attention, Detect in its current and legacy forms) from primitive ops, naming parameters
//! exactly as the Ultralytics state dict does (`model.2.m.0.cv1.conv.weight`) and results after
//! the module path, so the IR reads like the PyTorch model.

mod area;
mod args;
mod blocks;
mod head;
mod layers;
mod lowering;
pub mod modules;

use crate::frontend::yaml::ModelSpec;
use anyhow::{anyhow, bail, Result};
use layers::{Layer, Lowered};
use lowering::Lowering;
use modules::Module;
use slimc_ir::{Dim, Metadata, Model, TensorType, ValueId};
use std::collections::BTreeMap;

/// The largest stride of the model's layers (32 for P3-P5 detectors, 64 with a P6 level): each
/// layer's stride from its inputs' ([`layers::stride_after`]).
fn max_stride(spec: &ModelSpec) -> usize {
    let mut strides: Vec<usize> = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let from = layer.from.iter().map(|f| f.map_or(1, |k| strides[k])).max().unwrap_or(1);
        let s = layers::stride_after(Module::parse(&layer.module), &layer.args, from);
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
    // Ultralytics' `legacy` Detect head (the v3/v5/v8/v9 class branch) unless a C3k2 or A2C2f
    // comes before it.
    let mut legacy = true;
    let mut outs: Vec<ValueId> = vec![];
    let mut output = None;
    let mut strides = vec![];
    for (i, layer) in spec.layers.iter().enumerate() {
        let module = Module::parse(&layer.module);
        let x = Layer {
            at: format!("{}: layer {i} ({})", spec.source, layer.module),
            scope: format!("model.{i}"),
            ins: layer.from.iter().map(|f| f.map(|k| outs[k]).unwrap_or(images)).collect(),
            args: &layer.args,
            repeats: layer.repeats,
            spec,
            imgsz,
        };
        legacy &= !module.is_some_and(Module::has_current_head);
        let lowered = (|| -> Result<Lowered> {
            let Some(m) = module else {
                let supported: Vec<&str> = Module::ALL.iter().map(|m| m.name()).collect();
                bail!("{}: unknown module `{}` (supported: {})", x.at, layer.module, supported.join(", "));
            };
            layers::lower_layer(&mut l, m, &x, legacy)
        })()
        // Errors from building the graph get the file and layer; the checks name them already.
        .map_err(|e| if e.to_string().starts_with(&spec.source) { e } else { anyhow!("{}: {e:#}", x.at) })?;
        if let Some(s) = lowered.strides {
            strides = s;
            output = Some(lowered.y);
        }
        outs.push(lowered.y);
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
