//! ONNX files (opsets 13–22) lowered to slimc IR.
//!
//! Nodes are lowered in file order. Shape computations (Shape, Gather, Unsqueeze, Concat of
//! constants, integer arithmetic...) are folded while importing: every node whose operands are
//! all known is evaluated with the IR's reference semantics ([`slimc_ir::eval`]) or, for the
//! few ONNX-only shape ops, here; the constants that reach real ops become attributes or
//! constant parameters. `mul(x, sigmoid(x))` is recognised as `silu`.

mod fold;
mod lower;
mod proto;

use anyhow::{anyhow, bail, Context, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto, Message, ModelProto, NodeProto,
};
pub(crate) use proto::onnx_binary;
pub use proto::tensor_from_proto;
use proto::*;
use slimc_ir::Unary;
use slimc_ir::{DType, Dim, Graph, Metadata, Model, Op, ParamKind, Tensor, TensorType, ValueId};
use slimc_passes::sequences;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Opsets the importer accepts.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=22;

/// What an ONNX value name stands for while importing.
#[derive(Clone)]
enum Slot {
    /// A value computed at run time.
    Value(ValueId),
    /// A value known at import time.
    Known(Tensor),
}

struct Importer {
    g: Graph,
    tensors: BTreeMap<String, Tensor>,
    slots: HashMap<String, Slot>,
    /// Params already created for known values, by ONNX name.
    params: HashMap<String, ValueId>,
    /// Sigmoid results: output name → input value, for the SiLU pattern.
    sigmoid_of: HashMap<ValueId, ValueId>,
}

fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "_./-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "v".to_string()
    } else {
        s
    }
}

/// The module path of an ONNX node name such as `/model.2/cv1/conv/Conv` (`model.2.cv1.conv`).
fn scope_of(node: &NodeProto) -> String {
    let parts: Vec<&str> = node.name.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 {
        return String::new();
    }
    parts[..parts.len() - 1].join(".")
}

impl Importer {
    fn new(name: &str) -> Importer {
        Importer {
            g: Graph::new(name),
            tensors: BTreeMap::new(),
            slots: HashMap::new(),
            params: HashMap::new(),
            sigmoid_of: HashMap::new(),
        }
    }

    fn slot(&self, name: &str, node: &NodeProto) -> Result<Slot> {
        self.slots.get(name).cloned().ok_or_else(|| {
            anyhow!("node {} ({}) reads `{name}`, which nothing defines before it", node.name, node.op_type)
        })
    }

