//! Ultralytics checkpoints out: a model as the `.pt` file Ultralytics 8.3.253 saves after
//! training (`strip_optimizer`), so `YOLO("x.pt")` loads it, fine-tunes it and exports it.
//!
//! The pickle holds a `DetectionModel` whose `model` is a `Sequential` of Ultralytics modules
//! (`Conv`, `DWConv`, `C3k2`, `C3k`, `C2f`, `C3`, `C2`, `Bottleneck`, `SPPF`, `C2PSA`, `PSABlock`,
//! `Attention`, `A2C2f`, `ABlock`, `AAttn`, `Concat`, `Detect` in its current and legacy forms,
//! `DFL`) over `torch.nn` ones, each with the attributes PyTorch and Ultralytics read.
//! The module tree follows the model's YAML ([`slimc_ir::Metadata::architecture`]); every width
//! comes from the tensors, so a pruned model's modules carry their narrowed channels. Tensors
//! are fp16 (as Ultralytics saves them) or fp32, one storage each, in the zip layout
//! `torch.load` reads.

use crate::frontend::pickle::write::{dumps, Py};
use crate::frontend::pickle::StorageDtype;
use crate::frontend::yaml::{self, Arg, LayerSpec};
use crate::frontend::yolo::modules::{Module, CONV_PY};
use anyhow::{anyhow, bail, Context, Result};
use slimc_ir::{Model, Op, ParamKind, Tensor, TensorData, ValueDef};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use yaml_rust2::Yaml;

mod blocks;

/// How the checkpoint is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct PtOptions {
    /// fp32 tensors instead of Ultralytics' fp16.
    pub fp32: bool,
}

/// The checkpoint's bytes (a zip archive).
pub fn write_pt(model: &Model, opts: PtOptions) -> Result<Vec<u8>> {
    if model.meta.architecture.is_empty() {
        bail!(
            "this model has no Ultralytics architecture (it came from {}); only models built from an Ultralytics \
             YAML or checkpoint can be written as .pt",
            if model.meta.source.is_empty() { "an unknown source" } else { &model.meta.source }
        );
    }
    for (name, t) in &model.tensors {
        if let TensorData::F32(v) = &t.data {
            if v.iter().any(|x| !x.is_finite()) {
                bail!("tensor {name} holds non-finite values; a checkpoint of it would not train or run");
            }
        }
    }
    let mut b = Builder::new(model, opts)?;
    let detection = b.detection_model()?;
    let root = b.checkpoint(detection);
    let pickle = dumps(&root);
    archive(&pickle, &b.storages)
}

/// Writes `bytes` to `path` atomically (a sibling temporary file renamed over it).
pub fn save_pt(model: &Model, path: &Path, opts: PtOptions) -> Result<()> {
    let bytes = write_pt(model, opts)?;
    slimc_ir::write_atomic(path, &bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// The zip archive `torch.save` writes: `archive/data.pkl`, one `archive/data/<key>` per
/// storage (64-byte aligned, stored), `archive/version` and `archive/byteorder`.
fn archive(pickle: &[u8], storages: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(storages.iter().map(Vec::len).sum::<usize>() > (1 << 31));
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        zip.start_file(format!("archive/{name}"), opts)?;
        zip.write_all(bytes)?;
        Ok(())
    };
    put("data.pkl", pickle)?;
    put("byteorder", b"little")?;
    for (k, s) in storages.iter().enumerate() {
        put(&format!("data/{k}"), s)?;
    }
    put("version", b"3\n")?;
    Ok(zip.finish()?.into_inner())
}

/// Builds the pickled objects and collects the storages they refer to.
struct Builder<'m> {
    model: &'m Model,
    opts: PtOptions,
    /// Storage bytes by key.
    storages: Vec<Vec<u8>>,
    /// Each convolution weight's attributes, by weight name.
    convs: HashMap<String, slimc_ir::Conv2d>,
    /// Each batch norm's attributes, by its weight's name.
    norms: HashMap<String, slimc_ir::BatchNorm>,
    /// Names of the graph's values (a SiLU's result is named after its Conv module, a
    /// residual add `{bottleneck}.add`).
    values: HashSet<String>,
    /// The model YAML as Ultralytics keeps it.
    doc: Yaml,
}

