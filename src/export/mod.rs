//! IR to ONNX, laid out as Ultralytics exports its detectors: input `images` (N, 3, H, W), output
//! `output0` (N, 4+nc, anchors) with cx, cy, w, h in input pixels then class scores.
//!
//! The graph is first specialised to the export size; BN is folded unless kept; with a static
//! shape the anchors are folded to constants (as Ultralytics' static export has them), with
//! `dynamic` they are rebuilt from the feature-map shapes inside the ONNX graph.

pub mod pt;

use crate::frontend::onnx::onnx_binary;
use anyhow::{anyhow, bail, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, Message, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use slimc_ir::{Anchors, Axis, BatchNorm, Pool, Reshape, Slice, Split, Transpose, Unary, UnaryGrad, Upsample};
use slimc_ir::{DType, Dim, Model, Op, ReshapeDim, Tensor, TensorData, TensorType, ValueId};
use slimc_passes::sequences;
use std::collections::HashMap;

/// Export settings.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// ONNX opset (13–22).
    pub opset: i64,
    /// Image size (h, w); `None` uses the model's own.
    pub imgsz: Option<[usize; 2]>,
    /// Symbolic batch, height and width.
    pub dynamic: bool,
    /// Keep BatchNormalization nodes instead of folding them into the convs.
    pub keep_bn: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: 17, imgsz: None, dynamic: false, keep_bn: false }
    }
}

/// The error for an op of a training program, which has no ONNX form.
fn training_only(op: &Op, scope: &str) -> Result<()> {
    bail!("{} @{scope} belongs to a training program and has no ONNX form", op.name())
}

/// The ONNX IR version that goes with an opset.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INT.into(), i: v, ..Default::default() }
}
fn attr_is(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::INTS.into(), ints: v.to_vec(), ..Default::default() }
}
fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), type_: AttributeType::FLOAT.into(), f: v, ..Default::default() }
}
fn attr_s(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}
fn us(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Converts a slimc tensor to an ONNX initializer.
pub fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let data_type = match &t.data {
        TensorData::F32(_) => 1,
        TensorData::I64(_) => 7,
    };
    let raw_data = t.data.le_bytes().into_owned();
    TensorProto { name: name.into(), dims: us(&t.shape), data_type, raw_data, ..Default::default() }
}

fn value_info(name: &str, ty: &TensorType, dims: &[Option<&str>]) -> ValueInfoProto {
    let dim = ty
        .shape
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let value = match (dims.get(i).copied().flatten(), d) {
                (Some(p), _) => tensor_shape_proto::dimension::Value::DimParam(p.into()),
                (None, Dim::Fixed(n)) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                (None, Dim::Sym(s)) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            };
            tensor_shape_proto::Dimension { value: Some(value), ..Default::default() }
        })
        .collect();
    let elem_type = match ty.dtype {
        DType::F32 => 1,
        DType::I64 => 7,
    };
    let tt = type_proto::Tensor {
        elem_type,
        shape: Some(TensorShapeProto { dim, ..Default::default() }).into(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto { value: Some(type_proto::Value::TensorType(tt)), ..Default::default() }).into(),
        ..Default::default()
    }
}

/// Builds ONNX nodes and initializers.
struct Emitter<'m> {
    model: &'m Model,
    names: HashMap<ValueId, String>,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    counter: usize,
    dynamic: bool,
}

