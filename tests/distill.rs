//! Distillation inside the compiled training program, on yolo11p (nc 2): the distillation
//! term's parameter gradients against central finite differences of its value, the teacher in
//! inference mode and untouched by training steps, and a teacher that does not fit refused.

mod common;

use common::fixture;
use slimc::backend::{cpu::Cpu, Backend, Executable};
use slimc::load::{load_model, LoadOptions};
use slimc::train::step::read_targets;
use slimc_ir::{step_scalars as ss, Model, Op, Tensor};
use slimc_passes::{grad_name, sequences, Distillation, PassContext, DISTILL_ITEMS, TEACHER_PREFIX};

fn yolo11p(seed: u64, weights: bool) -> Model {
    let opts =
        LoadOptions { weights: weights.then(|| fixture("yolo11p-nc2/model.safetensors")), seed, ..Default::default() };
    load_model(&fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(), &opts).unwrap()
}

/// The student (the fixture's trained weights) and a teacher (another initialisation).
fn student_and_teacher() -> (Model, Model) {
    (yolo11p(0, true), yolo11p(7, false))
}

fn batch() -> (Tensor, Tensor) {
    let dir = fixture("yolo11p-nc2-step");
    (slimc::io::read_npy(&dir.join("images.npy")).unwrap(), read_targets(&dir.join("report.json")).unwrap())
}

/// `sequence` built on `student` with `teacher` distilled at weight 1, temperature 2.
fn build(student: &Model, teacher: Option<&Model>, sequence: sequences::PassSequence, cx: PassContext) -> Model {
    let mut m = student.clone();
    let distill = teacher.map(|t| Distillation { teacher: t.clone(), weight: 1.0, temperature: 2.0 });
    let mut cx = PassContext { distill, ..cx };
    sequence.manager().run_with(&mut m, &mut cx).unwrap();
    m
}

/// The program's outputs by name for one run.
fn outputs(exe: &mut Box<dyn Executable>, inputs: &[&Tensor]) -> std::collections::BTreeMap<String, Tensor> {
    let outs = exe.run(inputs).unwrap();
    exe.output_names().into_iter().zip(outs).collect()
}

/// The distillation total (its terms' sum times the batch size) of one run.
fn distill_total(exe: &mut Box<dyn Executable>, inputs: &[&Tensor]) -> f64 {
    let o = outputs(exe, inputs);
    let items = o[DISTILL_ITEMS].f32s().unwrap();
    (items[0] as f64 + items[1] as f64) * inputs[0].shape[0] as f64
}

#[test]
fn the_distillation_gradient_matches_finite_differences() {
    let (student, teacher) = student_and_teacher();
    let (images, targets) = batch();
    let inputs = [&images, &targets];
    let with = build(&student, Some(&teacher), sequences::TRAIN, PassContext::default());
    let without = build(&student, None, sequences::TRAIN, PassContext::default());
    let (mut exe, mut plain) = (Cpu.compile(&with).unwrap(), Cpu.compile(&without).unwrap());
    let (g_with, g_without) = (outputs(&mut exe, &inputs), outputs(&mut plain, &inputs));
    assert!(distill_total(&mut exe, &inputs) > 0.0);
    // Parameters downstream of SPPF's max pooling (whose argmax a step upstream can flip, a kink
    // finite differences cannot follow): convs that write a level map, convs and BN scales and
    // shifts of the neck.
    let params = [
        "model.23.cv3.0.2.weight",
        "model.23.cv2.1.2.bias",
        "model.13.cv1.conv.weight",
        "model.16.m.0.cv2.bn.weight",
        "model.19.cv2.bn.bias",
    ];
    for p in params {
        let (a, b) = (g_with[&grad_name(p)].f32s().unwrap(), g_without[&grad_name(p)].f32s().unwrap());
        let analytic: Vec<f64> = a.iter().zip(b).map(|(x, y)| *x as f64 - *y as f64).collect();
        let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs())) + 1e-4;
        assert!(scale > 1e-3, "{p}: the distillation term moves it ({scale:e})");
        let base = exe.read(p).unwrap();
        let n = base.numel();
        for j in (0..n).step_by((n / 6).max(1)) {
            let eps = 3e-3f32;
            let mut at = |d: f32| {
                let mut t = base.clone();
                t.f32s_mut().unwrap()[j] += d;
                exe.write(p, &t).unwrap();
                distill_total(&mut exe, &inputs)
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
            let err = (fd - analytic[j]).abs() / scale;
            assert!(err < 2e-2, "{p}[{j}]: analytic {} vs finite difference {fd} (scale {scale:e})", analytic[j]);
        }
        exe.write(p, &base).unwrap();
    }
}

#[test]
fn the_teacher_stays_in_inference_mode_and_untouched_by_training_steps() {
    let (student, teacher) = student_and_teacher();
    let (images, targets) = batch();
    let step = build(&student, Some(&teacher), sequences::TRAIN_STEP, PassContext::default());
    let teacher_nodes: Vec<&slimc_ir::Node> =
        step.graph.nodes.iter().filter(|n| n.scope.starts_with(TEACHER_PREFIX)).collect();
    assert!(teacher_nodes.iter().any(|n| matches!(n.op, Op::BatchNorm(_))));
    assert!(!teacher_nodes.iter().any(|n| matches!(n.op, Op::BatchNormTrain(_) | Op::BatchNormGrad)));
    let mut exe = Cpu.compile(&step).unwrap();
    let mut s = vec![0.0f32; ss::LEN];
    s[ss::LR..ss::LR + 3].copy_from_slice(&[0.01; 3]);
    (s[ss::MOMENTUM], s[ss::EMA_DECAY], s[ss::EMA_REST], s[ss::STEP]) = (0.9, 0.9, 0.1, 1.0);
    let scalars = Tensor::from_f32(vec![ss::LEN], s).unwrap();
    for _ in 0..2 {
        exe.run(&[&images, &targets, &scalars]).unwrap();
    }
    let mut frozen = 0;
    for (name, t) in &teacher.tensors {
        let Ok(inside) = exe.read(&format!("{TEACHER_PREFIX}{name}")) else { continue };
        assert_eq!(inside.f32s().unwrap(), t.f32s().unwrap(), "teacher tensor {name} changed");
        frozen += 1;
    }
    assert!(frozen > 100, "{frozen} teacher tensors in the program");
    let w = "model.23.cv3.0.2.weight";
    assert_ne!(exe.read(w).unwrap().f32s().unwrap(), student.tensors[w].f32s().unwrap(), "the student trains");
}

#[test]
fn a_teacher_of_other_classes_is_refused() {
    let student = yolo11p(0, true);
    let opts = LoadOptions { nc: Some(3), ..Default::default() };
    let teacher = load_model(&fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(), &opts).unwrap();
    let mut m = student.clone();
    let mut cx =
        PassContext { distill: Some(Distillation { teacher, weight: 1.0, temperature: 2.0 }), ..Default::default() };
    let e = sequences::TRAIN.manager().run_with(&mut m, &mut cx).unwrap_err().to_string();
    assert!(e.contains("same classes"), "{e}");
}
