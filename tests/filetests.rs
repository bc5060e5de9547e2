//! Filetests, Cranelift's way: every `tests/filetests/<pass>/*.slimir` holds a small input graph
//! headed by the passes to run and followed by the expected output (the analyses held, in
//! detail, then the IR). `SLIMC_BLESS=1` rewrites the expected part.
//!
//! ```text
//! ; passes: group-channels,rewrite-widths
//! ; ratio: 0.5            (also: policy seed|groups, min-channels N, round-to N)
//! ; optimizer: adamw      (the `optimizer` pass: sgd or adamw; `; sr: subgradient|proximal`
//!                          puts every BN gamma under the L1 term; `; world-size: N` its ranks)
//! ; tensor bn.weight = 1 0.001 0.5 0.002
//! graph g(%x: f32[1,4,8,8]) { ... }
//! ; expected:
//! // ...
//! ```
//! Parameters without a `; tensor` line get deterministic values in [0.5, 1.5).

use slimc_ir::{parse_graph, print_graph, DType, Model, Tensor, ValueDef};
use slimc_passes::{OptimizerOptions, PassContext, PassManager, Policy, PruneOptions, Sparsity, SrMode, UpdateRule};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const EXPECTED: &str = "; expected:";

/// One parsed filetest.
struct Case {
    passes: String,
    prune: PruneOptions,
    optimizer: OptimizerOptions,
    tensors: BTreeMap<String, Vec<f64>>,
    input: String,
    expected: String,
}

fn parse_case(text: &str) -> Result<Case, String> {
    let (head, expected) = text.split_once(&format!("{EXPECTED}\n")).unwrap_or((text, ""));
    let mut case = Case {
        passes: String::new(),
        prune: PruneOptions::default(),
        optimizer: OptimizerOptions::default(),
        tensors: BTreeMap::new(),
        input: String::new(),
        expected: expected.to_string(),
    };
    for line in head.lines() {
        let Some(d) = line.strip_prefix(';') else {
            case.input += line;
            case.input.push('\n');
            continue;
        };
        let (key, value) = d.split_once(':').or_else(|| d.split_once('=')).ok_or(format!("bad directive `{line}`"))?;
        let (key, value) = (key.trim(), value.trim());
        let num = |v: &str| v.parse::<f64>().map_err(|_| format!("`{line}`: not a number"));
        match key {
            "passes" => case.passes = value.to_string(),
            "ratio" => case.prune.ratio = num(value)?,
            "min-channels" => case.prune.min_channels = num(value)? as usize,
            "round-to" => case.prune.round_to = num(value)? as usize,
            "policy" => case.prune.policy = if value == "seed" { Policy::Seed } else { Policy::Groups },
            "optimizer" if value == "sgd" => case.optimizer.rule = UpdateRule::Sgd,
            "optimizer" if value == "adamw" => case.optimizer.rule = UpdateRule::AdamW,
            "world-size" => case.optimizer.world_size = num(value)? as usize,
            "sr" => {
                let mode = if value == "proximal" { SrMode::Proximal } else { SrMode::Subgradient };
                case.optimizer.sparsity = Some(Sparsity { gammas: None, mode, keep: 0 });
            }
            k if k.starts_with("tensor ") => {
                let name = k["tensor ".len()..].trim().to_string();
                let values = value.split_whitespace().map(num).collect::<Result<_, _>>()?;
                case.tensors.insert(name, values);
            }
            _ => return Err(format!("unknown directive `{line}`")),
        }
    }
    Ok(case)
}

