//! The graph: SSA values, nodes in topological order, inputs, parameters and outputs.

use crate::error::{invalid, Result};
use crate::infer::infer_types;
use crate::op::Op;
use crate::tensor::TensorType;
use std::collections::{HashMap, HashSet};

/// Index of a value in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// Index of a node in [`Graph::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// What a parameter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// Trainable (conv weights and biases, BN gamma and beta).
    Weight,
    /// A parameter that is never trained (the Detect head's fixed DFL conv).
    Frozen,
    /// State that is not trained by gradient (BN running statistics, the DFL's fixed conv).
    Buffer,
    /// A constant produced by import or folding (anchors, scales).
    Const,
}

impl ParamKind {
    /// The keyword in the text form.
    pub fn keyword(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Frozen => "frozen",
            ParamKind::Buffer => "buffer",
            ParamKind::Const => "const",
        }
    }
    /// Parses a keyword.
    pub fn from_keyword(s: &str) -> Option<ParamKind> {
        match s {
            "weight" => Some(ParamKind::Weight),
            "frozen" => Some(ParamKind::Frozen),
            "buffer" => Some(ParamKind::Buffer),
            "const" => Some(ParamKind::Const),
            _ => None,
        }
    }
}

/// Where a value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueDef {
    /// A graph input.
    Input,
    /// A named tensor held in the model (weights, buffers, constants).
    Param(ParamKind),
    /// Output `.1` of node `.0`.
    Node(NodeId, usize),
}

/// An SSA value.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Unique name; for parameters, the tensor's name (e.g. `model.2.cv1.bn.weight`).
    pub name: String,
    /// Static type.
    pub ty: TensorType,
    /// Definition.
    pub def: ValueDef,
}

/// One operation applied to values.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result values.
    pub outputs: Vec<ValueId>,
    /// The module path this node came from (e.g. `model.2.cv1`); empty if none.
    pub scope: String,
}

/// The suffix of a state update's name: an output `<param>.next` is the parameter's next value
/// (see [`Graph::state_updates`]).
pub const NEXT_SUFFIX: &str = ".next";

/// A dataflow graph in SSA form with nodes in topological order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Every value; inputs and parameters first, then node results in node order (see [`Graph::compact`]).
    pub values: Vec<Value>,
    /// Graph inputs, in order.
    pub inputs: Vec<ValueId>,
    /// Parameters, in declaration order.
    pub params: Vec<ValueId>,
    /// Nodes, topologically ordered.
    pub nodes: Vec<Node>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Default::default() }
    }

    /// The value with id `v`.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0]
    }

    /// The type of value `v`.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0].ty
    }

    /// Looks a value up by name.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name).map(ValueId)
    }

    /// The graph's state updates: each output named `<param>.next` after one of its parameters
    /// (a BN running statistic, an optimizer's moment, a trained weight, an EMA), as (output
    /// position, parameter). A backend replaces the parameter with that output after each run
    /// and does not return it as a result.
    pub fn state_updates(&self) -> Vec<(usize, ValueId)> {
        let params: HashMap<&str, ValueId> = self.params.iter().map(|&p| (self.value(p).name.as_str(), p)).collect();
        self.outputs
            .iter()
            .enumerate()
            .filter_map(|(i, &o)| {
                let base = self.value(o).name.strip_suffix(NEXT_SUFFIX)?;
                params.get(base).map(|&p| (i, p))
            })
            .collect()
    }

    /// A name not used by any value, built from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        let used: HashSet<&str> = self.values.iter().map(|v| v.name.as_str()).collect();
        if !used.contains(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !used.contains(n.as_str())).expect("unbounded")
    }

    fn push_value(&mut self, name: String, ty: TensorType, def: ValueDef) -> ValueId {
        self.values.push(Value { name, ty, def });
        ValueId(self.values.len() - 1)
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let v = self.push_value(name.to_string(), ty, ValueDef::Input);
        self.inputs.push(v);
        v
    }

    /// Declares a parameter (its tensor lives in the model).
    pub fn add_param(&mut self, name: &str, ty: TensorType, kind: ParamKind) -> ValueId {
        let v = self.push_value(name.to_string(), ty, ValueDef::Param(kind));
        self.params.push(v);
        v
    }

    /// Appends a node, inferring its output types; output names are made unique from `names`.
    pub fn add_node(&mut self, op: Op, inputs: &[ValueId], names: &[&str], scope: &str) -> Result<Vec<ValueId>> {
        let types = infer_node_types(self, &op, inputs).or_else(|e| {
            invalid(format!("{} in {}: {e}", op.name(), if scope.is_empty() { "graph" } else { scope }))
        })?;
        if names.len() != types.len() {
            return invalid(format!("{}: {} output names for {} outputs", op.name(), names.len(), types.len()));
        }
        let id = NodeId(self.nodes.len());
        let mut outs = Vec::with_capacity(types.len());
        for (i, ty) in types.into_iter().enumerate() {
            let name = self.fresh_name(names[i]);
            outs.push(self.push_value(name, ty, ValueDef::Node(id, i)));
        }
        self.nodes.push(Node { op, inputs: inputs.to_vec(), outputs: outs.clone(), scope: scope.to_string() });
        Ok(outs)
    }

    /// Replaces the op of `node`, keeping its inputs and its existing results (whose types must
    /// not change) and adding one new result per name in `extra` for the further outputs the
    /// new op has. Returns all the node's results.
    pub fn replace_op(&mut self, node: NodeId, op: Op, extra: &[&str]) -> Result<Vec<ValueId>> {
        let n = &self.nodes[node.0];
        let types = infer_node_types(self, &op, &n.inputs)?;
        let old = n.outputs.len();
        if types.len() != old + extra.len() || n.outputs.iter().zip(&types).any(|(&v, t)| self.ty(v) != t) {
            return invalid(format!("{} cannot replace {} in {}", op.name(), n.op.name(), n.scope));
        }
        for (i, ty) in types.into_iter().enumerate().skip(old) {
            let name = self.fresh_name(extra[i - old]);
            let v = self.push_value(name, ty, ValueDef::Node(node, i));
            self.nodes[node.0].outputs.push(v);
        }
        self.nodes[node.0].op = op;
        Ok(self.nodes[node.0].outputs.clone())
    }

    /// Appends a single-output node; see [`Graph::add_node`].
    pub fn add1(&mut self, op: Op, inputs: &[ValueId], name: &str, scope: &str) -> Result<ValueId> {
        Ok(self.add_node(op, inputs, &[name], scope)?[0])
    }

    /// The node that defines `v`, if any.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.values[v.0].def {
            ValueDef::Node(n, _) => Some(n),
            _ => None,
        }
    }

    /// For each value, the nodes that read it (in node order).
    pub fn users(&self) -> Vec<Vec<NodeId>> {
        let mut users = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                if !users[v.0].contains(&NodeId(i)) {
                    users[v.0].push(NodeId(i));
                }
            }
        }
        users
    }

    /// Replaces every use of `from` (operands and graph outputs) by `to`.
    pub fn replace_uses(&mut self, from: ValueId, to: ValueId) {
        for n in &mut self.nodes {
            for v in &mut n.inputs {
                if *v == from {
                    *v = to;
                }
            }
        }
        for v in &mut self.outputs {
            if *v == from {
                *v = to;
            }
        }
    }

    /// Renumbers values so that inputs, then parameters, then node results appear in order, and
    /// drops values nothing defines or uses any more (removed nodes' results, unused parameters).
    /// Returns the map from old ids to new ids.
    pub fn compact(&mut self) -> HashMap<ValueId, ValueId> {
        let mut used = vec![false; self.values.len()];
        for n in &self.nodes {
            for &v in &n.inputs {
                used[v.0] = true;
            }
        }
        for &v in &self.outputs {
            used[v.0] = true;
        }
        let mut order: Vec<ValueId> = self.inputs.clone();
        order.extend(self.params.iter().copied().filter(|p| used[p.0]));
        for n in &self.nodes {
            order.extend(n.outputs.iter().copied());
        }
        let map: HashMap<ValueId, ValueId> = order.iter().enumerate().map(|(i, &v)| (v, ValueId(i))).collect();
        let mut values: Vec<Value> = order.iter().map(|v| self.values[v.0].clone()).collect();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
                *v = map[v];
            }
            for (k, &o) in n.outputs.iter().enumerate() {
                values[o.0].def = ValueDef::Node(NodeId(i), k);
            }
        }
        for v in self.inputs.iter_mut().chain(self.outputs.iter_mut()) {
            *v = map[v];
        }
        self.params = self.params.iter().filter_map(|p| map.get(p).copied()).collect();
        self.values = values;
        map
    }
}

