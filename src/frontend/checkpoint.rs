//! Ultralytics `.pt` checkpoints and bare PyTorch state dicts, read without Python.
//!
//! `torch.save` writes a zip archive: `<name>/data.pkl` (a pickle, see [`super::pickle`]) and
//! one `<name>/data/<key>` entry per tensor storage. An Ultralytics checkpoint pickles a dict
//! (`model`, `ema`, `names`, `train_args`, `version`, ...) whose `ema` (when present) or `model`
//! is a whole `DetectionModel`; a state dict pickles an `OrderedDict` of tensors.
//!
//! The architecture comes from the model's own `yaml` dict through the YAML frontend, with every
//! conv's width taken from its weight tensor, so a checkpoint pruned in place (narrower than its
//! YAML) imports with the widths it has. Its weights are then loaded by Ultralytics name.

use super::pickle::{self, Id, Pickle, StorageDtype, TensorRef, Value};
use super::weights::assign_weights;
use super::{yaml, yolo};
use anyhow::{anyhow, bail, Context, Result};
use slimc_ir::{Model, ParamKind, Tensor, ValueDef};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use yaml_rust2::Yaml;

/// A `torch.save` archive: its pickle and the entries holding tensor storages.
pub struct TorchArchive {
    path: String,
    zip: zip::ZipArchive<std::io::Cursor<Vec<u8>>>,
    archive_len: u64,
    prefix: String,
    /// The decoded `data.pkl`.
    pub pickle: Pickle,
}

impl TorchArchive {
    /// Opens a `torch.save` zip archive and decodes its pickle.
    pub fn open(path: &Path) -> Result<TorchArchive> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
        let archive_len = bytes.len() as u64;
        let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
            anyhow!("{shown}: not a PyTorch checkpoint (torch.save writes a zip archive; this one cannot be read: {e})")
        })?;
        let pkl = zip
            .file_names()
            .filter_map(|n| n.ok().map(String::from))
            .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
            .min_by_key(|n| n.len())
            .ok_or_else(|| anyhow!("{shown}: a zip archive without data.pkl is not a PyTorch checkpoint"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let mut archive = TorchArchive { path: shown.clone(), zip, archive_len, prefix, pickle: Pickle::default() };
        let order = format!("{}byteorder", archive.prefix);
        if archive.zip.index_for_name(&order).is_some() {
            match archive.entry(&order)?.trim_ascii() {
                b"little" => {}
                b"big" => bail!(
                    "{shown}: the checkpoint was saved on a big-endian machine; slimc reads little-endian storages"
                ),
                other => bail!("{shown}: {order} says `{}`, not little or big", String::from_utf8_lossy(other)),
            }
        }
        let data = archive.entry(&pkl)?;
        archive.pickle = pickle::load(&data).map_err(|e| anyhow!("{shown}: {pkl}: {e}"))?;
        Ok(archive)
    }

    /// The path shown in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reads one archive entry. Stored entries (what `torch.save` writes) are bounded by the
    /// archive's own bytes; a compressed entry may expand to at most 64 times the archive.
    fn entry(&mut self, name: &str) -> Result<Vec<u8>> {
        let shown = &self.path;
        let archive_len = self.archive_len;
        let mut f = self.zip.by_name(name).map_err(|e| anyhow!("{shown}: entry {name}: {e}"))?;
        let limit = f.size().min(64 * archive_len);
        let mut out = vec![];
        (&mut f).take(limit + 1).read_to_end(&mut out).map_err(|e| anyhow!("{shown}: entry {name}: {e}"))?;
        if out.len() as u64 > limit {
            bail!("{shown}: entry {name} expands beyond {limit} bytes");
        }
        Ok(out)
    }

    /// Reads the tensor `t` (named `name` in errors) as f32 values, following its offset and
    /// strides. Integer tensors are refused.
    pub fn tensor(&mut self, name: &str, t: &TensorRef) -> Result<Tensor> {
        let shown = self.path.clone();
        let bad = |m: String| anyhow!("{shown}: tensor {name}: {m}");
        if !t.dtype.is_float() {
            return Err(bad(format!("has integer type {:?}; slimc reads floating-point tensors", t.dtype)));
        }
        let numel =
            t.size.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("size overflows".into()))?;
        let storage = self.entry(&format!("{}data/{}", self.prefix, t.key))?;
        let esize = t.dtype.size() as u64;
        let have = storage.len() as u64 / esize;
        if have < t.storage_numel {
            return Err(bad(format!("storage {} holds {have} elements, its header says {}", t.key, t.storage_numel)));
        }
        if numel > 0 {
            let last = t
                .size
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(a)))
                .ok_or_else(|| bad("strides overflow".into()))?;
            if last >= have || numel > have {
                return Err(bad(format!(
                    "shape {:?} at offset {} needs elements up to {}, its storage {} has {have}",
                    t.size,
                    t.offset,
                    last.max(numel - 1),
                    t.key
                )));
            }
        }
        let read = |i: usize| -> f32 {
            let b = &storage[i * esize as usize..(i + 1) * esize as usize];
            match t.dtype {
                StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                _ => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
            }
        };
        // Row-major walk over the view (every index was bounded above).
        let mut data = Vec::with_capacity(numel as usize);
        let mut idx = vec![0u64; t.size.len()];
        for _ in 0..numel {
            let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
            data.push(read(at as usize));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        let shape = t.size.iter().map(|&d| d as usize).collect();
        Tensor::from_f32(shape, data).map_err(|e| bad(e.to_string()))
    }

    /// Reads named floating-point tensors (BN's integer `num_batches_tracked` is skipped).
    fn tensors(&mut self, refs: &[(String, TensorRef)]) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (name, t) in refs {
            if !t.dtype.is_float() && name.ends_with("num_batches_tracked") {
                continue;
            }
            out.push((name.clone(), self.tensor(name, t)?));
        }
        Ok(out)
    }
}

