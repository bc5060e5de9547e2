//! Data-parallel training under `mpirun -np 2` (Open MPI, installed by scripts/setup.sh): two
//! ranks equal one process accumulating their micro-batches, validation shared among ranks
//! equals one process's, a failing or killed rank ends the job, and a 2-rank `last.slim` resumes
//! in one process as on two ranks.
#![cfg(feature = "mpi")]

mod common;

use common::{dataset, fixture, scratch};
use slimc::train::resume::{saved_state, SavedState};
use slimc_ir::{Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SLIMC: &str = env!("CARGO_BIN_EXE_slimc");

/// `mpirun` for `np` ranks on this machine, as root if need be, one thread per rank.
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `slimc train` on the synthetic dataset with augmentation and warm-up off, saving each epoch.
fn train_args(yaml: &Path, project: &Path, name: &str, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "yolo11n.yaml", "--imgsz", "64", "--batch", "8", "--nbs", "8"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--epochs".to_string(), epochs.to_string()]);
    a.extend(["--data".into(), yaml.display().to_string(), "--project".into(), project.display().to_string()]);
    a.extend(
        ["--name", name, "--save-period", "1", "--warmup-epochs", "0", "--close-mosaic", "0", "--no-plots"]
            .map(String::from),
    );
    a.extend(
        ["--device", "cpu", "--mosaic", "0", "--fliplr", "0", "--scale", "0", "--translate", "0"].map(String::from),
    );
    a.extend(["--hsv-h", "0", "--hsv-s", "0", "--hsv-v", "0"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(mut c: Command) -> String {
    let out = c.output().unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{c:?} failed:\n{t}");
    t
}

fn state(path: &Path) -> (Model, SavedState) {
    let m = Model::load(path).unwrap();
    let s = saved_state(&m).unwrap();
    (m, s)
}

/// max |a − b| / max |b|.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

fn is_bn_statistic(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// The worst relative difference over every trained weight, optimizer moment and EMA of a
/// trained weight (BN running statistics are per rank by design and are left out), with its
/// name.
fn worst_difference(a: &Path, b: &Path) -> (f32, String, usize) {
    let ((ma, sa), (mb, sb)) = (state(a), state(b));
    assert_eq!((sa.epoch, sa.steps), (sb.epoch, sb.steps));
    let mut worst = (0.0f32, String::new(), 0);
    let mut see = |name: String, x: &[f32], y: &[f32]| {
        let r = rel(x, y);
        worst.2 += 1;
        if r > worst.0 || worst.1.is_empty() {
            worst = (r, name, worst.2);
        }
    };
    let f = |t: &Tensor| t.f32s().unwrap().to_vec();
    for (n, t) in sa.raw.iter().filter(|(n, _)| !is_bn_statistic(n)) {
        see(format!("weight {n}"), &f(t), &f(&sb.raw[n]));
    }
    for (n, v) in &sa.optimizer {
        see(format!("optimizer state of {n}"), v, &sb.optimizer[n]);
    }
    for (n, t) in ma.tensors.iter().filter(|(n, _)| !is_bn_statistic(n)) {
        see(format!("EMA of {n}"), &f(t), &f(&mb.tensors[n]));
    }
    worst
}

/// Two ranks with global batch 8 (4 images each, one all-reduce per step) against one process
/// fed the same micro-batches of 4 and accumulating two of them to the nominal batch of 8
/// (`--emulate-ranks 2`): after the 3 optimizer steps of the first epoch, every trained weight,
/// optimizer moment and EMA of a trained weight agrees within 1e-5, for SGD and AdamW with the
/// L1 term in either mode. A plain one-process run with micro-batches of 8 is the control: it
/// differs (batch norm sees other batches), so the comparison can fail.
#[test]
fn two_ranks_equal_one_process_accumulating_the_same_micro_batches() {
    let d = scratch("dp-equal");
    let yaml = dataset(&d, 24);
    let project = d.join("runs");
    for (opt, mode) in [("SGD", "subgradient"), ("SGD", "proximal"), ("AdamW", "subgradient"), ("AdamW", "proximal")] {
        let extra = ["--optimizer", opt, "--lr0", "0.01", "--sr", "0.01", "--sr-mode", mode];
        let name = |k: &str| format!("{opt}-{mode}-{k}");
        let mut c = mpirun(2);
        c.arg(SLIMC).args(train_args(&yaml, &project, &name("ranks"), 2, &extra));
        let t = run(c);
        assert!(t.contains("ranks: 2 (Open MPI") && t.contains("4 images per rank"), "{t}");
        let mut c = Command::new(SLIMC);
        c.args(train_args(&yaml, &project, &name("emulated"), 2, &extra)).args(["--emulate-ranks", "2"]);
        c.env("RAYON_NUM_THREADS", "1");
        run(c);
        let at = |k: &str| project.join(name(k)).join("weights/epoch1.slim");
        let (worst, what, compared) = worst_difference(&at("ranks"), &at("emulated"));
        eprintln!("{opt} {mode}: {compared} tensors, worst relative difference {worst:.2e} ({what})");
        assert!(worst <= 1e-5, "{opt} {mode}: {what} differs by {worst:e}");
        assert_eq!(state(&at("ranks")).1.steps, 3);
        // Rank 0 alone wrote the run: no second, numbered run folder.
        assert!(!project.join(format!("{}2", name("ranks"))).exists());
        if opt == "SGD" && mode == "subgradient" {
            let mut c = Command::new(SLIMC);
            c.args(train_args(&yaml, &project, &name("whole"), 2, &extra)).env("RAYON_NUM_THREADS", "1");
            run(c);
            let (control, what, _) = worst_difference(&at("whole"), &at("emulated"));
            eprintln!("control, micro-batches of 8: worst relative difference {control:.2e} ({what})");
            assert!(control > 1e-3, "micro-batches of 8 should differ from two of 4: {control:e} ({what})");
        }
    }
}

/// `slimc val` under two ranks (rank 0 the plotted batches, then every other rect batch each;
/// statistics gathered in batch order) reports what one process reports, on a model that finds
/// trees: the metrics, every kept detection in order, and rank 0's validation plots.
#[test]
fn validation_shared_by_two_ranks_equals_one_process() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = scratch("dp-val");
    let args = |c: &mut Command, name: &str| {
        c.arg(SLIMC)
            .arg("val")
            .arg(fixture("trees-trained/yolo11p-trees.slim"))
            .arg("--data")
            .arg(root.join("datasets/trees/trees.yaml"))
            .args(["--imgsz", "160", "--batch", "4", "--device", "cpu", "--json", "--project"])
            .arg(&*d)
            .args(["--name", name, "--save-json"])
            .arg(d.join(format!("{name}.json")));
    };
    let metrics = |t: &str| -> serde_json::Value {
        let start = t.find("{\n").unwrap();
        serde_json::from_str(&t[start..t.rfind('}').unwrap() + 1]).unwrap()
    };
    let mut c = mpirun(2);
    args(&mut c, "two");
    let two = metrics(&run(c));
    let mut c = Command::new("env");
    args(&mut c, "one");
    let one = metrics(&run(c));
    for key in ["map50", "map", "mp", "mr"] {
        let (a, b) = (two[key].as_f64().unwrap(), one[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6, "{key}: two ranks {a}, one process {b}");
    }
    assert!(one["map50"].as_f64().unwrap() > 0.1, "the model finds trees: {one}");
    let preds = |n: &str| std::fs::read_to_string(d.join(format!("{n}.json"))).unwrap();
    assert!(preds("one").len() > 100 && preds("one") == preds("two"), "the kept detections differ");
    for f in ["val_batch0_pred.jpg", "val_batch2_labels.jpg", "BoxPR_curve.png", "confusion_matrix.csv"] {
        assert!(d.join("two").join(f).exists(), "{f}");
    }
    let table = |n: &str| std::fs::read_to_string(d.join(n).join("confusion_matrix.csv")).unwrap();
    assert_eq!(table("one"), table("two"));
}

/// Runs `c` to its end or `limit`, killing it then; returns its output and how long it took.
fn bounded(mut c: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    (child.wait_with_output().unwrap(), start.elapsed())
}

/// One rank whose copy of the dataset has an unreadable label file (a directory where the file
/// should be) ends the whole job, naming the file, with a non-zero exit, within 60 s.
#[test]
fn a_rank_with_an_unreadable_label_ends_the_job_naming_the_file() {
    let d = scratch("dp-fault");
    let good = dataset(&d.join("good"), 16);
    let bad = dataset(&d.join("bad"), 16);
    let label = d.join("bad/labels/train/im5.txt");
    std::fs::remove_file(&label).unwrap();
    std::fs::create_dir(&label).unwrap();
    let project = d.join("runs");
    let mut c = mpirun(1);
    c.arg(SLIMC).args(train_args(&good, &project, "fault", 2, &[])).arg(":");
    c.args(["-np", "1", SLIMC]).args(train_args(&bad, &project, "fault", 2, &[]));
    let (out, took) = bounded(c, Duration::from_secs(120));
    let t = text(&out);
    assert!(!out.status.success(), "the job succeeded:\n{t}");
    eprintln!("the job ended {took:?} after its start:\n{t}");
    assert!(took < Duration::from_secs(60), "took {took:?}:\n{t}");
    assert!(t.contains("im5.txt") && t.contains("the ranks disagree on the train set"), "{t}");
}

/// The pids of `slimc` processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if stat.contains("(slimc)") && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// kill -9 of one rank mid-run ends the other and `mpirun` with a non-zero exit within 60 s;
/// the last completed epoch's `last.slim` stays readable.
#[test]
fn killing_one_rank_ends_the_job() {
    let d = scratch("dp-kill");
    let yaml = dataset(&d, 16);
    let project = d.join("runs");
    let mut c = mpirun(2);
    c.arg(SLIMC).args(train_args(&yaml, &project, "kill", 200, &[]));
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let last = project.join("kill/weights/last.slim");
    let start = Instant::now();
    while !last.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(last.exists(), "no epoch completed");
    let ranks = children(child.id());
    assert_eq!(ranks.len(), 2, "ranks {ranks:?}");
    // SAFETY: sending a signal to a process this test started.
    unsafe { libc::kill(ranks[1] as i32, libc::SIGKILL) };
    let killed = Instant::now();
    while child.try_wait().unwrap().is_none() && killed.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.try_wait().unwrap();
    eprintln!("mpirun ended {:?} after the kill", killed.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.is_some_and(|s| !s.success()), "mpirun still running or succeeded: {status:?}");
    assert!(children(child.id()).is_empty());
    let m = Model::load(&last).unwrap();
    assert!(saved_state(&m).is_ok(), "last.slim holds a resumable state");
}

/// A `last.slim` written by two ranks resumes in one process: fed as the two ranks fed it
/// (`--emulate-ranks 2`), its next epoch equals the two ranks' own resume within 1e-5; fed
/// plainly, it continues from the same epoch.
#[test]
fn a_two_rank_checkpoint_resumes_in_one_process() {
    let d = scratch("dp-resume");
    let yaml = dataset(&d, 16);
    let project = d.join("runs");
    let mut c = mpirun(2);
    c.arg(SLIMC).args(train_args(&yaml, &project, "r", 3, &["--optimizer", "SGD"]));
    run(c);
    let weights = project.join("r/weights");
    let first = d.join("epoch1.slim");
    std::fs::copy(weights.join("epoch1.slim"), &first).unwrap();
    // Each resume starts from the same epoch-1 file and leaves its epoch 2 in epoch2.slim.
    let resume = |mut c: Command, extra: &[&str], keep: &str| -> PathBuf {
        std::fs::copy(&first, weights.join("last.slim")).unwrap();
        c.arg(SLIMC).arg("train").arg(weights.join("last.slim")).arg("--resume").args(extra);
        let t = run(c);
        assert!(t.contains("from epoch 2 of 3"), "{t}");
        let kept = d.join(keep);
        std::fs::copy(weights.join("epoch2.slim"), &kept).unwrap();
        kept
    };
    let alone = || {
        let mut c = Command::new("env");
        c.env("RAYON_NUM_THREADS", "1");
        c
    };
    let ranks = resume(mpirun(2), &[], "ranks.slim");
    let emulated = resume(alone(), &["--emulate-ranks", "2"], "emulated.slim");
    let (worst, what, _) = worst_difference(&ranks, &emulated);
    assert!(worst <= 1e-5, "{what} differs by {worst:e}");
    let plain = saved_state(&Model::load(&resume(alone(), &[], "plain.slim")).unwrap()).unwrap();
    assert_eq!((plain.epoch, plain.steps), (1, 4), "one process: epoch 2 took two steps of 8");
}