impl Emitter<'_> {
    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}_{}", self.counter)
    }
    /// Appends a node; it is named after its scope and first output, so names are unique.
    fn node(&mut self, op: &str, ins: &[String], outs: &[String], attrs: Vec<AttributeProto>, scope: &str) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            input: ins.to_vec(),
            output: outs.to_vec(),
            attribute: attrs,
            name: format!("{scope}:{}", outs[0]),
            ..Default::default()
        });
    }
    fn node1(&mut self, op: &str, ins: &[String], attrs: Vec<AttributeProto>, base: &str) -> String {
        let o = self.fresh(base);
        self.node(op, ins, std::slice::from_ref(&o), attrs, base);
        o
    }
    fn const_i64(&mut self, v: &[i64], base: &str) -> String {
        let name = self.fresh(base);
        self.inits.push(tensor_proto(&name, &Tensor { shape: vec![v.len()], data: TensorData::I64(v.to_vec()) }));
        name
    }
    fn const_t(&mut self, t: Tensor, base: &str) -> String {
        let name = self.fresh(base);
        self.inits.push(tensor_proto(&name, &t));
        name
    }
    fn name(&self, v: ValueId) -> String {
        self.names.get(&v).cloned().unwrap_or_else(|| self.model.graph.value(v).name.clone())
    }
    /// A 1-D i64 tensor holding dimension `axis` of value `v` (a constant when static).
    fn dim(&mut self, v: ValueId, axis: usize, base: &str) -> String {
        match (self.dynamic, &self.model.graph.ty(v).shape[axis]) {
            (false, Dim::Fixed(n)) => self.const_i64(&[*n as i64], base),
            _ => {
                let x = self.name(v);
                let shape = self.node1("Shape", &[x], vec![], &format!("{base}_shape"));
                let idx = self.const_i64(&[axis as i64], base);
                self.node1("Gather", &[shape, idx], vec![attr_i("axis", 0)], &format!("{base}_dim"))
            }
        }
    }

    fn emit(&mut self, i: usize) -> Result<()> {
        let g = &self.model.graph;
        let n = &g.nodes[i];
        let ins: Vec<String> = n.inputs.iter().map(|&v| self.name(v)).collect();
        let outs: Vec<String> = n.outputs.iter().map(|&v| self.name(v)).collect();
        let base = if n.scope.is_empty() { format!("n{i}") } else { format!("{}/{}", n.scope, n.op.name()) };
        match &n.op {
            Op::Conv2d(c) => {
                let w = g.ty(n.inputs[1]).fixed_shape().unwrap_or_default();
                let attrs = vec![
                    attr_is("kernel_shape", &us(&w[2..])),
                    attr_is("strides", &us(&c.stride)),
                    attr_is("pads", &us(&c.pad)),
                    attr_is("dilations", &us(&c.dilation)),
                    attr_i("group", c.groups as i64),
                ];
                self.node("Conv", &ins, &outs, attrs, &base);
            }
            Op::BatchNorm(BatchNorm { eps, momentum }) => {
                self.node(
                    "BatchNormalization",
                    &ins,
                    &outs,
                    vec![attr_f("epsilon", *eps), attr_f("momentum", 1.0 - momentum)],
                    &base,
                );
            }
            Op::Unary(Unary::Silu) => {
                let s = self.node1("Sigmoid", &ins, vec![], &base);
                self.node("Mul", &[ins[0].clone(), s], &outs, vec![], &base);
            }
            Op::Unary(Unary::Sigmoid) => self.node("Sigmoid", &ins, &outs, vec![], &base),
            Op::Binary(b) => self.node(onnx_binary(*b), &ins, &outs, vec![], &base),
            Op::MatMul => self.node("MatMul", &ins, &outs, vec![], &base),
            Op::Concat(Axis { axis }) => self.node("Concat", &ins, &outs, vec![attr_i("axis", *axis as i64)], &base),
            Op::Split(Split { axis, sizes }) => {
                let s = self.const_i64(&us(sizes), &format!("{base}_sizes"));
                self.node("Split", &[ins[0].clone(), s], &outs, vec![attr_i("axis", *axis as i64)], &base);
            }
            Op::Slice(Slice { axes, starts, ends, steps }) => {
                let a = [
                    self.const_i64(starts, &base),
                    self.const_i64(ends, &base),
                    self.const_i64(&us(axes), &base),
                    self.const_i64(steps, &base),
                ];
                self.node(
                    "Slice",
                    &[ins[0].clone(), a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone()],
                    &outs,
                    vec![],
                    &base,
                );
            }
            Op::MaxPool2d(Pool { kernel, stride, pad }) => {
                let attrs = vec![
                    attr_is("kernel_shape", &us(kernel)),
                    attr_is("strides", &us(stride)),
                    attr_is("pads", &us(pad)),
                    attr_i("ceil_mode", 0),
                ];
                self.node("MaxPool", &ins, &outs, attrs, &base);
            }
            Op::UpsampleNearest(Upsample { scale }) => {
                let s = self.const_t(
                    Tensor::from_f32(vec![4], vec![1.0, 1.0, scale[0] as f32, scale[1] as f32])?,
                    &format!("{base}_scales"),
                );
                let attrs = vec![
                    attr_s("mode", "nearest"),
                    attr_s("coordinate_transformation_mode", "asymmetric"),
                    attr_s("nearest_mode", "floor"),
                ];
                self.node("Resize", &[ins[0].clone(), String::new(), s], &outs, attrs, &base);
            }
            Op::Reshape(Reshape { shape }) => {
                let static_ok = !self.dynamic || shape.iter().all(|d| !matches!(d, ReshapeDim::Of { .. }));
                let target = if static_ok {
                    let dims: Vec<i64> = shape
                        .iter()
                        .map(|d| match d {
                            ReshapeDim::Fixed(k) => Ok(*k as i64),
                            ReshapeDim::Infer => Ok(-1),
                            ReshapeDim::Of { input, axis } => g.ty(n.inputs[*input]).shape[*axis]
                                .fixed()
                                .map(|k| k as i64)
                                .ok_or_else(|| anyhow!("symbolic reshape dimension in a static export")),
                        })
                        .collect::<Result<_>>()?;
                    self.const_i64(&dims, &format!("{base}_shape"))
                } else {
                    let parts: Vec<String> = shape
                        .iter()
                        .map(|d| match d {
                            ReshapeDim::Fixed(k) => self.const_i64(&[*k as i64], &base),
                            ReshapeDim::Infer => self.const_i64(&[-1], &base),
                            ReshapeDim::Of { input, axis } => self.dim(n.inputs[*input], *axis, &base),
                        })
                        .collect();
                    self.node1("Concat", &parts, vec![attr_i("axis", 0)], &format!("{base}_shape"))
                };
                self.node("Reshape", &[ins[0].clone(), target], &outs, vec![], &base);
            }
            Op::Transpose(Transpose { perm }) => {
                self.node("Transpose", &ins, &outs, vec![attr_is("perm", &us(perm))], &base)
            }
            Op::Softmax(Axis { axis }) => self.node("Softmax", &ins, &outs, vec![attr_i("axis", *axis as i64)], &base),
            Op::Anchors(Anchors { strides, offset }) => {
                self.emit_anchors(n.inputs.clone(), strides.clone(), *offset, &outs, &base)?
            }
            Op::Unary(Unary::Sign) | Op::UnaryGrad(UnaryGrad::Silu | UnaryGrad::Sigmoid) => {
                return training_only(&n.op, &n.scope)
            }
            Op::Conv2dGradInput(_) | Op::Conv2dGradWeight(_) => return training_only(&n.op, &n.scope),
            Op::BatchNormTrain(_) | Op::BatchNormGrad | Op::SoftmaxGrad(_) | Op::MaxPool2dGrad(_) => {
                return training_only(&n.op, &n.scope)
            }
            Op::UpsampleNearestGrad(_) | Op::SliceGrad(_) | Op::SumTo | Op::DetectLoss(_) | Op::DetectLossGrad(_) => {
                return training_only(&n.op, &n.scope)
            }
            Op::DistillLoss(_) | Op::DistillLossGrad(_) => return training_only(&n.op, &n.scope),
            Op::Accumulate | Op::GlobalNorm | Op::SgdUpdate(_) | Op::AdamWUpdate(_) | Op::EmaUpdate => {
                return training_only(&n.op, &n.scope)
            }
            Op::AllReduce | Op::Broadcast(_) => return training_only(&n.op, &n.scope),
        }
        Ok(())
    }

    /// Anchor points and strides rebuilt from the level shapes (dynamic export).
    fn emit_anchors(
        &mut self,
        levels: Vec<ValueId>,
        strides: Vec<f32>,
        offset: f32,
        outs: &[String],
        base: &str,
    ) -> Result<()> {
        let (mut pts, mut sts) = (vec![], vec![]);
        let zero = self.const_t(Tensor::from_i64(vec![], vec![0])?, base);
        let one = self.const_t(Tensor::from_i64(vec![], vec![1])?, base);
        let off = self.const_t(Tensor::scalar(offset), base);
        let flat = self.const_i64(&[1, -1], base);
        for (k, (&f, &s)) in levels.iter().zip(&strides).enumerate() {
            let b = format!("{base}{k}");
            let h = self.dim(f, 2, &b);
            let w = self.dim(f, 3, &b);
            let axis0 = self.const_i64(&[0], &b);
            let hs = self.node1("Squeeze", &[h.clone(), axis0.clone()], vec![], &b);
            let ws = self.node1("Squeeze", &[w.clone(), axis0], vec![], &b);
            let coord = |e: &mut Self, lim: String| -> String {
                let r = e.node1("Range", &[zero.clone(), lim, one.clone()], vec![], &b);
                let r = e.node1("Cast", &[r], vec![attr_i("to", 1)], &b);
                e.node1("Add", &[r, off.clone()], vec![], &b)
            };
            let xs = coord(self, ws);
            let ys = coord(self, hs);
            let hw = self.node1("Concat", &[h.clone(), w.clone()], vec![attr_i("axis", 0)], &b);
            let a0 = self.const_i64(&[0], &b);
            let a1 = self.const_i64(&[1], &b);
            let xr = self.node1("Unsqueeze", &[xs, a0], vec![], &b);
            let yc = self.node1("Unsqueeze", &[ys, a1], vec![], &b);
            let gx = self.node1("Expand", &[xr, hw.clone()], vec![], &b);
            let gy = self.node1("Expand", &[yc, hw], vec![], &b);
            let gx = self.node1("Reshape", &[gx, flat.clone()], vec![], &b);
            let gy = self.node1("Reshape", &[gy, flat.clone()], vec![], &b);
            pts.push(self.node1("Concat", &[gx.clone(), gy], vec![attr_i("axis", 0)], &b));
            let sv = self.const_t(Tensor::from_f32(vec![1, 1], vec![s])?, &b);
            let n = self.node1("Mul", &[h, w], vec![], &b);
            let one_d = self.const_i64(&[1], &b);
            let shape = self.node1("Concat", &[one_d, n], vec![attr_i("axis", 0)], &b);
            sts.push(self.node1("Expand", &[sv, shape], vec![], &b));
        }
        self.node("Concat", &pts, &outs[..1], vec![attr_i("axis", 1)], base);
        self.node("Concat", &sts, &outs[1..2], vec![attr_i("axis", 1)], base);
        Ok(())
    }
}

