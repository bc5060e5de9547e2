//! The `Backend` interface on the CPU backend: one compiled executable reused across runs and
//! input sizes gives what a fresh compile gives (its planned buffers carry nothing over), named
//! inputs, reading and writing named tensors, and `--device`.

mod common;
use common::{image, randomize_bn, yaml_model};
use slimc::backend::{cpu::Cpu, run_once, Backend, Device};

#[test]
fn a_reused_executable_matches_fresh_runs_across_sizes() {
    let mut m = yaml_model("yolo11n.yaml", Some(3), 64);
    randomize_bn(&mut m, 1);
    let mut exe = Cpu.compile(&m).unwrap();
    // 64, then 96 (a new plan, buffers regrown), then 64 again (the first plan over buffers the
    // 96 run dirtied), then batch 2.
    for (k, shape) in [[1, 3, 64, 64], [1, 3, 96, 96], [1, 3, 64, 64], [2, 3, 64, 64]].iter().enumerate() {
        let x = image(shape[0], shape[2], shape[3], k as u64);
        let fresh = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
        let reused = exe.run_in_order(std::slice::from_ref(&x)).unwrap();
        assert_eq!(fresh, reused, "run {k} at {shape:?}");
        assert_eq!(fresh[0].shape[0], shape[0]);
    }
}

#[test]
fn named_inputs_and_named_tensors() {
    let m = yaml_model("yolo11n.yaml", Some(1), 64);
    let mut exe = Cpu.compile(&m).unwrap();
    assert_eq!(exe.input_names(), vec!["images".to_string()]);
    let x = image(1, 64, 64, 7);
    let by_order = exe.run_in_order(std::slice::from_ref(&x)).unwrap();
    let by_name = exe.run_named(&[("images", &x)]).unwrap();
    assert_eq!(by_name.len(), exe.output_names().len());
    assert_eq!(by_name[&exe.output_names()[0]], by_order[0]);
    let err = exe.run_named(&[("image", &x)]).unwrap_err().to_string();
    assert!(err.contains("no tensor given for input images"), "{err}");
    // Writing a weight changes what runs; reading gives it back; the shape is fixed.
    let name = "model.0.conv.weight";
    let w = exe.read(name).unwrap();
    assert_eq!(w, m.tensors[name]);
    let mut zero = w.clone();
    zero.f32s_mut().unwrap().iter_mut().for_each(|v| *v = 0.0);
    exe.write(name, &zero).unwrap();
    assert_eq!(exe.read(name).unwrap(), zero);
    let mut z = m.clone();
    z.tensors.insert(name.to_string(), zero);
    let want = run_once(&Cpu, &z, std::slice::from_ref(&x)).unwrap();
    assert_eq!(exe.run_in_order(std::slice::from_ref(&x)).unwrap(), want);
    assert_ne!(want, by_order);
    let err = exe.write(name, &image(1, 2, 2, 0)).unwrap_err().to_string();
    assert!(err.contains(name), "{err}");
    assert!(exe.read("no.such.weight").is_err());
}

#[test]
fn devices_resolve_or_say_why_not() {
    assert_eq!(Device::Cpu.backend().unwrap().name(), "cpu");
    assert_eq!(Device::Auto.backend().unwrap().name(), "cpu");
    let err = Device::Gpu.backend().err().unwrap().to_string();
    assert!(err.contains("--device gpu") && err.contains("--device cpu"), "{err}");
}