impl Graph {
    /// The input types for one image batch of `n` at size `hw` (h, w): symbolic dimensions
    /// become `n`, and the spatial dimensions of rank-4 (NCHW) inputs become `hw`.
    pub fn image_input_types(&self, n: usize, hw: [usize; 2]) -> Vec<TensorType> {
        self.inputs
            .iter()
            .map(|&v| {
                let mut t = self.ty(v).with_symbols(n);
                if t.rank() == 4 {
                    t.shape[2] = crate::tensor::Dim::Fixed(hw[0]);
                    t.shape[3] = crate::tensor::Dim::Fixed(hw[1]);
                }
                t
            })
            .collect()
    }

    /// Re-specialises the graph to new input types (another batch or image size): every node
    /// result's type is inferred again. Fails, leaving the graph unchanged, if an op cannot
    /// take the new shapes.
    pub fn set_input_types(&mut self, types: &[TensorType]) -> Result<()> {
        let all = infer_all(self, types)?;
        for (v, t) in self.values.iter_mut().zip(all) {
            v.ty = t;
        }
        Ok(())
    }
}

/// Output types of `op` applied to `inputs` of `g`, after checking the number of inputs.
pub fn infer_node_types(g: &Graph, op: &Op, inputs: &[ValueId]) -> Result<Vec<TensorType>> {
    let types: Vec<&TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    infer_types(op, &types)
}

/// Types of every value of `g` when its inputs have `input_types` (e.g. another image size):
/// parameters keep their declared types, node results are inferred in order.
pub fn infer_all(g: &Graph, input_types: &[TensorType]) -> Result<Vec<TensorType>> {
    if input_types.len() != g.inputs.len() {
        return invalid(format!("the graph has {} inputs, {} types given", g.inputs.len(), input_types.len()));
    }
    let mut types: Vec<TensorType> = g.values.iter().map(|v| v.ty.clone()).collect();
    for (&v, t) in g.inputs.iter().zip(input_types) {
        types[v.0] = t.clone();
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let ins: Vec<&TensorType> = n.inputs.iter().map(|v| &types[v.0]).collect();
        let outs =
            infer_types(&n.op, &ins).or_else(|e| invalid(format!("node {i} ({} @{}): {e}", n.op.name(), n.scope)))?;
        for (&o, t) in n.outputs.iter().zip(outs) {
            types[o.0] = t;
        }
    }
    Ok(types)
}
