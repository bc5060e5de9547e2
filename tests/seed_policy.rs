//! Behaviour from structure, not names: the seed recipe's unprunable BNs and the optimizer's
//! parameter groups come out the same on graphs whose names are not Ultralytics'.
//!
//! The reference lists in tests/golden/seed-policy/ are what the name-based rules of the seed
//! recipe (YOLOv11-Prune §1.3: residual bottleneck BNs, attention, PSA `ffn.1`, C2PSA `cv1`,
//! Detect's class-branch `.0.1`/`.1.1`, depthwise convs and the BNs feeding them) select on each
//! scale; they were written by slimc's former name-matching implementation.

mod common;
use onnx_protobuf::{Message, ModelProto};
use slimc::export::{export_onnx, ExportOptions};
use slimc::frontend::onnx::import_proto;
use slimc_ir::ParamGroup;
use slimc_ir::{Model, ParamKind, ValueDef};
use slimc_passes::{param_groups, seed_unprunable};
use std::collections::{BTreeMap, BTreeSet};

fn reference(scale: &str) -> BTreeSet<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/seed-policy/yolo11{scale}.txt"));
    std::fs::read_to_string(&path).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn seed_policy_from_structure_matches_the_recipe_on_all_scales() {
    for s in ["n", "s", "m", "l", "x"] {
        let m = common::yaml_model(&format!("yolo11{s}.yaml"), None, 640);
        let got = seed_unprunable(&m.graph);
        let want = reference(s);
        let extra: Vec<_> = got.difference(&want).collect();
        let missing: Vec<_> = want.difference(&got).collect();
        assert!(extra.is_empty() && missing.is_empty(), "yolo11{s}: extra {extra:?}, missing {missing:?}");
    }
}

/// Every name in an ONNX model (nodes, values, initializers) replaced by `t<i>`; returns the
/// new model and the map back to the old names.
fn rename(proto: &mut ModelProto) -> BTreeMap<String, String> {
    let mut fwd: BTreeMap<String, String> = BTreeMap::new();
    let mut name = |s: &mut String| {
        if s.is_empty() {
            return;
        }
        let n = fwd.len();
        *s = fwd.entry(s.clone()).or_insert_with(|| format!("t{n}")).clone();
    };
    let g = proto.graph.as_mut().unwrap();
    for n in g.node.iter_mut() {
        name(&mut n.name);
        n.input.iter_mut().for_each(&mut name);
        n.output.iter_mut().for_each(&mut name);
    }
    for t in g.initializer.iter_mut() {
        name(&mut t.name);
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        name(&mut v.name);
    }
    fwd.into_iter().map(|(k, v)| (v, k)).collect()
}

#[test]
fn seed_policy_is_the_same_on_an_imported_onnx_graph_with_other_names() {
    let m = common::yaml_model("yolo11n.yaml", None, 320);
    let opts = ExportOptions { keep_bn: true, ..Default::default() };
    let mut proto = ModelProto::parse_from_bytes(&export_onnx(&m, &opts).unwrap().bytes).unwrap();
    let back = rename(&mut proto);
    let imported = import_proto(&proto, "renamed.onnx", None).unwrap();
    assert!(imported.tensors.keys().all(|k| k.starts_with('t')), "names were not all replaced");
    let got: BTreeSet<String> = seed_unprunable(&imported.graph)
        .iter()
        .map(|bn| back[bn].strip_suffix(".weight").unwrap_or(&back[bn]).to_string())
        .collect();
    assert_eq!(got, reference("n"));
}

/// Ultralytics' `build_optimizer` rule, by name: "bias" in the name → biases; a BN's weight →
/// BN gammas; every other parameter → decayed weights.
fn ultralytics_group(name: &str) -> ParamGroup {
    if name.contains("bias") {
        ParamGroup::Bias
    } else if name.ends_with(".bn.weight") {
        ParamGroup::Gamma
    } else {
        ParamGroup::Weight
    }
}

#[test]
fn parameter_groups_follow_roles_not_names() {
    let mut m: Model = common::yaml_model("yolo11n.yaml", Some(3), 320);
    let groups = param_groups(&m.graph);
    assert_eq!(
        groups.len(),
        m.graph.params.iter().filter(|&&p| m.graph.value(p).def == ValueDef::Param(ParamKind::Weight)).count()
    );
    for (name, g) in &groups {
        assert_eq!(*g, ultralytics_group(name), "{name}");
    }
    // The same graph with every value renamed: the same group for each parameter.
    let old: Vec<String> = m.graph.values.iter().map(|v| v.name.clone()).collect();
    for (i, v) in m.graph.values.iter_mut().enumerate() {
        v.name = format!("t{i}");
    }
    let renamed = param_groups(&m.graph);
    for (i, name) in old.iter().enumerate() {
        if let Some(g) = groups.get(name) {
            assert_eq!(renamed.get(&format!("t{i}")), Some(g), "{name}");
        }
    }
}