/// What a `.pt` file holds.
enum Contents {
    /// A whole module (from a checkpoint's `ema`/`model`, or `torch.save(model)`).
    Module(Id),
    /// A dict of tensors.
    StateDict(Vec<(String, TensorRef)>),
}

fn contents(a: &TorchArchive) -> Result<Contents> {
    let p = &a.pickle;
    let root = p.root();
    if p.class(root).is_some() {
        return Ok(Contents::Module(root));
    }
    if p.dict(root).is_none() {
        bail!("{}: the pickle holds neither a checkpoint dict, a module nor a state dict", a.path);
    }
    let present = |k: &str| p.dict_get(root, k).filter(|&v| !matches!(p.get(v), Value::None));
    if let Some(m) = present("ema").or_else(|| present("model")) {
        if p.class(m).is_none() {
            bail!("{}: the checkpoint's model is not a pickled module", a.path);
        }
        return Ok(Contents::Module(m));
    }
    if p.dict_get(root, "model").is_some() || p.dict_get(root, "ema").is_some() {
        bail!("{}: the checkpoint's `model` and `ema` are both None", a.path);
    }
    let mut refs = vec![];
    for &(k, v) in p.dict(root).unwrap_or_default() {
        match (p.str(k), p.get(v)) {
            (Some(name), Value::Tensor(t)) => refs.push((name.to_string(), t.clone())),
            (Some(name), other) => bail!("{}: state dict entry {name} is not a tensor ({})", a.path, kind(other)),
            (None, _) => bail!("{}: a state dict key is not a string", a.path),
        }
    }
    if refs.is_empty() {
        bail!("{}: the checkpoint holds no model and no tensors", a.path);
    }
    Ok(Contents::StateDict(refs))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Object { class, .. } => class.clone(),
        Value::Global { module, name } => format!("{module}.{name}"),
        other => format!("{other:?}").split(['(', ' ', '{']).next().unwrap_or("value").to_string(),
    }
}

/// The state dict of a pickled `torch.nn.Module`, in PyTorch's order (parameters, persistent
/// buffers, then submodules).
fn module_state(p: &Pickle, m: Id, prefix: &str, walk: &mut Walk, out: &mut Vec<(String, TensorRef)>) -> Result<()> {
    let at = if prefix.is_empty() { "the model".to_string() } else { prefix.trim_end_matches('.').to_string() };
    walk.enter(&at)?;
    if p.object_state(m).is_none() {
        bail!("{at}: not a pickled module ({})", kind(p.get(m)));
    }
    let skip: Vec<&str> = p
        .attr(m, "_non_persistent_buffers_set")
        .map(|s| match p.get(s) {
            Value::Set(items) => items.iter().filter_map(|&i| p.str(i)).collect(),
            _ => vec![],
        })
        .unwrap_or_default();
    for field in ["_parameters", "_buffers"] {
        let Some(d) = p.attr(m, field) else { continue };
        for &(k, v) in p.dict(d).unwrap_or_default() {
            let name = p.str(k).ok_or_else(|| anyhow!("{at}: a {field} key is not a string"))?;
            match p.get(v) {
                Value::Tensor(t) if !(field == "_buffers" && skip.contains(&name)) => {
                    out.push((format!("{prefix}{name}"), t.clone()))
                }
                Value::Tensor(_) | Value::None => {}
                other => bail!("{at}: {field} entry {name} is not a tensor ({})", kind(other)),
            }
        }
    }
    if let Some(d) = p.attr(m, "_modules") {
        for &(k, v) in p.dict(d).unwrap_or_default() {
            let name = p.str(k).ok_or_else(|| anyhow!("{at}: a submodule name is not a string"))?;
            if !matches!(p.get(v), Value::None) {
                module_state(p, v, &format!("{prefix}{name}."), walk, out)?;
            }
        }
    }
    walk.depth -= 1;
    Ok(())
}