    fn known(&self, node: &NodeProto, i: usize) -> Result<Option<Tensor>> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(n) => match self.slot(n, node)? {
                Slot::Known(t) => Ok(Some(t)),
                Slot::Value(_) => bail!("input {i} (`{n}`) must be a constant known at import time (dynamic shapes are not supported; fix the input size with --imgsz)"),
            },
        }
    }

    /// The IR value for input `i`, turning a known tensor into a parameter of `kind`.
    fn value(&mut self, node: &NodeProto, i: usize, kind: ParamKind) -> Result<ValueId> {
        let name = node
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("node {} ({}) lacks input {i}", node.name, node.op_type))?;
        match self.slot(name, node)? {
            Slot::Value(v) => Ok(v),
            Slot::Known(t) => {
                if let Some(&v) = self.params.get(name) {
                    return Ok(v);
                }
                let pname = self.g.fresh_name(&sanitize(name));
                let v = self.g.add_param(&pname, t.ty(), kind);
                self.tensors.insert(pname, t);
                self.params.insert(name.clone(), v);
                Ok(v)
            }
        }
    }

    fn emit(&mut self, node: &NodeProto, op: Op, inputs: &[ValueId]) -> Result<()> {
        let names: Vec<String> = node.output.iter().map(|o| sanitize(o)).collect();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let outs = self.g.add_node(op, inputs, &refs, &scope_of(node))?;
        for (o, v) in node.output.iter().zip(outs) {
            self.slots.insert(o.clone(), Slot::Value(v));
        }
        Ok(())
    }

    fn rank_of(&self, node: &NodeProto, i: usize) -> Result<usize> {
        Ok(match self.slot(&node.input[i], node)? {
            Slot::Value(v) => self.g.ty(v).rank(),
            Slot::Known(t) => t.shape.len(),
        })
    }

    fn import_node(&mut self, node: &NodeProto) -> Result<()> {
        let op = node.op_type.as_str();
        check_arity(node)?;
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            bail!("op {}:{op} is from an unsupported domain", node.domain);
        }
        if op == "Constant" {
            let a = node.attribute.first().ok_or_else(|| anyhow!("Constant without a value"))?;
            let t = match (a.name.as_str(), a.type_.enum_value()) {
                ("value", _) => tensor_from_proto(a.t.as_ref().ok_or_else(|| anyhow!("Constant without a tensor"))?)?,
                ("value_float", _) => Tensor::scalar(a.f),
                ("value_floats", _) => Tensor::from_f32(vec![a.floats.len()], a.floats.clone())?,
                ("value_int", _) => Tensor::from_i64(vec![], vec![a.i])?,
                ("value_ints", Ok(AttributeType::INTS)) => Tensor::from_i64(vec![a.ints.len()], a.ints.clone())?,
                (other, _) => bail!("Constant with attribute `{other}` is not supported"),
            };
            self.slots.insert(node.output[0].clone(), Slot::Known(t));
            return Ok(());
        }
        if op == "Shape" {
            let ty = match self.slot(&node.input[0], node)? {
                Slot::Value(v) => self.g.ty(v).clone(),
                Slot::Known(t) => t.ty(),
            };
            let dims = ty.fixed_shape().ok_or_else(|| {
                anyhow!("Shape of a value with a symbolic dimension cannot be folded; fix the input size with --imgsz")
            })?;
            let r = dims.len() as i64;
            let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let (s, e) = (clampi(attr_int(node, "start", 0)), clampi(attr_int(node, "end", r)));
            let v: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
            self.slots.insert(node.output[0].clone(), Slot::Known(Tensor::from_i64(vec![v.len()], v)?));
            return Ok(());
        }
        let ins: Vec<Option<Tensor>> = node
            .input
            .iter()
            .map(|n| {
                if n.is_empty() {
                    Ok(None)
                } else {
                    self.slot(n, node).map(|s| if let Slot::Known(t) = s { Some(t) } else { None })
                }
            })
            .collect::<Result<_>>()?;
        let all_known = node.input.iter().zip(&ins).all(|(n, t)| n.is_empty() || t.is_some());
        if all_known && !node.input.is_empty() {
            if let Some(outs) = self.fold(node, &ins)? {
                for (o, t) in node.output.iter().zip(outs) {
                    self.slots.insert(o.clone(), Slot::Known(t));
                }
                return Ok(());
            }
        }
        if op == "Identity" {
            let s = self.slot(&node.input[0], node)?;
            self.slots.insert(node.output[0].clone(), s);
            return Ok(());
        }
        match self.lower_op(node)? {
            Some((o, ins)) => {
                let is_sigmoid = matches!(o, Op::Unary(Unary::Sigmoid));
                self.emit(node, o, &ins)?;
                if is_sigmoid {
                    if let Some(Slot::Value(v)) = self.slots.get(&node.output[0]) {
                        self.sigmoid_of.insert(*v, ins[0]);
                    }
                }
                Ok(())
            }
            None => bail!("unsupported op {op}"),
        }
    }
}

/// Imports an ONNX file. `imgsz` fixes symbolic height and width (and the batch is fixed to 1)
/// when the file's input has symbolic dimensions.
pub fn import_onnx(path: &Path, imgsz: Option<[usize; 2]>) -> Result<Model> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).with_context(|| format!("{file}: cannot read"))?;
    let proto = ModelProto::parse_from_bytes(&bytes).map_err(|e| anyhow!("{file}: not a valid ONNX model: {e}"))?;
    import_proto(&proto, &file, imgsz)
}