/// A module's state before its own attributes: PyTorch's bookkeeping, its parameters, buffers
/// and children.
fn module(
    module: &str,
    name: &str,
    params: Vec<(&str, Py)>,
    buffers: Vec<(&str, Py)>,
    children: Vec<(String, Py)>,
    attrs: Vec<(&str, Py)>,
) -> Py {
    let od = |items: Vec<(&str, Py)>| Py::OrderedDict(items.into_iter().map(|(k, v)| (Py::str(k), v)).collect());
    let empty = || Py::OrderedDict(vec![]);
    let mut state = vec![
        ("training", Py::Bool(false)),
        ("_parameters", od(params)),
        ("_buffers", od(buffers)),
        ("_non_persistent_buffers_set", Py::Set(vec![])),
        ("_backward_pre_hooks", empty()),
        ("_backward_hooks", empty()),
        ("_is_full_backward_hook", Py::None),
        ("_forward_hooks", empty()),
        ("_forward_hooks_with_kwargs", empty()),
        ("_forward_hooks_always_called", empty()),
        ("_forward_pre_hooks", empty()),
        ("_forward_pre_hooks_with_kwargs", empty()),
        ("_state_dict_hooks", empty()),
        ("_state_dict_pre_hooks", empty()),
        ("_load_state_dict_pre_hooks", empty()),
        ("_load_state_dict_post_hooks", empty()),
        ("_modules", Py::OrderedDict(children.into_iter().map(|(k, v)| (Py::Str(k), v)).collect())),
    ];
    state.extend(attrs);
    Py::Object { module: module.into(), name: name.into(), state: Box::new(Py::dict(state)) }
}

/// Where PyTorch defines its modules.
const NN: &str = "torch.nn.modules";

impl<'m> Builder<'m> {
    fn new(model: &'m Model, opts: PtOptions) -> Result<Self> {
        let g = &model.graph;
        let mut convs = HashMap::new();
        let mut norms = HashMap::new();
        for n in &g.nodes {
            match &n.op {
                Op::Conv2d(c) => {
                    convs.insert(g.value(n.inputs[1]).name.clone(), c.clone());
                }
                Op::BatchNorm(b) | Op::BatchNormTrain(b) => {
                    norms.insert(g.value(n.inputs[1]).name.clone(), b.clone());
                }
                // The module tree needs only the convolutions and batch norms.
                _ => {}
            }
        }
        let values = g.values.iter().map(|v| v.name.clone()).collect();
        let docs = crate::io::parse_yaml(&model.meta.architecture, "the model's architecture")?;
        let doc = docs.into_iter().next().ok_or_else(|| anyhow!("the model's architecture is empty"))?;
        Ok(Builder { model, opts, storages: vec![], convs, norms, values, doc })
    }

