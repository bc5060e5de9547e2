//! The Ultralytics modules of a `.pt` checkpoint, built from the model's tensors: `nn.Conv2d`
//! and `nn.BatchNorm2d`, `Conv`/`DWConv`, the bottlenecks and CSP blocks, SPPF, the attention
//! blocks (C2PSA's `PSABlock`, YOLO12's `ABlock`) and the Detect head.

use super::{module, Builder, NN};
use crate::frontend::pickle::write::Py;
use crate::frontend::yolo::modules::{BLOCK_PY, CONV_PY, HEAD_PY};
use anyhow::{anyhow, bail, Result};
use slimc_ir::{Op, Tensor, TensorData};

impl Builder<'_> {
    /// `nn.Conv2d` at `prefix` (its weight and optional bias).
    pub(super) fn conv2d(&mut self, prefix: &str) -> Result<Py> {
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
    pub(super) fn batch_norm(&mut self, prefix: &str) -> Result<Py> {
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
    pub(super) fn conv(&mut self, prefix: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        self.conv_as(prefix, "Conv", top)
    }

    /// [`Self::conv`] as `class` (`DWConv`, the same module built with `g = gcd(c1, c2)`).
    pub(super) fn conv_as(&mut self, prefix: &str, class: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let conv = self.conv2d(&format!("{prefix}.conv"))?;
        let bn = self.batch_norm(&format!("{prefix}.bn"))?;
        let act = if self.values.contains(prefix) {
            module(&format!("{NN}.activation"), "SiLU", vec![], vec![], vec![], vec![("inplace", Py::Bool(true))])
        } else {
            module(&format!("{NN}.linear"), "Identity", vec![], vec![], vec![], vec![])
        };
        let children = vec![("conv".into(), conv), ("bn".into(), bn), ("act".into(), act)];
        Ok(module(CONV_PY, class, vec![], vec![], children, top))
    }

    pub(super) fn bottleneck(&mut self, prefix: &str) -> Result<Py> {
        let children = vec![
            ("cv1".into(), self.conv(&format!("{prefix}.cv1"), vec![])?),
            ("cv2".into(), self.conv(&format!("{prefix}.cv2"), vec![])?),
        ];
        let add = self.values.contains(&format!("{prefix}.add"));
        Ok(module(BLOCK_PY, "Bottleneck", vec![], vec![], children, vec![("add", Py::Bool(add))]))
    }

    /// A `C3` (or its subclass `C3k`): `cv1`, `cv2`, `cv3` and the bottlenecks `m`.
    pub(super) fn c3(&mut self, prefix: &str, class: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let mut children = vec![];
        for cv in ["cv1", "cv2", "cv3"] {
            children.push((cv.to_string(), self.conv(&format!("{prefix}.{cv}"), vec![])?));
        }
        let m = (0..self.count(&format!("{prefix}.m")))
            .map(|j| self.bottleneck(&format!("{prefix}.m.{j}")))
            .collect::<Result<Vec<_>>>()?;
        children.push(("m".into(), self.container("Sequential", m)));
        Ok(module(BLOCK_PY, class, vec![], vec![], children, top))
    }

    /// Half of `prefix.cv1`'s output channels (`C2f`'s and `C2PSA`'s `c`), which Ultralytics
    /// chunks into two equal halves: an error when pruning left them unequal.
    pub(super) fn half(&self, prefix: &str) -> Result<Py> {
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
    pub(super) fn halves_block(
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
        Ok(module(BLOCK_PY, class, vec![], vec![], children, [vec![("c", c)], top].concat()))
    }

    /// A `C3k2` block: a `C3k` where it has one, else a `Bottleneck`.
    pub(super) fn c3k2_member(&mut self, p: &str) -> Result<Py> {
        if self.has(&format!("{p}.cv3")) {
            self.c3(p, "C3k", vec![])
        } else {
            self.bottleneck(p)
        }
    }

    pub(super) fn sppf(&mut self, prefix: &str, k: usize, top: Vec<(&str, Py)>) -> Result<Py> {
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
        Ok(module(BLOCK_PY, "SPPF", vec![], vec![], children, top))
    }

    pub(super) fn attention(&mut self, prefix: &str) -> Result<Py> {
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
        Ok(module(BLOCK_PY, "Attention", vec![], vec![], children, attrs))
    }

    pub(super) fn psa_block(&mut self, p: &str) -> Result<Py> {
        let attn = self.attention(&format!("{p}.attn"))?;
        let ffn = vec![self.conv(&format!("{p}.ffn.0"), vec![])?, self.conv(&format!("{p}.ffn.1"), vec![])?];
        let children = vec![("attn".into(), attn), ("ffn".into(), self.container("Sequential", ffn))];
        Ok(module(BLOCK_PY, "PSABlock", vec![], vec![], children, vec![("add", Py::Bool(true))]))
    }

    /// An attention's `qkv`, `proj` and `pe` convs (C2PSA's `Attention` and YOLO12's `AAttn`).
    pub(super) fn attention_convs(&mut self, prefix: &str) -> Result<Vec<(String, Py)>> {
        ["qkv", "proj", "pe"]
            .iter()
            .map(|c| Ok((c.to_string(), self.conv(&format!("{prefix}.{c}"), vec![])?)))
            .collect()
    }

    /// YOLO12's `AAttn` at `prefix` (`area` from the graph's view of the sequence).
    pub(super) fn area_attention(&mut self, prefix: &str) -> Result<Py> {
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
        Ok(module(BLOCK_PY, "AAttn", vec![], vec![], children, attrs))
    }

    /// YOLO12's `ABlock`: area attention and its MLP.
    pub(super) fn ablock(&mut self, p: &str) -> Result<Py> {
        let attn = self.area_attention(&format!("{p}.attn"))?;
        let mlp = vec![self.conv(&format!("{p}.mlp.0"), vec![])?, self.conv(&format!("{p}.mlp.1"), vec![])?];
        let children = vec![("attn".into(), attn), ("mlp".into(), self.container("Sequential", mlp))];
        Ok(module(BLOCK_PY, "ABlock", vec![], vec![], children, vec![]))
    }

    /// An `A2C2f` member: two `ABlock`s in a `Sequential`, or a `C3k`.
    pub(super) fn a2c2f_member(&mut self, p: &str) -> Result<Py> {
        if self.has(&format!("{p}.cv3")) {
            return self.c3(p, "C3k", vec![]);
        }
        let blocks = vec![self.ablock(&format!("{p}.0"))?, self.ablock(&format!("{p}.1"))?];
        Ok(self.container("Sequential", blocks))
    }

    /// YOLO12's `A2C2f`: `cv1`, the blocks `m`, `cv2` and, for scales l and x, the `gamma`
    /// parameter of its residual.
    pub(super) fn a2c2f(&mut self, prefix: &str, top: Vec<(&str, Py)>) -> Result<Py> {
        let cv1 = self.conv(&format!("{prefix}.cv1"), vec![])?;
        let cv2 = self.conv(&format!("{prefix}.cv2"), vec![])?;
        let n = self.count(&format!("{prefix}.m"));
        let m = (0..n).map(|j| self.a2c2f_member(&format!("{prefix}.m.{j}"))).collect::<Result<Vec<_>>>()?;
        let children = vec![("cv1".into(), cv1), ("cv2".into(), cv2), ("m".into(), self.container("ModuleList", m))];
        let gamma = format!("{prefix}.gamma");
        if self.model.tensors.contains_key(&gamma) {
            let params = vec![("gamma", self.param(&gamma)?)];
            Ok(module(BLOCK_PY, "A2C2f", params, vec![], children, top))
        } else {
            Ok(module(BLOCK_PY, "A2C2f", vec![], vec![], children, [vec![("gamma", Py::None)], top].concat()))
        }
    }

    pub(super) fn detect(&mut self, prefix: &str, nc: usize, top: Vec<(&str, Py)>) -> Result<Py> {
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
            BLOCK_PY,
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
        Ok(module(HEAD_PY, "Detect", vec![], vec![], children, [attrs, top].concat()))
    }
}
