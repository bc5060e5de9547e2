//! The `Backend` interface on the CPU backend: one compiled executable reused across runs and
//! input sizes gives what a fresh compile gives (its planned buffers carry nothing over), named
//! inputs, reading and writing named tensors, and `--device`.

mod common;
use common::{image, randomize_bn, yaml_model};
use slimc::backend::{cpu::Cpu, gpu, run_once, Backend};
use slimc::device::Device;
use slimc_ir::Tensor;
use slimc_ir::Unary;

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

/// Programs run from several threads at once: each runs on one of rayon's workers, and a worker
/// waiting inside one program's kernel may run another program's kernel meanwhile (the kernels'
/// per-thread scratch must not be taken twice); every result equals a run alone.
#[test]
fn executables_run_from_several_threads_at_once() {
    let mut m = yaml_model("yolo11n.yaml", Some(1), 96);
    randomize_bn(&mut m, 2);
    let x = image(1, 96, 96, 3);
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (m, x, want) = (&m, &x, &want);
            s.spawn(move || {
                let mut exe = Cpu.compile(m).unwrap();
                for k in 0..15 {
                    assert_eq!(&exe.run_in_order(std::slice::from_ref(x)).unwrap(), want, "thread {t}, run {k}");
                }
            });
        }
    });
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
    // `auto` takes a hardware GPU only; lavapipe (all CI has) is used when asked for.
    let auto = if gpu::hardware_present() { "gpu" } else { "cpu" };
    assert_eq!(Device::Auto.backend().unwrap().name(), auto);
    assert_eq!(Device::Gpu.backend().expect("scripts/setup.sh installs lavapipe").name(), "gpu");
    assert!(Device::Gpu.describe().starts_with("gpu ("), "{}", Device::Gpu.describe());
    // With no adapter at all, `--device gpu` is a one-line error.
    let dir = common::scratch("devices");
    let input = dir.join("x.npy");
    slimc::io::write_npy(&input, &image(1, 32, 32, 0)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slimc"))
        .args(["run", "yolo11n.yaml", "--nc", "1", "--imgsz", "32", "--device", "gpu", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.join("y.npy"))
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent.json")
        .env("VK_DRIVER_FILES", "/nonexistent.json")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no GPU adapter found") && err.contains("--device cpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// yolo11n on the GPU backend (lavapipe in CI), under the convolution lowering the adapter takes:
/// the fused convolution + batch norm + SiLU path, the attention block, the head's decoding, at
/// two input sizes and batch 2 on one executable.
#[test]
fn the_gpu_backend_runs_yolo11n_as_the_cpu_does() {
    let mut m = yaml_model("yolo11n.yaml", Some(3), 64);
    randomize_bn(&mut m, 2);
    let mut exe = gpu::Gpu::new().expect("scripts/setup.sh installs lavapipe").compile(&m).unwrap();
    for (k, shape) in [[1, 3, 64, 64], [2, 3, 96, 64], [1, 3, 64, 64]].iter().enumerate() {
        let x = image(shape[0], shape[2], shape[3], 10 + k as u64);
        let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
        assert_close(&exe.run_in_order(std::slice::from_ref(&x)).unwrap(), &want, &format!("{shape:?}"));
    }
    // Parameters live on the device: reading gives them back, writing changes what runs.
    let name = "model.0.conv.weight";
    assert_eq!(exe.read(name).unwrap(), m.tensors[name]);
    let mut zero = m.tensors[name].clone();
    zero.f32s_mut().unwrap().iter_mut().for_each(|v| *v = 0.0);
    exe.write(name, &zero).unwrap();
    assert_eq!(exe.read(name).unwrap(), zero);
    let mut z = m.clone();
    z.tensors.insert(name.to_string(), zero);
    let x = image(1, 64, 64, 3);
    let (want, got) = (run_once(&Cpu, &z, std::slice::from_ref(&x)).unwrap(), exe.run_in_order(&[x]).unwrap());
    let worst =
        got[0].f32s().unwrap().iter().zip(want[0].f32s().unwrap()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-3, "after writing {name}: off by {worst}");
}

/// Each result of `got` within 1e-5 of `want`'s largest magnitude.
fn assert_close(got: &[Tensor], want: &[Tensor], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.shape, w.shape);
        let (g, w) = (g.f32s().unwrap(), w.f32s().unwrap());
        let scale = w.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{what}: worst {worst:e} of scale {scale:e}");
        assert!(worst <= 1e-5 * scale, "{what}: off by {worst:e} (scale {scale:e})");
    }
}

/// The whole of yolo11n under each convolution lowering, whichever the adapter takes by default.
#[test]
fn yolo11n_runs_alike_under_both_convolution_lowerings() {
    let mut m = yaml_model("yolo11n.yaml", Some(3), 64);
    randomize_bn(&mut m, 4);
    let x = image(2, 64, 96, 20);
    let want = run_once(&Cpu, &m, std::slice::from_ref(&x)).unwrap();
    for conv in [gpu::ConvLowering::Tiled, gpu::ConvLowering::packed()] {
        let gpu = gpu::Gpu::new().expect("scripts/setup.sh installs lavapipe").with_conv(conv);
        assert_close(&run_once(&gpu, &m, std::slice::from_ref(&x)).unwrap(), &want, &format!("{conv:?}"));
    }
}

/// A tensor larger than the adapter's largest storage binding is refused before anything runs,
/// naming the tensor and the limit.
#[test]
fn the_gpu_refuses_a_tensor_beyond_its_largest_binding() {
    let gpu = gpu::Gpu::new().expect("scripts/setup.sh installs lavapipe");
    let n = (gpu.adapter().max_binding / 4 + 1) as usize;
    let m =
        common::single_op::single_op(&slimc_ir::Op::Unary(Unary::Silu), &[slimc_ir::TensorType::f32(&[n])]).unwrap();
    let x = slimc_ir::Tensor::full(&[n], 0.5);
    let err = run_once(&gpu, &m, &[x]).unwrap_err().to_string();
    let limit = slimc::backend::budget::human(gpu.adapter().max_binding);
    assert!(err.contains("%a0") && err.contains("largest storage binding") && err.contains(&limit), "{err}");
}
