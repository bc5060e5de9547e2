//! What every backend's executable keeps of a compiled graph, and what they do alike: the
//! parameter table (the backend's own storage, by value), the names, the state updates, the
//! fusions, the memory plan for a set of input shapes, and the op profile. Each backend keeps
//! only its storage and its dispatch.

use super::budget::check_fits;
use super::fusion::{fusions, Fused};
use super::OpProfile;
use anyhow::{anyhow, Result};
use slimc_ir::memory::{plan_fused, Fusions, Plan};
use slimc_ir::{infer_all, Graph, Model, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// A compiled graph with its parameters stored as `P` (host tensors, device buffers).
pub struct Compiled<P> {
    /// The graph.
    pub graph: Graph,
    /// Parameter storage by value index.
    pub params: Vec<Option<P>>,
    names: HashMap<String, ValueId>,
    /// The graph's state updates: (output position, parameter it replaces).
    pub state: Vec<(usize, ValueId)>,
    /// Convolutions that also do the work of the nodes around them ([`fusions`]), by node.
    pub fused: HashMap<usize, Fused>,
    /// `absorbed[n]`: node `n` is done by such a convolution.
    pub absorbed: Vec<bool>,
    /// Time and calls per op, when `SLIMC_PROFILE_OPS` is set.
    pub profile: Option<OpProfile>,
}

/// A memory plan and the value types it was made for.
pub struct Planned {
    /// Where every value lives.
    pub plan: Plan,
    /// Every value's type for these inputs.
    pub types: Vec<TensorType>,
}

impl<P> Compiled<P> {
    /// Compiles `model`: every parameter must have its tensor, which `store` turns into the
    /// backend's storage. `read_concat`: a convolution may read a concatenation's parts in
    /// place of its result ([`fusions`]).
    pub fn new(model: &Model, read_concat: bool, mut store: impl FnMut(&str, &Tensor) -> Result<P>) -> Result<Self> {
        let g = &model.graph;
        let mut params: Vec<Option<P>> = std::iter::repeat_with(|| None).take(g.values.len()).collect();
        let mut names = HashMap::new();
        for &p in &g.params {
            let name = &g.value(p).name;
            let t = model.tensors.get(name).ok_or_else(|| anyhow!("parameter %{name} has no tensor"))?;
            params[p.0] = Some(store(name, t)?);
            names.insert(name.clone(), p);
        }
        let (fused, absorbed) = fusions(g, read_concat);
        Ok(Compiled {
            state: g.state_updates(),
            graph: g.clone(),
            params,
            names,
            fused,
            absorbed,
            profile: OpProfile::from_env(),
        })
    }

    /// The graph's input names, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.graph.inputs.iter().map(|&v| self.graph.value(v).name.clone()).collect()
    }

    /// The names of the graph's results: its outputs other than the state updates.
    pub fn output_names(&self) -> Vec<String> {
        let results = self.graph.outputs.iter().enumerate().filter(|(i, _)| !self.state.iter().any(|s| s.0 == *i));
        results.map(|(_, &v)| self.graph.value(v).name.clone()).collect()
    }

    /// The named parameter's value and storage.
    pub fn param(&self, name: &str) -> Result<(ValueId, &P)> {
        let v = *self.names.get(name).ok_or_else(|| anyhow!("the program has no tensor named {name}"))?;
        Ok((v, self.params[v.0].as_ref().expect("every parameter has its storage")))
    }

    /// The named parameter's value and storage, to change.
    pub fn param_mut(&mut self, name: &str) -> Result<(ValueId, &mut P)> {
        let v = *self.names.get(name).ok_or_else(|| anyhow!("the program has no tensor named {name}"))?;
        Ok((v, self.params[v.0].as_mut().expect("every parameter has its storage")))
    }

    /// The memory plan for inputs of `types` (the first input's shape `batch_shape` names the
    /// batch in the error when it does not fit): values a fused convolution computes in place
    /// share its buffer, and a concatenation it reads through is never materialised.
    pub fn plan(&self, types: &[TensorType], batch_shape: &[usize]) -> Result<Planned> {
        let g = &self.graph;
        let all = infer_all(g, types)?;
        // The concatenation a convolution reads through, by its node.
        let deferred: HashMap<usize, usize> = self.fused.iter().filter_map(|(&i, f)| Some((f.concat?, i))).collect();
        let fusions = Fusions {
            in_place: &|i| (self.absorbed[i] && !deferred.contains_key(&i)).then(|| g.nodes[i].inputs[0]),
            deferred: &|i| deferred.get(&i).copied(),
        };
        let plan = plan_fused(g, &all, &fusions);
        check_fits(plan.as_ref().map(Plan::arena_bytes), batch_shape)?;
        Ok(Planned { plan: plan.expect("check_fits refuses unaddressable plans"), types: all })
    }
}
