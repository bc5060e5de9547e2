//! `distill`: knowledge distillation while training — a frozen teacher's forward and the
//! distillation loss attached to the student's graph, so that one compiled program runs both.

use crate::autodiff::{attach_detect_loss, detect_levels};
use crate::{Distillation, Pass, PassContext};
use slimc_ir::{Distill as DistillAttrs, IrError, Model, Op, ParamKind, ValueId};
use std::collections::HashMap;

/// Name of the distillation terms' output `[2]`: class and box, after their gains.
pub const DISTILL_ITEMS: &str = "distill.items";
/// Name of the distillation loss's total.
pub const DISTILL_TOTAL: &str = "distill.total";
/// Prefix of the teacher's values and parameters inside the student's program.
pub const TEACHER_PREFIX: &str = "teacher.";
/// The class and box gains at distillation weight 1: those of the detection loss's class and
/// distribution terms, so the teacher's soft targets count as much as the labels.
pub const DISTILL_GAINS: [f32; 2] = [0.5, 1.5];

/// Attaches the detection loss (as `autodiff` would) and, from the context's [`Distillation`],
/// the teacher's forward up to its Detect level maps — its parameters `teacher.<name>`, frozen,
/// its batch norms in inference mode, reading the student's image input — and `distill_loss` of
/// the student's level maps against the teacher's. Does nothing without a teacher. Invariant:
/// the student's forward and detection loss are unchanged; the teacher computes what it
/// computes alone.
pub struct Distill;

impl Pass for Distill {
    fn name(&self) -> &'static str {
        "distill"
    }
    fn summary(&self) -> &'static str {
        "attach a frozen teacher's forward and the distillation loss (training with a teacher)"
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<bool, IrError> {
        let Some(d) = &cx.distill else { return Ok(false) };
        attach(model, d)?;
        Ok(true)
    }
}

/// See [`Distill`].
pub fn attach(model: &mut Model, d: &Distillation) -> Result<(), IrError> {
    if !(d.weight.is_finite() && d.weight >= 0.0 && d.temperature.is_finite() && d.temperature > 0.0) {
        return Err(IrError::Invalid(format!(
            "distillation weight {} must be finite and >= 0, temperature {} positive",
            d.weight, d.temperature
        )));
    }
    attach_detect_loss(&mut model.graph)?;
    let student = detect_levels(&model.graph)?;
    let teacher = detect_levels(&d.teacher.graph).map_err(|e| IrError::Invalid(format!("the teacher: {e}")))?;
    if (teacher.strides.as_slice(), teacher.reg_max) != (student.strides.as_slice(), student.reg_max) {
        return Err(IrError::Invalid(format!(
            "the teacher's Detect head (strides {:?}, reg_max {}) differs from the student's (strides {:?}, reg_max {})",
            teacher.strides, teacher.reg_max, student.strides, student.reg_max
        )));
    }
    let tg = &d.teacher.graph;
    let (ts, ss) = (tg.ty(teacher.levels[0]).shape[1].clone(), model.graph.ty(student.levels[0]).shape[1].clone());
    if ts != ss {
        return Err(IrError::Invalid(format!(
            "the teacher predicts {ts} channels per anchor, the student {ss}: they must have the same classes"
        )));
    }
    let image = match (tg.inputs.as_slice(), model.graph.inputs.first()) {
        ([t], Some(&s)) if tg.ty(*t).rank() == 4 && model.graph.ty(s).rank() == 4 => s,
        _ => return Err(IrError::Invalid("the teacher must take one image input, as the student does".into())),
    };
    // The teacher's nodes its level maps need, in order, reading the student's image.
    let mut needed = vec![false; tg.values.len()];
    for &v in &teacher.levels {
        needed[v.0] = true;
    }
    let mut keep = vec![false; tg.nodes.len()];
    for (i, n) in tg.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| needed[o.0]) {
            keep[i] = true;
            for &v in &n.inputs {
                needed[v.0] = true;
            }
        }
    }
    let mut map: HashMap<ValueId, ValueId> = HashMap::from([(tg.inputs[0], image)]);
    let g = &mut model.graph;
    for &p in &tg.params {
        if !needed[p.0] {
            continue;
        }
        let name = g.fresh_name(&format!("{TEACHER_PREFIX}{}", tg.value(p).name));
        let t =
            d.teacher.tensors.get(&tg.value(p).name).ok_or_else(|| {
                IrError::Invalid(format!("the teacher's parameter %{} has no tensor", tg.value(p).name))
            })?;
        model.tensors.insert(name.clone(), t.clone());
        map.insert(p, g.add_param(&name, tg.ty(p).clone(), ParamKind::Frozen));
    }
    for (n, _) in tg.nodes.iter().zip(&keep).filter(|(_, &k)| k) {
        let inputs = n
            .inputs
            .iter()
            .map(|v| {
                map.get(v).copied().ok_or_else(|| IrError::Invalid(format!("the teacher reads %{}", tg.value(*v).name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> =
            n.outputs.iter().map(|&o| g.fresh_name(&format!("{TEACHER_PREFIX}{}", tg.value(o).name))).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let outs = g.add_node(n.op.clone(), &inputs, &refs, &format!("{TEACHER_PREFIX}{}", n.scope))?;
        for (&o, v) in n.outputs.iter().zip(outs) {
            map.insert(o, v);
        }
    }
    let mut inputs = student.levels.clone();
    inputs.extend(teacher.levels.iter().map(|v| map[v]));
    let gains = DISTILL_GAINS.iter().map(|g| g * d.weight).collect();
    let op = Op::DistillLoss(DistillAttrs { gains, temperature: d.temperature, reg_max: student.reg_max });
    g.add_node(op, &inputs, &[DISTILL_ITEMS, DISTILL_TOTAL], "distill")?;
    Ok(())
}
