//! `slimc opt`'s pass-manager options, through the binary: `--time-passes`, `--print-after`,
//! `--print-before`, `--disable-pass` and `--list-passes`, and the `optimizer` pass's options.

use std::process::Command;

fn opt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slimc")).arg("opt").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn time_passes_prints_a_table_of_every_pass() {
    let (ok, stdout, stderr) = opt(&["yolo11n.yaml", "--passes", "fold-bn,dce", "--time-passes"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("pass execution timing report"), "{stderr}");
    let row = |name: &str| stderr.lines().find(|l| l.trim_end().ends_with(name) || l.contains(&format!(" {name} ")));
    assert!(row("fold-bn").is_some_and(|l| l.contains("325->244")), "{stderr}");
    assert!(row("dce").is_some() && row("total").is_some(), "{stderr}");
    // The folded graph is printed: no batch_norm left.
    assert!(stdout.starts_with("graph yolo11n") && !stdout.contains("batch_norm("), "{stdout}");
}

#[test]
fn print_after_shows_only_that_step_with_its_analysis() {
    let (ok, stdout, stderr) =
        opt(&["yolo11n.yaml", "--passes", "fold-constants,group-channels,dce", "--print-after", "group-channels"]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("// ----- IR after").count(), 1, "{stderr}");
    assert!(stderr.contains("// ----- IR after group-channels -----\n// channel groups: "), "{stderr}");
    assert!(stderr.contains("graph yolo11n("), "{stderr}");
    assert!(stdout.is_empty(), "the IR went to stderr only: {stdout}");
    let (ok, _, stderr) = opt(&["yolo11n.yaml", "--passes", "fold-bn", "--print-before", "fold-bn"]);
    assert!(ok && stderr.contains("// ----- IR before fold-bn -----") && stderr.contains("batch_norm("), "{stderr}");
}

/// The analysis printed after `group-channels` lists each value's groups: in YOLOv8's C2f the
/// concat reads the split's two halves at their own groups and the bottleneck's residual add at
/// the second half's (the add couples them).
#[test]
fn print_after_group_channels_shows_c2f_split_coupled_to_its_concat() {
    let (ok, _, stderr) = opt(&["yolov8n.yaml", "--passes", "group-channels", "--print-after", "group-channels"]);
    assert!(ok, "{stderr}");
    let groups = |v: &str| {
        let prefix = format!("// groups %{v}: ");
        stderr.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no groups of {v}")).to_string()
    };
    let (a, b, add) = (groups("model.2.split.0"), groups("model.2.split.1"), groups("model.2.m.0.add"));
    assert_eq!(add, b, "the bottleneck's add is coupled to the half it reads");
    // cv1's groups are the two halves' in one run; the concat repeats the add's after them.
    let cv1 = groups("model.2.cv1");
    assert_eq!(cv1, format!("{}..={}", a.split("..=").next().unwrap(), b.split("..=").last().unwrap()));
    assert_eq!(groups("model.2.cat"), format!("{cv1} {add}"));
}

#[test]
fn disable_pass_skips_it() {
    let (ok, stdout, stderr) = opt(&["yolo11n.yaml", "--passes", "fold-bn,dce", "--disable-pass", "fold-bn"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("batch_norm("), "fold-bn ran although disabled");
    assert!(!stderr.contains("fold-bn"), "{stderr}");
    let (ok, _, stderr) = opt(&["yolo11n.yaml", "--passes", "dce", "--disable-pass", "fold-bnn"]);
    assert!(!ok && stderr.contains("unknown pass `fold-bnn`"), "{stderr}");
}

#[test]
fn list_passes_names_passes_analyses_and_pipelines() {
    let (ok, stdout, _) = opt(&["x", "--list-passes"]);
    assert!(ok);
    for name in ["fold-bn", "rewrite-widths", "group-channels", "propagate-masks", "prune", "train", "export"] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
}

/// `--passes autodiff,optimizer` prints the whole training step; `--optimizer` and `--sr-mode`
/// choose what the `optimizer` pass appends (yolo11n has 81 BNs).
#[test]
fn the_optimizer_pass_prints_the_whole_step() {
    let (ok, sgd, stderr) = opt(&["yolo11n.yaml", "--passes", "autodiff,optimizer", "--sr-mode", "subgradient"]);
    assert!(ok, "{stderr}");
    assert!(sgd.contains("%optimizer.scalars: f32[11]"), "the step scalars are an input");
    assert_eq!(sgd.matches(" = sgd_update(").count(), sgd.matches(" = accumulate(").count());
    assert_eq!(sgd.matches(" = sign(").count(), 81, "one L1 subgradient per BN gamma");
    assert_eq!(sgd.matches(" = global_norm(").count(), 1);
    assert!(sgd.contains("%ema.model.0.conv.weight.next"), "the EMA is a state update");
    let (ok, adamw, stderr) =
        opt(&["yolo11n.yaml", "--passes", "autodiff,optimizer", "--optimizer", "adamw", "--sr-mode", "proximal"]);
    assert!(ok, "{stderr}");
    assert!(!adamw.contains(" = sgd_update(") && !adamw.contains(" = sign("));
    assert_eq!(adamw.matches(" = adamw_update(").count(), sgd.matches(" = sgd_update(").count());
    assert_eq!(adamw.matches("prox=0").count(), 81, "the proximal step on every BN gamma only");
}

/// With `--world-size 2` the optimizer step of yolo11n sums its accumulated gradients across the
/// ranks in one `all_reduce` (every trained parameter in one bucket) after accumulation and
/// before the L1 subgradient, the global norm and the updates; a world of one has none.
#[test]
fn two_ranks_put_one_all_reduce_before_the_sparsity_term_and_the_update() {
    let args = ["yolo11n.yaml", "--passes", "autodiff,optimizer", "--sr-mode", "subgradient", "--print-ir-after-all"];
    let (ok, _, stderr) = opt(&[&args[..], &["--world-size", "2"]].concat());
    assert!(ok, "{stderr}");
    let step = &stderr[stderr.find("// ----- IR after optimizer").unwrap()..];
    let lines: Vec<&str> = step.lines().collect();
    let at = |pat: &str| lines.iter().position(|l| l.contains(pat)).unwrap_or_else(|| panic!("no {pat}"));
    let reduce: Vec<&&str> = lines.iter().filter(|l| l.contains("= all_reduce(")).collect();
    assert_eq!(reduce.len(), 1, "one bucket");
    let accumulates = lines.iter().filter(|l| l.contains("= accumulate(")).count();
    assert_eq!(reduce[0].matches(".grad_sum").count(), accumulates, "every accumulated gradient in it");
    let last_accumulate = lines.iter().rposition(|l| l.contains("= accumulate(")).unwrap();
    assert!(last_accumulate < at("= all_reduce("));
    assert!(at("= all_reduce(") < at("= sign(") && at("= sign(") < at("= global_norm("));
    assert!(at("= global_norm(") < at("= sgd_update("));
    let (ok, _, stderr) = opt(&args);
    assert!(ok && !stderr.contains("all_reduce("), "{stderr}");
}