/// Bounds a recursive walk over a pickle: its depth, and the values it visits in all (shared or
/// cyclic values would otherwise be walked without end).
struct Walk {
    depth: usize,
    budget: usize,
}

impl Walk {
    fn new(p: &Pickle) -> Walk {
        Walk { depth: 0, budget: pickle::visit_budget(p) }
    }

    fn enter(&mut self, at: &str) -> Result<()> {
        if self.depth >= pickle::MAX_DEPTH || self.budget == 0 {
            bail!("{at}: values nest deeper than {} or repeat without end", pickle::MAX_DEPTH);
        }
        self.depth += 1;
        self.budget -= 1;
        Ok(())
    }
}

/// Reads the tensors of a `.pt` file as a state dict: a bare `torch.save(state_dict)`, or the
/// model inside an Ultralytics checkpoint. Used by `--weights`.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut a = TorchArchive::open(path)?;
    let refs = match contents(&a)? {
        Contents::StateDict(refs) => refs,
        Contents::Module(m) => {
            let mut refs = vec![];
            module_state(&a.pickle, m, "", &mut Walk::new(&a.pickle), &mut refs)
                .map_err(|e| anyhow!("{}: {e:#}", a.path))?;
            refs
        }
    };
    let mut out = a.tensors(&refs)?;
    out.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

/// A pickled value as YAML (the `yaml` dict Ultralytics keeps on every model).
fn to_yaml(p: &Pickle, id: Id, walk: &mut Walk) -> Result<Yaml> {
    walk.enter("the model's yaml")?;
    let y = match p.get(id) {
        Value::None => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Int(i) => Yaml::Integer(*i),
        Value::Float(f) => Yaml::Real(format!("{f:?}")),
        Value::Str(s) => Yaml::String(s.clone()),
        Value::Tuple(items) | Value::List(items) => {
            Yaml::Array(items.iter().map(|&i| to_yaml(p, i, walk)).collect::<Result<_>>()?)
        }
        Value::Dict(d) => {
            let mut h = yaml_rust2::yaml::Hash::new();
            for &(k, v) in d {
                h.insert(to_yaml(p, k, walk)?, to_yaml(p, v, walk)?);
            }
            Yaml::Hash(h)
        }
        other => bail!("the model's yaml holds a {}, which YAML cannot express", kind(other)),
    };
    walk.depth -= 1;
    Ok(y)
}