/// Sets every subnormal float32 value of the model's tensors (0 < |x| < 2^-126) to zero and
/// returns how many there were. x86 computes with subnormals in microcode, so a model holding
/// them runs several times slower in onnxruntime; they change no output beyond 1e-38. Sparse
/// training makes them: the EMA of a BN gamma the L1 step holds at exactly 0 decays
/// geometrically through the subnormal range, and BN folding multiplies such a gamma into every
/// weight of its channel.
pub fn flush_subnormals(model: &mut Model) -> usize {
    let mut n = 0;
    for t in model.tensors.values_mut() {
        if let Ok(v) = t.f32s_mut() {
            for x in v.iter_mut().filter(|x| x.is_subnormal()) {
                *x = 0.0;
                n += 1;
            }
        }
    }
    n
}

/// An exported model.
pub struct Exported {
    /// The ONNX file's bytes.
    pub bytes: Vec<u8>,
    /// Subnormal weights set to zero ([`flush_subnormals`]).
    pub flushed: usize,
}

/// Prepares the model for export (size, BN folding, anchor folding) and returns it.
fn prepare(model: &Model, opts: &ExportOptions) -> Result<Model> {
    if !(13..=22).contains(&opts.opset) {
        bail!("opset {} is not supported for export (13-22)", opts.opset);
    }
    let mut m = model.clone();
    let imgsz = opts.imgsz.unwrap_or(m.meta.imgsz);
    let types = m.graph.image_input_types(1, imgsz);
    m.graph.set_input_types(&types).map_err(|e| anyhow!("cannot export at {}x{}: {e}", imgsz[0], imgsz[1]))?;
    m.meta.imgsz = imgsz;
    let mut disabled = vec![];
    if opts.keep_bn {
        disabled.push("fold-bn".to_string());
    }
    if opts.dynamic {
        disabled.push("fold-constants".to_string());
    }
    sequences::EXPORT.manager().disable(&disabled)?.run(&mut m)?;
    m.check()?;
    Ok(m)
}