    /// A tensor of the model by name.
    fn tensor(&self, name: &str) -> Result<&'m Tensor> {
        self.model
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("the model has no tensor {name} (Ultralytics' module needs it)"))
    }

    /// `t` as a new storage; the pickled tensor (or parameter) over it.
    fn store(&mut self, t: &Tensor, parameter: bool) -> Result<Py> {
        let (dtype, bytes) = match &t.data {
            TensorData::F32(v) if self.opts.fp32 => (StorageDtype::F32, slimc_ir::le_bytes(v).into_owned()),
            TensorData::F32(v) => {
                (StorageDtype::F16, v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect())
            }
            TensorData::I64(v) => (StorageDtype::I64, slimc_ir::le_bytes(v).into_owned()),
        };
        self.storages.push(bytes);
        Ok(Py::Tensor { key: (self.storages.len() - 1).to_string(), dtype, shape: t.shape.clone(), parameter })
    }

    fn param(&mut self, name: &str) -> Result<Py> {
        let t = self.tensor(name)?;
        self.store(t, true)
    }

    /// A container of `items` (`Sequential` or `ModuleList`).
    fn container(&self, class: &str, items: Vec<Py>) -> Py {
        let children = items.into_iter().enumerate().map(|(i, m)| (i.to_string(), m)).collect();
        module(&format!("{NN}.container"), class, vec![], vec![], children, vec![])
    }

    /// How many numbered children `prefix` has (`prefix.0`, `prefix.1`, …), from the tensors.
    fn count(&self, prefix: &str) -> usize {
        (0..).take_while(|i| self.model.tensors.keys().any(|k| k.starts_with(&format!("{prefix}.{i}.")))).count()
    }

    fn has(&self, prefix: &str) -> bool {
        let p = format!("{prefix}.");
        self.model.tensors.keys().any(|k| k.starts_with(&p))
    }

    /// Layer `i` of the YAML as its Ultralytics module.
    fn layer(&mut self, i: usize, layer: &LayerSpec, nc: usize) -> Result<Py> {
        let prefix = format!("model.{i}");
        let f = match (layer.from.as_slice(), i) {
            ([Some(k)], _) if *k + 1 == i => Py::Int(-1),
            ([None], 0) => Py::Int(-1),
            (from, _) => Py::List(
                from.iter().map(|k| Py::Int(k.map_or(-1, |k| if k + 1 == i { -1 } else { k as i64 }))).collect(),
            ),
        };
        // Ultralytics' `np`: the layer's parameters (trained and frozen), not its buffers or
        // slimc's own constants.
        let g = &self.model.graph;
        let np: usize = g
            .params
            .iter()
            .map(|&p| g.value(p))
            .filter(|v| matches!(v.def, ValueDef::Param(ParamKind::Weight | ParamKind::Frozen)))
            .filter(|v| v.name.starts_with(&format!("{prefix}.")))
            .map(|v| self.model.tensors.get(&v.name).map_or(0, Tensor::numel))
            .sum();
        let kind = Module::parse(&layer.module)
            .filter(|m| m.name() == layer.module)
            .ok_or_else(|| anyhow!("layer {i}: {} has no Ultralytics module slimc writes", layer.module))?;
        let (module_path, class) = kind.class();
        let top = vec![
            ("np", Py::Int(np as i64)),
            ("i", Py::Int(i as i64)),
            ("f", f),
            ("type", Py::Str(format!("{module_path}.{class}"))),
        ];
        let int = |k: usize, default: i64| match layer.args.get(k) {
            Some(Arg::Int(v)) => *v,
            _ => default,
        };
        Ok(match kind {
            Module::Conv => self.conv(&prefix, top)?,
            Module::C3k2 => self.halves_block(&prefix, "C3k2", "ModuleList", top, Self::c3k2_member)?,
            Module::C3k | Module::C3 => self.c3(&prefix, class, top)?,
            Module::C2f => self.halves_block(&prefix, "C2f", "ModuleList", top, Self::bottleneck)?,
            Module::C2 => self.halves_block(&prefix, "C2", "Sequential", top, Self::bottleneck)?,
            Module::A2C2f => self.a2c2f(&prefix, top)?,
            Module::Sppf => self.sppf(&prefix, int(1, 5) as usize, top)?,
            Module::C2psa => self.halves_block(&prefix, "C2PSA", "Sequential", top, Self::psa_block)?,
            Module::Detect => self.detect(&prefix, nc, top)?,
            Module::Concat => {
                module(CONV_PY, "Concat", vec![], vec![], vec![], [vec![("d", Py::Int(int(0, 1)))], top].concat())
            }
            Module::Upsample => {
                let scale = match layer.args.get(1) {
                    Some(Arg::Int(s)) => *s as f64,
                    Some(Arg::Float(s)) => *s,
                    _ => 2.0,
                };
                let attrs = vec![
                    ("name", Py::str("Upsample")),
                    ("size", Py::None),
                    ("scale_factor", Py::Float(scale)),
                    ("mode", Py::str("nearest")),
                    ("align_corners", Py::None),
                    ("recompute_scale_factor", Py::None),
                ];
                module(module_path, class, vec![], vec![], vec![], [attrs, top].concat())
            }
        })
    }

    /// The `DetectionModel`.
    fn detection_model(&mut self) -> Result<Py> {
        let nc = self.model.meta.names.len().max(1);
        let spec = yaml::spec_from_doc(&self.doc, "the model's architecture", self.scale(), Some(nc))?;
        let mut layers = vec![];
        for (i, layer) in spec.layers.iter().enumerate() {
            layers.push(self.layer(i, layer, nc).with_context(|| format!("writing layer {i} ({})", layer.module))?);
        }
        let mut save: Vec<usize> = spec
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.from.iter().filter_map(move |k| k.filter(|&k| k + 1 != i)))
            .collect();
        save.sort_unstable();
        save.dedup();
        let strides = Tensor::from_f32(vec![self.model.meta.strides.len()], self.model.meta.strides.clone())?;
        let stride = self.store(&strides, false)?;
        let names = Py::Dict(
            self.model.meta.names.iter().enumerate().map(|(i, n)| (Py::Int(i as i64), Py::str(n.clone()))).collect(),
        );
        let attrs = vec![
            ("yaml", yaml_to_py(&self.doc)),
            ("save", Py::List(save.into_iter().map(|s| Py::Int(s as i64)).collect())),
            ("names", names),
            ("inplace", Py::Bool(true)),
            ("end2end", Py::Bool(false)),
            ("stride", stride),
            ("nc", Py::Int(nc as i64)),
        ];
        let seq = self.container("Sequential", layers);
        Ok(module("ultralytics.nn.tasks", "DetectionModel", vec![], vec![], vec![("model".into(), seq)], attrs))
    }

    fn scale(&self) -> Option<char> {
        self.doc["scale"].as_str().and_then(|s| s.chars().next())
    }

    /// The checkpoint dict as Ultralytics' `strip_optimizer` leaves it.
    fn checkpoint(&self, model: Py) -> Py {
        let meta = &self.model.meta;
        let origin = |k: &str| meta.origin.get(k).cloned();
        let mut train_args = vec![("task", Py::str("detect")), ("mode", Py::str("train"))];
        train_args.push(("model", Py::str(meta.source.clone())));
        train_args.push(("imgsz", Py::Int(meta.imgsz[0].max(meta.imgsz[1]) as i64)));
        Py::dict([
            ("date", Py::str(now_iso())),
            ("version", Py::str(origin("version").unwrap_or_else(|| "8.3.253".into()))),
            ("license", Py::str("AGPL-3.0 (https://ultralytics.com/license)")),
            ("docs", Py::str("https://docs.ultralytics.com")),
            ("epoch", Py::Int(-1)),
            ("best_fitness", Py::None),
            ("model", model),
            ("ema", Py::None),
            ("updates", Py::None),
            ("optimizer", Py::None),
            ("scaler", Py::None),
            ("train_args", Py::dict(train_args)),
            ("train_metrics", Py::dict([])),
            ("train_results", Py::dict([])),
            ("git", Py::dict([])),
            ("writer", Py::str(format!("slimc {}", env!("CARGO_PKG_VERSION")))),
        ])
    }
}

/// A YAML value as the Python value `yaml.safe_load` gives.
fn yaml_to_py(y: &Yaml) -> Py {
    match y {
        Yaml::Real(_) => Py::Float(y.as_f64().unwrap_or(0.0)),
        Yaml::Integer(i) => Py::Int(*i),
        Yaml::String(s) => Py::Str(s.clone()),
        Yaml::Boolean(b) => Py::Bool(*b),
        Yaml::Array(a) => Py::List(a.iter().map(yaml_to_py).collect()),
        Yaml::Hash(h) => Py::Dict(h.iter().map(|(k, v)| (yaml_to_py(k), yaml_to_py(v))).collect()),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Py::None,
    }
}

/// The current time as ISO 8601 (UTC), as Ultralytics dates checkpoints.
fn now_iso() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // The proleptic Gregorian date of a day count since 1970-01-01, by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}