/// Loads an Ultralytics `.pt` file as a model.
///
/// With `nc` unset or equal to the checkpoint's class count, the model is the checkpoint's own:
/// its architecture from its `yaml`, every conv's width from its tensors, all weights loaded
/// (each must fit). With another `nc`, the model is built from the `yaml` for `nc` classes (as
/// Ultralytics' trainer does) and every tensor whose name and shape match is transferred; the
/// count is printed. `imgsz` is the model's reference size (default: the training size).
pub fn load_checkpoint(path: &Path, nc: Option<usize>, imgsz: Option<[usize; 2]>, seed: u64) -> Result<Model> {
    let mut a = TorchArchive::open(path)?;
    let shown = a.path.clone();
    let m = match contents(&a)? {
        Contents::Module(m) => m,
        Contents::StateDict(_) => bail!(
            "{shown}: a bare state dict has no architecture; pass it as --weights to a model YAML \
             (e.g. slimc import yolo11n.yaml --weights {shown})"
        ),
    };
    let p = &a.pickle;
    let class = p.class(m).unwrap_or_default().to_string();
    if !class.ends_with(".DetectionModel") {
        let short = class.rsplit('.').next().unwrap_or(&class);
        bail!("{shown}: the checkpoint holds a {short} ({class}); slimc reads detection models (DetectionModel)");
    }
    let yaml_id = p.attr(m, "yaml").ok_or_else(|| anyhow!("{shown}: the model has no `yaml` attribute"))?;
    let doc = to_yaml(p, yaml_id, &mut Walk::new(p)).map_err(|e| anyhow!("{shown}: {e}"))?;
    let scale = match &doc["scale"] {
        Yaml::String(s) if s.chars().count() == 1 => s.chars().next(),
        _ => None,
    };
    // The lowering names the graph after the YAML the model was built from.
    let yaml_file = match &doc["yaml_file"] {
        Yaml::String(f) if !f.is_empty() => f.rsplit(['/', '\\']).next().unwrap_or(f).to_string(),
        _ => "model.yaml".to_string(),
    };
    let nc_override = nc.filter(|&n| doc["nc"].as_i64() != Some(n as i64));
    let spec = yaml::spec_from_doc(&doc, &yaml_file, scale, nc_override).map_err(|e| anyhow!("{shown}: {e:#}"))?;
    let mut refs = vec![];
    module_state(p, m, "", &mut Walk::new(p), &mut refs).map_err(|e| anyhow!("{shown}: {e:#}"))?;
    let names = class_names(p, m, spec.nc);
    let ckpt = p.root();
    let mut origin = BTreeMap::new();
    origin.insert("format".to_string(), format!("ultralytics checkpoint ({class})"));
    if p.dict(ckpt).is_some() {
        for key in ["version", "date", "epoch", "best_fitness", "train_args", "train_metrics", "license"] {
            if let Some(v) = p.dict_get(ckpt, key).filter(|&v| !matches!(p.get(v), Value::None)) {
                let j = p.to_json(v);
                origin.insert(key.to_string(), j.as_str().map(String::from).unwrap_or_else(|| j.to_string()));
            }
        }
    }
    let train_imgsz = p
        .dict(ckpt)
        .and_then(|_| p.dict_get(ckpt, "train_args"))
        .and_then(|ta| p.dict(ta).map(|_| ta).or_else(|| p.object_state(ta)))
        .and_then(|d| p.dict_get(d, "imgsz"))
        .and_then(|v| match p.get(v) {
            Value::Int(i) if *i >= 32 && *i <= 8192 => Some(*i as usize),
            _ => None,
        });
    let size = imgsz.unwrap_or([train_imgsz.unwrap_or(640); 2]).map(|s| s.div_ceil(32) * 32);
    let tensors = a.tensors(&refs)?;
    let lower = |widths| yolo::lower(&spec, size, seed, widths).map_err(|e| anyhow!("{shown}: {e:#}"));
    let mut model = match nc_override {
        None => {
            let widths: BTreeMap<String, Vec<usize>> =
                tensors.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
            let mut model = lower(Some(&widths))?;
            assign_weights(&mut model, tensors, &shown)?;
            model.meta.names = names;
            model
        }
        Some(_) => {
            let mut model = lower(None)?;
            let g = &model.graph;
            let named: Vec<String> = g
                .params
                .iter()
                .map(|&v| g.value(v))
                .filter(|v| matches!(v.def, ValueDef::Param(ParamKind::Weight | ParamKind::Frozen | ParamKind::Buffer)))
                .map(|v| v.name.clone())
                .collect();
            let mut moved = 0;
            for (name, t) in tensors {
                if !named.contains(&name) {
                    continue;
                }
                if let Some(slot) = model.tensors.get_mut(&name).filter(|s| s.shape == t.shape) {
                    *slot = t;
                    moved += 1;
                }
            }
            let total = named.len();
            eprintln!("Transferred {moved}/{total} items from {shown}");
            model
        }
    };
    model.meta.source = format!("{} ({yaml_file})", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default());
    model.meta.origin = origin;
    model.check().map_err(|e| anyhow!("{shown}: {e}"))?;
    Ok(model)
}

/// Class names from the model's `names` attribute (a dict or list), else `class0`...
fn class_names(p: &Pickle, m: Id, nc: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..nc).map(|i| format!("class{i}")).collect();
    let Some(n) = p.attr(m, "names") else { return names };
    match p.get(n) {
        Value::Dict(d) => {
            for &(k, v) in d {
                if let (Value::Int(i), Some(s)) = (p.get(k), p.str(v)) {
                    if let Some(slot) = usize::try_from(*i).ok().and_then(|i| names.get_mut(i)) {
                        *slot = s.to_string();
                    }
                }
            }
        }
        Value::List(l) | Value::Tuple(l) => {
            for (slot, &v) in names.iter_mut().zip(l) {
                if let Some(s) = p.str(v) {
                    *slot = s.to_string();
                }
            }
        }
        _ => {}
    }
    names
}