/// Imports a parsed ONNX model; `file` names it in errors.
pub fn import_proto(proto: &ModelProto, file: &str, imgsz: Option<[usize; 2]>) -> Result<Model> {
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| anyhow!("{file}: no default-domain opset is imported"))?;
    if !OPSETS.contains(&opset) {
        bail!("{file}: opset {opset} is not supported (slimc reads opsets {}-{})", OPSETS.start(), OPSETS.end());
    }
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("{file}: the model has no graph"))?;
    let stem = Path::new(file).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let mut im = Importer::new(&sanitize(&stem));
    for init in &graph.initializer {
        let t = tensor_from_proto(init).map_err(|e| anyhow!("{file}: initializer: {e}"))?;
        im.slots.insert(init.name.clone(), Slot::Known(t));
    }
    for input in &graph.input {
        if im.slots.contains_key(&input.name) {
            continue;
        }
        let Some(type_proto::Value::TensorType(tt)) = input.type_.as_ref().and_then(|t| t.value.clone()) else {
            bail!("{file}: input {} is not a tensor", input.name);
        };
        if tt.elem_type != 1 {
            bail!("{file}: input {} has element type {}; slimc models take float32 images", input.name, tt.elem_type);
        }
        let dims = tt.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
        let mut shape = vec![];
        for (i, d) in dims.iter().enumerate() {
            shape.push(match &d.value {
                Some(dimension::Value::DimValue(v)) if *v > 0 => Dim::Fixed(*v as usize),
                _ => match (i, imgsz) {
                    (0, _) => Dim::Fixed(1),
                    (2, Some(s)) => Dim::Fixed(s[0]),
                    (3, Some(s)) => Dim::Fixed(s[1]),
                    _ => bail!("{file}: input {} has a symbolic dimension {i}; pass --imgsz to fix it", input.name),
                },
            });
        }
        let v = im.g.add_input(&sanitize(&input.name), TensorType { dtype: DType::F32, shape });
        im.slots.insert(input.name.clone(), Slot::Value(v));
    }
    for (i, node) in graph.node.iter().enumerate() {
        im.import_node(node)
            .map_err(|e| anyhow!("{file}: node {i} `{}` ({}, opset {opset}): {e}", node.name, node.op_type))?;
    }
    for out in &graph.output {
        let v = im
            .value(
                &NodeProto { name: "output".into(), input: vec![out.name.clone()], ..Default::default() },
                0,
                ParamKind::Const,
            )
            .map_err(|e| anyhow!("{file}: output {}: {e}", out.name))?;
        im.g.outputs.push(v);
    }
    let input_shape = im.g.inputs.first().and_then(|&v| im.g.ty(v).fixed_shape()).unwrap_or_default();
    let meta = metadata(proto, &im.g, &input_shape);
    let mut model = Model { graph: im.g, tensors: im.tensors, meta, training_state: vec![] };
    sequences::IMPORT.manager().run(&mut model).map_err(|e| anyhow!("{file}: {e}"))?;
    model.check().map_err(|e| anyhow!("{file}: imported graph does not verify: {e}"))?;
    Ok(model)
}

/// Ultralytics' metadata (names, stride, imgsz) when present; otherwise what the graph implies.
fn metadata(proto: &ModelProto, g: &Graph, input_shape: &[usize]) -> Metadata {
    let prop = |k: &str| proto.metadata_props.iter().find(|p| p.key == k).map(|p| p.value.clone());
    let nc = g
        .outputs
        .first()
        .and_then(|&o| g.ty(o).shape.get(1).and_then(|d| d.fixed()))
        .map(|c| c.saturating_sub(4))
        .unwrap_or(0);
    let names = prop("names")
        .map(|s| parse_names(&s))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| (0..nc).map(|i| format!("class{i}")).collect());
    let imgsz = match input_shape {
        [_, _, h, w] => [*h, *w],
        _ => [0, 0],
    };
    let max_stride = prop("stride").and_then(|s| s.trim().parse::<f32>().ok()).unwrap_or(32.0);
    let strides = [8.0, 16.0, 32.0].into_iter().filter(|&s| s <= max_stride).collect();
    Metadata { names, strides, imgsz, source: proto.producer_name.clone(), ..Default::default() }
}

/// Parses Ultralytics' names string `{0: 'person', 1: 'car'}`.
pub fn parse_names(s: &str) -> Vec<String> {
    let inner = s.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out: Vec<(usize, String)> = vec![];
    for item in inner.split(',') {
        if let Some((k, v)) = item.split_once(':') {
            if let Ok(k) = k.trim().parse::<usize>() {
                out.push((k, v.trim().trim_matches(|c| c == '\'' || c == '"').to_string()));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, v)| v).collect()
}