/// Exports a model to ONNX, its subnormal weights (after BN folding) flushed to zero.
pub fn export_onnx(model: &Model, opts: &ExportOptions) -> Result<Exported> {
    let mut m = prepare(model, opts)?;
    let flushed = flush_subnormals(&mut m);
    let g = &m.graph;
    if g.inputs.len() != 1 || g.outputs.is_empty() {
        bail!("export expects one image input, the graph has {}", g.inputs.len());
    }
    let mut names = HashMap::new();
    names.insert(g.inputs[0], "images".to_string());
    names.insert(g.outputs[0], "output0".to_string());
    let mut e = Emitter { model: &m, names, nodes: vec![], inits: vec![], counter: 0, dynamic: opts.dynamic };
    for &p in &g.params {
        let name = g.value(p).name.clone();
        e.inits.push(tensor_proto(&name, &m.tensors[&name]));
    }
    for i in 0..g.nodes.len() {
        e.emit(i)?;
    }
    let dyn_in: Vec<Option<&str>> =
        if opts.dynamic { vec![Some("batch"), None, Some("height"), Some("width")] } else { vec![] };
    let dyn_out: Vec<Option<&str>> = if opts.dynamic { vec![Some("batch"), None, Some("anchors")] } else { vec![] };
    let input = value_info("images", g.ty(g.inputs[0]), &dyn_in);
    let outputs = g
        .outputs
        .iter()
        .enumerate()
        .map(|(k, &o)| value_info(&e.name(o), g.ty(o), if k == 0 { &dyn_out } else { &[] }))
        .collect();
    let graph = GraphProto {
        name: g.name.clone(),
        node: e.nodes,
        initializer: e.inits,
        input: vec![input],
        output: outputs,
        ..Default::default()
    };
    let meta = &m.meta;
    let names_str = format!(
        "{{{}}}",
        meta.names.iter().enumerate().map(|(i, n)| format!("{i}: '{n}'")).collect::<Vec<_>>().join(", ")
    );
    let stride = meta.strides.iter().fold(32.0f32, |a, &b| a.max(b)) as i64;
    let props = [
        ("description", format!("slimc export of {}", g.name)),
        ("author", "slimc".to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("task", "detect".to_string()),
        ("stride", stride.to_string()),
        ("batch", "1".to_string()),
        ("imgsz", format!("[{}, {}]", meta.imgsz[0], meta.imgsz[1])),
        ("names", names_str),
        ("channels", "3".to_string()),
    ];
    let proto = ModelProto {
        ir_version: ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opts.opset, ..Default::default() }],
        producer_name: "slimc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph).into(),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: k.into(), value: v, ..Default::default() })
            .collect(),
        ..Default::default()
    };
    Ok(Exported { bytes: proto.write_to_bytes()?, flushed })
}