/// The input model: the graph, with the given or deterministic tensors.
fn build_model(case: &Case) -> Result<Model, String> {
    let graph = parse_graph(&case.input).map_err(|e| e.to_string())?;
    let mut tensors = BTreeMap::new();
    for &p in &graph.params {
        let v = graph.value(p);
        let ValueDef::Param(_) = v.def else { continue };
        let shape = v.ty.fixed_shape().ok_or(format!("parameter %{} has a symbolic shape", v.name))?;
        let n: usize = shape.iter().product();
        let t = match (case.tensors.get(&v.name), v.ty.dtype) {
            (Some(vals), _) if vals.len() != n => {
                return Err(format!("tensor {}: {} values for {n}", v.name, vals.len()))
            }
            (Some(vals), DType::I64) => Tensor::from_i64(shape, vals.iter().map(|&x| x as i64).collect()),
            (Some(vals), _) => Tensor::from_f32(shape, vals.iter().map(|&x| x as f32).collect()),
            (None, DType::F32) => {
                let h = v.name.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
                let vals = (0..n as u64).map(|i| 0.5 + ((h.wrapping_add(i * 2_654_435_761)) % 1000) as f32 / 1000.0);
                Tensor::from_f32(shape, vals.collect())
            }
            (None, _) => return Err(format!("parameter %{} needs a `; tensor` line", v.name)),
        }
        .map_err(|e| e.to_string())?;
        tensors.insert(v.name.clone(), t);
    }
    let model = Model { graph, tensors, meta: Default::default(), training_state: vec![] };
    model.check().map_err(|e| format!("input does not verify: {e}"))?;
    Ok(model)
}

/// The analyses held, value by value, then their summary.
fn describe(model: &Model, cx: &PassContext) -> String {
    let g = &model.graph;
    let mut s = String::new();
    let bits = |m: &[bool]| m.iter().map(|&k| if k { '1' } else { '0' }).collect::<String>();
    if let Some(groups) = &cx.groups {
        for (v, of) in groups.of.iter().enumerate() {
            if let Some(of) = of {
                let ids: Vec<String> = of.iter().map(|k| k.to_string()).collect();
                s += &format!("// groups %{}: {}\n", g.values[v].name, ids.join(" "));
            }
        }
        let prunable: Vec<String> = (0..groups.count).filter(|&k| groups.prunable[k]).map(|k| k.to_string()).collect();
        s += &format!("// prunable groups: {}\n", prunable.join(" "));
    }
    if let Some(sel) = &cx.selection {
        let removed: Vec<String> = (0..sel.pruned.len()).filter(|&k| sel.pruned[k]).map(|k| k.to_string()).collect();
        s += &format!("// removed groups: {}\n", removed.join(" "));
    }
    if let Some(masks) = &cx.masks {
        for (v, m) in masks {
            s += &format!("// keep %{}: {}\n", g.values[v.0].name, bits(m));
        }
    }
    if let Some(r) = &cx.report {
        for (layer, before, after) in &r.layers {
            s += &format!("// layer {layer}: {before} -> {after}\n");
        }
    }
    s + &cx.describe()
}

fn run_case(case: &Case) -> Result<String, String> {
    let mut model = build_model(case)?;
    let mut cx = PassContext { prune: case.prune.clone(), optimizer: case.optimizer.clone(), ..Default::default() };
    let pm = PassManager::parse(&case.passes).map_err(|e| e.to_string())?;
    if let Err(e) = pm.run_with(&mut model, &mut cx) {
        return Ok(format!("// error: {e}\n"));
    }
    Ok(describe(&model, &cx) + &print_graph(&model.graph))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "slimir") {
            out.push(p);
        }
    }
}

#[test]
fn filetests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/filetests");
    let mut paths = vec![];
    files(&root, &mut paths);
    paths.sort();
    let bless = std::env::var("SLIMC_BLESS").as_deref() == Ok("1");
    let mut failed = vec![];
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let got = parse_case(&text).and_then(|c| run_case(&c).map(|out| (c, out)));
        match got {
            Err(e) => failed.push(format!("{rel}: {e}")),
            Ok((_, out)) if bless => {
                let head = text.split_once(&format!("{EXPECTED}\n")).map_or(text.as_str(), |(h, _)| h);
                std::fs::write(p, format!("{head}{EXPECTED}\n{out}")).unwrap();
            }
            Ok((c, out)) if out != c.expected => {
                let line = c.expected.lines().zip(out.lines()).position(|(a, b)| a != b).unwrap_or(0);
                failed.push(format!(
                    "{rel}: output differs at expected line {}:\n  want: {}\n  got:  {}",
                    line + 1,
                    c.expected.lines().nth(line).unwrap_or("<end>"),
                    out.lines().nth(line).unwrap_or("<end>")
                ));
            }
            Ok(_) => {}
        }
    }
    assert!(paths.len() >= 8, "filetests found: {}", paths.len());
    assert!(
        failed.is_empty(),
        "{} of {} filetests failed (SLIMC_BLESS=1 rewrites them):\n{}",
        failed.len(),
        paths.len(),
        failed.join("\n")
    );
}
