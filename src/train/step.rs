//! One training step: the training program (the `autodiff` pass's output), compiled once on a
//! backend, run on an image batch and its targets, giving the loss, every parameter gradient and
//! the next BN running statistics.

use crate::backend::{Backend, Executable};
use crate::train::optim::{param_groups, ParamGroup};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use slimc_ir::{Model, Op, Tensor};
use slimc_passes::{grad_name, next_name, pipelines, LOSS_ITEMS, LOSS_TOTAL};
use std::collections::BTreeMap;
use std::path::Path;

/// A model's training program and where its outputs go.
pub struct Program {
    /// The training graph and the host's copy of its tensors (which the optimizer updates; see
    /// [`Program::upload`]).
    pub model: Model,
    /// The program compiled on its backend, with its own copy of the tensors.
    exe: Box<dyn Executable>,
    /// Trainable parameters, in graph order.
    pub params: Vec<String>,
    /// BN running statistics updated by each step, in graph order.
    pub buffers: Vec<String>,
    /// The BN gammas (`batch_norm` scale parameters) of the inference graph, in graph order.
    pub gammas: Vec<String>,
    /// Every trainable parameter's optimizer group, by its role in the graph.
    pub groups: BTreeMap<String, ParamGroup>,
}

/// The names of the BN gammas of an inference graph, in graph order.
pub fn bn_gammas(model: &Model) -> Vec<String> {
    let g = &model.graph;
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm { .. } | Op::BatchNormTrain { .. }))
        .map(|n| g.value(n.inputs[1]).name.clone())
        .collect()
}

impl Program {
    /// Builds the training program of an inference model (YAML-built or a `.slim` file) and
    /// compiles it on `backend`.
    pub fn new(model: &Model, backend: &dyn Backend) -> Result<Program> {
        let gammas = bn_gammas(model);
        let groups = param_groups(&model.graph);
        let mut m = model.clone();
        pipelines::TRAIN.manager().run(&mut m)?;
        let g = &m.graph;
        let mut params = vec![];
        let mut buffers = vec![];
        for &o in &g.outputs {
            let name = &g.value(o).name;
            if let Some(p) = name.strip_suffix(".grad") {
                params.push(p.to_string());
            } else if let Some(b) = name.strip_suffix(".next") {
                buffers.push(b.to_string());
            }
        }
        let exe = backend.compile(&m)?;
        Ok(Program { model: m, exe, params, buffers, gammas, groups })
    }

    /// Copies the host's parameters and BN buffers into the compiled program (after an optimizer
    /// update, or after loading saved weights).
    pub fn upload(&mut self) -> Result<()> {
        for n in self.params.iter().chain(&self.buffers) {
            let t = self.model.tensors.get(n).ok_or_else(|| anyhow!("no tensor {n}"))?;
            self.exe.write(n, t)?;
        }
        Ok(())
    }

    /// Takes a step's next BN running statistics, on the host and in the compiled program.
    pub fn set_buffers(&mut self, running: BTreeMap<String, Tensor>) -> Result<()> {
        for (n, t) in running {
            self.exe.write(&n, &t)?;
            self.model.tensors.insert(n, t);
        }
        Ok(())
    }

    /// Runs one forward and backward pass.
    pub fn step(&mut self, images: &Tensor, targets: &Tensor) -> Result<StepResult> {
        // The training program takes the model's image input, then the targets `autodiff` added.
        let outs = self.exe.run(&[images, targets])?;
        let mut by_name: BTreeMap<String, Tensor> = self.exe.output_names().into_iter().zip(outs).collect();
        let items = by_name.remove(LOSS_ITEMS).ok_or_else(|| anyhow!("training program lacks {LOSS_ITEMS}"))?;
        let total = by_name.remove(LOSS_TOTAL).ok_or_else(|| anyhow!("training program lacks {LOSS_TOTAL}"))?;
        let items = items.f32s()?;
        let mut r = StepResult {
            items: [items[0], items[1], items[2]],
            total: total.f32s()?[0],
            grads: BTreeMap::new(),
            running: BTreeMap::new(),
        };
        for p in &self.params {
            r.grads.insert(p.clone(), by_name.remove(&grad_name(p)).expect("every parameter has a gradient output"));
        }
        for b in &self.buffers {
            r.running.insert(b.clone(), by_name.remove(&next_name(b)).expect("every buffer has a next output"));
        }
        Ok(r)
    }

    /// Adds network slimming's L1 subgradient `sr·sign(γ)` to the gradients of the BN gammas
    /// named in `scope`.
    pub fn add_sparsity(&self, grads: &mut BTreeMap<String, Tensor>, scope: &[String], sr: f32) -> Result<()> {
        for name in scope {
            let gamma = self.model.tensors.get(name).ok_or_else(|| anyhow!("no BN gamma {name}"))?.f32s()?;
            let g = grads.get_mut(name).ok_or_else(|| anyhow!("no gradient for BN gamma {name}"))?.f32s_mut()?;
            for (d, &w) in g.iter_mut().zip(gamma) {
                // torch.sign: 0 at 0.
                *d += sr
                    * if w > 0.0 {
                        1.0
                    } else if w < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
            }
        }
        Ok(())
    }
}

/// What one step produces.
pub struct StepResult {
    /// Loss components: box, cls, dfl (after gains, per target-score sum).
    pub items: [f32; 3],
    /// The total that is differentiated: the components' sum times the batch size.
    pub total: f32,
    /// Gradient of the total for every trainable parameter.
    pub grads: BTreeMap<String, Tensor>,
    /// Next BN running statistics.
    pub running: BTreeMap<String, Tensor>,
}

#[derive(Deserialize)]
struct TargetLists {
    batch_idx: Vec<f32>,
    cls: Vec<f32>,
    #[serde(alias = "bboxes_xywhn")]
    bboxes: Vec<[f32; 4]>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetsFile {
    Nested { targets: TargetLists },
    Flat(TargetLists),
}

/// Reads `targets.json`: `batch_idx`, `cls` and `bboxes` (or `bboxes_xywhn`: normalised cx, cy,
/// w, h) lists, at the top level or under `targets` (as in a fixture's report.json). Returns the
/// `[M, 6]` targets tensor.
pub fn read_targets(path: &Path) -> Result<Tensor> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let t = match serde_json::from_str::<TargetsFile>(&text) {
        Ok(TargetsFile::Nested { targets }) | Ok(TargetsFile::Flat(targets)) => targets,
        Err(e) => bail!("{}: expected batch_idx, cls and bboxes lists ({e})", path.display()),
    };
    if t.batch_idx.len() != t.cls.len() || t.cls.len() != t.bboxes.len() {
        bail!(
            "{}: batch_idx, cls and bboxes have {}, {} and {} entries",
            path.display(),
            t.batch_idx.len(),
            t.cls.len(),
            t.bboxes.len()
        );
    }
    let mut rows = Vec::with_capacity(t.cls.len() * 6);
    for i in 0..t.cls.len() {
        rows.extend([t.batch_idx[i], t.cls[i]]);
        rows.extend(t.bboxes[i]);
    }
    Ok(Tensor::from_f32(vec![t.cls.len(), 6], rows)?)
}
