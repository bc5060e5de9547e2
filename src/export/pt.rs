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
use anyhow::{anyhow, bail, Context, Result};
use slimc_ir::{Model, Op, ParamKind, Tensor, TensorData, ValueDef};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use yaml_rust2::Yaml;

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

const NN: &str = "torch.nn.modules";
const CONV: &str = "ultralytics.nn.modules.conv";
const BLOCK: &str = "ultralytics.nn.modules.block";
const HEAD: &str = "ultralytics.nn.modules.head";

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

    /// `nn.Conv2d` at `prefix` (its weight and optional bias).
    fn conv2d(&mut self, prefix: &str) -> Result<Py> {
        let wname = format!("{prefix}.weight");
        let w = self.tensor(&wname)?.shape.clone();
        let c = self.convs.get(&wname).cloned().ok_or_else(|| anyhow!("no convolution reads {wname}"))?;
        if c.pad[0] != c.pad[2] || c.pad[1] != c.pad[3] {
            bail!("{prefix}: asymmetric padding {:?} has no nn.Conv2d form", c.pad);
        }
        let weight = self.param(&wname)?;
        let bname = format!("{prefix}.bias");
        let bias = if self.model.tensors.contains_key(&bname) { self.param(&bname)? } else { Py::None };
        let (ph, pw) = (c.pad[0], c.pad[1]);
        Ok(module(
            &format!("{NN}.conv"),
            "Conv2d",
            vec![("weight", weight), ("bias", bias)],
            vec![],
            vec![],
            vec![
                ("in_channels", Py::Int((w[1] * c.groups) as i64)),
                ("out_channels", Py::Int(w[0] as i64)),
                ("kernel_size", Py::ints(&w[2..4])),
                ("stride", Py::ints(&c.stride)),
                ("padding", Py::ints(&[ph, pw])),
                ("dilation", Py::ints(&c.dilation)),
                ("transposed", Py::Bool(false)),
                ("output_padding", Py::ints(&[0, 0])),
                ("groups", Py::Int(c.groups as i64)),
                ("padding_mode", Py::str("zeros")),
                ("_reversed_padding_repeated_twice", Py::ints(&[pw, pw, ph, ph])),
            ],
        ))
    }

    /// `nn.BatchNorm2d` at `prefix`.
    fn batch_norm(&mut self, prefix: &str) -> Result<Py> {
        let wname = format!("{prefix}.weight");
        let b = self.norms.get(&wname).cloned().ok_or_else(|| anyhow!("no batch norm reads {wname}"))?;
        let c = self.tensor(&wname)?.numel();
        let params = vec![("weight", self.param(&wname)?), ("bias", self.param(&format!("{prefix}.bias"))?)];
        let mean = self.store(self.tensor(&format!("{prefix}.running_mean"))?, false)?;
        let var = self.store(self.tensor(&format!("{prefix}.running_var"))?, false)?;
        let count = self.store(&Tensor { shape: vec![], data: TensorData::I64(vec![0]) }, false)?;
        Ok(module(
            &format!("{NN}.batchnorm"),
            "BatchNorm2d",
            params,
            vec![("running_mean", mean), ("running_var", var), ("num_batches_tracked", count)],
            vec![],
            vec![
                ("num_features", Py::Int(c as i64)),
                ("eps", Py::Float(b.eps as f64)),
                ("momentum", Py::Float(b.momentum as f64)),
                ("affine", Py::Bool(true)),
                ("track_running_stats", Py::Bool(true)),
            ],
        ))
    }

    /// Ultralytics' `Conv` (conv, BN, SiLU or identity) at `prefix`.
    fn conv(&mut self, prefix: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        self.conv_as(prefix, "Conv", top)
    }

    /// [`Self::conv`] as `class` (`DWConv`, the same module built with `g = gcd(c1, c2)`).
    fn conv_as(&mut self, prefix: &str, class: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let conv = self.conv2d(&format!("{prefix}.conv"))?;
        let bn = self.batch_norm(&format!("{prefix}.bn"))?;
        let act = if self.values.contains(prefix) {
            module(&format!("{NN}.activation"), "SiLU", vec![], vec![], vec![], vec![("inplace", Py::Bool(true))])
        } else {
            module(&format!("{NN}.linear"), "Identity", vec![], vec![], vec![], vec![])
        };
        let children = vec![("conv".into(), conv), ("bn".into(), bn), ("act".into(), act)];
        Ok(module(CONV, class, vec![], vec![], children, top))
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

    fn bottleneck(&mut self, prefix: &str) -> Result<Py> {
        let children = vec![
            ("cv1".into(), self.conv(&format!("{prefix}.cv1"), vec![])?),
            ("cv2".into(), self.conv(&format!("{prefix}.cv2"), vec![])?),
        ];
        let add = self.values.contains(&format!("{prefix}.add"));
        Ok(module(BLOCK, "Bottleneck", vec![], vec![], children, vec![("add", Py::Bool(add))]))
    }

    /// A `C3` (or its subclass `C3k`): `cv1`, `cv2`, `cv3` and the bottlenecks `m`.
    fn c3(&mut self, prefix: &str, class: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let mut children = vec![];
        for cv in ["cv1", "cv2", "cv3"] {
            children.push((cv.to_string(), self.conv(&format!("{prefix}.{cv}"), vec![])?));
        }
        let m = (0..self.count(&format!("{prefix}.m")))
            .map(|j| self.bottleneck(&format!("{prefix}.m.{j}")))
            .collect::<Result<Vec<_>>>()?;
        children.push(("m".into(), self.container("Sequential", m)));
        Ok(module(BLOCK, class, vec![], vec![], children, top))
    }

    /// Half of `prefix.cv1`'s output channels (`C2f`'s and `C2PSA`'s `c`), which Ultralytics
    /// chunks into two equal halves: an error when pruning left them unequal.
    fn half(&self, prefix: &str) -> Result<Py> {
        let g = &self.model.graph;
        let cv1 = format!("{prefix}.cv1");
        for n in &g.nodes {
            if let Op::Split(s) = &n.op {
                if g.value(n.inputs[0]).name == cv1 && s.sizes.iter().any(|&k| k != s.sizes[0]) {
                    bail!(
                        "{prefix}: pruning left its halves at {:?} channels, and Ultralytics chunks them equally; \
                         prune with --even-splits (implied by `slimc prune -o x.pt`) for a model stock Ultralytics runs",
                        s.sizes
                    );
                }
            }
        }
        Ok(Py::Int((self.tensor(&format!("{prefix}.cv1.conv.weight"))?.shape[0] / 2) as i64))
    }

    /// A block that splits its first conv's output in halves (`C3k2`, `C2PSA`): `c`, `cv1`,
    /// `cv2` and its blocks `m` in a `container`, each made by `member`.
    fn halves_block(
        &mut self,
        prefix: &str,
        class: &str,
        container: &str,
        top: Vec<(&str, Py)>,
        member: fn(&mut Self, &str) -> Result<Py>,
    ) -> Result<Py> {
        let c = self.half(prefix)?;
        let cv1 = self.conv(&format!("{prefix}.cv1"), vec![])?;
        let cv2 = self.conv(&format!("{prefix}.cv2"), vec![])?;
        let n = self.count(&format!("{prefix}.m"));
        let m = (0..n).map(|j| member(self, &format!("{prefix}.m.{j}"))).collect::<Result<Vec<_>>>()?;
        let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), self.container(container, m))];
        Ok(module(BLOCK, class, vec![], vec![], children, [vec![("c", c)], top].concat()))
    }

    /// A `C3k2` block: a `C3k` where it has one, else a `Bottleneck`.
    fn c3k2_member(&mut self, p: &str) -> Result<Py> {
        if self.has(&format!("{p}.cv3")) {
            self.c3(p, "C3k", vec![])
        } else {
            self.bottleneck(p)
        }
    }

    fn sppf(&mut self, prefix: &str, k: usize, top: Vec<(&str, Py)>) -> Result<Py> {
        let pool = module(
            &format!("{NN}.pooling"),
            "MaxPool2d",
            vec![],
            vec![],
            vec![],
            vec![
                ("kernel_size", Py::Int(k as i64)),
                ("stride", Py::Int(1)),
                ("padding", Py::Int((k / 2) as i64)),
                ("dilation", Py::Int(1)),
                ("return_indices", Py::Bool(false)),
                ("ceil_mode", Py::Bool(false)),
            ],
        );
        let children = vec![
            ("cv1".into(), self.conv(&format!("{prefix}.cv1"), vec![])?),
            ("cv2".into(), self.conv(&format!("{prefix}.cv2"), vec![])?),
            ("m".into(), pool),
        ];
        Ok(module(BLOCK, "SPPF", vec![], vec![], children, top))
    }

    fn attention(&mut self, prefix: &str) -> Result<Py> {
        let dim = self.tensor(&format!("{prefix}.proj.conv.weight"))?.shape[0];
        // PSABlock(c, attn_ratio=0.5, num_heads=c // 64).
        let heads = dim / 64;
        if heads == 0 {
            bail!("{prefix}: {dim} channels give Ultralytics' Attention no head (it needs 64 per head)");
        }
        let head_dim = dim / heads;
        let key_dim = head_dim / 2;
        let children = self.attention_convs(prefix)?;
        let attrs = vec![
            ("num_heads", Py::Int(heads as i64)),
            ("head_dim", Py::Int(head_dim as i64)),
            ("key_dim", Py::Int(key_dim as i64)),
            ("scale", Py::Float((key_dim as f64).powf(-0.5))),
        ];
        Ok(module(BLOCK, "Attention", vec![], vec![], children, attrs))
    }

    fn psa_block(&mut self, p: &str) -> Result<Py> {
        let attn = self.attention(&format!("{p}.attn"))?;
        let ffn = vec![self.conv(&format!("{p}.ffn.0"), vec![])?, self.conv(&format!("{p}.ffn.1"), vec![])?];
        let children = vec![("attn".into(), attn), ("ffn".into(), self.container("Sequential", ffn))];
        Ok(module(BLOCK, "PSABlock", vec![], vec![], children, vec![("add", Py::Bool(true))]))
    }

    /// An attention's `qkv`, `proj` and `pe` convs (C2PSA's `Attention` and YOLO12's `AAttn`).
    fn attention_convs(&mut self, prefix: &str) -> Result<Vec<(String, Py)>> {
        ["qkv", "proj", "pe"]
            .iter()
            .map(|c| Ok((c.to_string(), self.conv(&format!("{prefix}.{c}"), vec![])?)))
            .collect()
    }

    /// YOLO12's `AAttn` at `prefix` (`area` from the graph's view of the sequence).
    fn area_attention(&mut self, prefix: &str) -> Result<Py> {
        let dim = self.tensor(&format!("{prefix}.proj.conv.weight"))?.shape[0];
        let g = &self.model.graph;
        let view = format!("{prefix}.view");
        let area = g
            .nodes
            .iter()
            .filter(|n| g.value(n.outputs[0]).name == view)
            .find_map(|n| match &n.op {
                Op::Reshape(r) => match r.shape.get(3) {
                    Some(slimc_ir::ReshapeDim::Fixed(a)) => Some(*a),
                    _ => None,
                },
                _ => None,
            })
            .ok_or_else(|| anyhow!("{prefix}: no area view of the sequence"))?;
        let heads = dim / 32;
        if heads == 0 || dim % 32 != 0 {
            bail!("{prefix}: {dim} channels do not make Ultralytics' 32-wide area attention heads");
        }
        let children = self.attention_convs(prefix)?;
        let attrs = vec![
            ("area", Py::Int(area as i64)),
            ("num_heads", Py::Int(heads as i64)),
            ("head_dim", Py::Int((dim / heads) as i64)),
        ];
        Ok(module(BLOCK, "AAttn", vec![], vec![], children, attrs))
    }

    /// YOLO12's `ABlock`: area attention and its MLP.
    fn ablock(&mut self, p: &str) -> Result<Py> {
        let attn = self.area_attention(&format!("{p}.attn"))?;
        let mlp = vec![self.conv(&format!("{p}.mlp.0"), vec![])?, self.conv(&format!("{p}.mlp.1"), vec![])?];
        let children = vec![("attn".into(), attn), ("mlp".into(), self.container("Sequential", mlp))];
        Ok(module(BLOCK, "ABlock", vec![], vec![], children, vec![]))
    }

    /// An `A2C2f` member: two `ABlock`s in a `Sequential`, or a `C3k`.
    fn a2c2f_member(&mut self, p: &str) -> Result<Py> {
        if self.has(&format!("{p}.cv3")) {
            return self.c3(p, "C3k", vec![]);
        }
        let blocks = vec![self.ablock(&format!("{p}.0"))?, self.ablock(&format!("{p}.1"))?];
        Ok(self.container("Sequential", blocks))
    }

    /// YOLO12's `A2C2f`: `cv1`, the blocks `m`, `cv2` and, for scales l and x, the `gamma`
    /// parameter of its residual.
    fn a2c2f(&mut self, prefix: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let cv1 = self.conv(&format!("{prefix}.cv1"), vec![])?;
        let cv2 = self.conv(&format!("{prefix}.cv2"), vec![])?;
        let n = self.count(&format!("{prefix}.m"));
        let m = (0..n).map(|j| self.a2c2f_member(&format!("{prefix}.m.{j}"))).collect::<Result<Vec<_>>>()?;
        let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), self.container("ModuleList", m))];
        let gamma = format!("{prefix}.gamma");
        if self.model.tensors.contains_key(&gamma) {
            let params = vec![("gamma", self.param(&gamma)?)];
            Ok(module(BLOCK, "A2C2f", params, vec![], children, top))
        } else {
            Ok(module(BLOCK, "A2C2f", vec![], vec![], children, [vec![("gamma", Py::None)], top].concat()))
        }
    }

    fn detect(&mut self, prefix: &str, nc: usize, top: Vec<(&str, Py)>) -> Result<Py> {
        let nl = self.count(&format!("{prefix}.cv2"));
        let mut cv2 = vec![];
        let mut cv3 = vec![];
        for i in 0..nl {
            let p = format!("{prefix}.cv2.{i}");
            let branch = vec![
                self.conv(&format!("{p}.0"), vec![])?,
                self.conv(&format!("{p}.1"), vec![])?,
                self.conv2d(&format!("{p}.2"))?,
            ];
            cv2.push(self.container("Sequential", branch));
            let p = format!("{prefix}.cv3.{i}");
            let mut branch = vec![];
            // The legacy head (v3/v5/v8) has two plain convs; the later one a depthwise-separable
            // pair in each place.
            let legacy = !self.has(&format!("{p}.0.0"));
            for j in 0..2 {
                branch.push(if legacy {
                    self.conv(&format!("{p}.{j}"), vec![])?
                } else {
                    let pair = vec![
                        self.conv_as(&format!("{p}.{j}.0"), "DWConv", vec![])?,
                        self.conv(&format!("{p}.{j}.1"), vec![])?,
                    ];
                    self.container("Sequential", pair)
                });
            }
            branch.push(self.conv2d(&format!("{p}.2"))?);
            cv3.push(self.container("Sequential", branch));
        }
        let reg_max = self.tensor(&format!("{prefix}.dfl.conv.weight"))?.shape[1];
        let dfl_conv = self.conv2d(&format!("{prefix}.dfl.conv"))?;
        let dfl = module(
            BLOCK,
            "DFL",
            vec![],
            vec![],
            vec![("conv".into(), dfl_conv)],
            vec![("c1", Py::Int(reg_max as i64))],
        );
        let strides = Tensor::from_f32(vec![nl], self.model.meta.strides.clone())?;
        let stride = self.store(&strides, false)?;
        let children = vec![
            ("cv2".into(), self.container("ModuleList", cv2)),
            ("cv3".into(), self.container("ModuleList", cv3)),
            ("dfl".into(), dfl),
        ];
        let attrs = vec![
            ("nc", Py::Int(nc as i64)),
            ("nl", Py::Int(nl as i64)),
            ("reg_max", Py::Int(reg_max as i64)),
            ("no", Py::Int((nc + 4 * reg_max) as i64)),
            ("stride", stride),
        ];
        Ok(module(HEAD, "Detect", vec![], vec![], children, [attrs, top].concat()))
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
        let (module_path, class) = match layer.module.as_str() {
            "Conv" => (CONV, "Conv"),
            "Concat" => (CONV, "Concat"),
            "C3k2" | "C3k" | "SPPF" | "C2PSA" | "C2f" | "C3" | "C2" | "A2C2f" => (BLOCK, layer.module.as_str()),
            "Detect" => (HEAD, "Detect"),
            "nn.Upsample" => ("torch.nn.modules.upsampling", "Upsample"),
            other => bail!("layer {i}: {other} has no Ultralytics module slimc writes"),
        };
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
        Ok(match class {
            "Conv" => self.conv(&prefix, top)?,
            "C3k2" => self.halves_block(&prefix, "C3k2", "ModuleList", top, Self::c3k2_member)?,
            "C3k" | "C3" => self.c3(&prefix, class, top)?,
            "C2f" => self.halves_block(&prefix, "C2f", "ModuleList", top, Self::bottleneck)?,
            "C2" => self.halves_block(&prefix, "C2", "Sequential", top, Self::bottleneck)?,
            "A2C2f" => self.a2c2f(&prefix, top)?,
            "SPPF" => self.sppf(&prefix, int(1, 5) as usize, top)?,
            "C2PSA" => self.halves_block(&prefix, "C2PSA", "Sequential", top, Self::psa_block)?,
            "Detect" => self.detect(&prefix, nc, top)?,
            "Concat" => module(CONV, "Concat", vec![], vec![], vec![], [vec![("d", Py::Int(int(0, 1)))], top].concat()),
            _ => {
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
