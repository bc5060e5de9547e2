//! The module graphs of the workspace's three crates (`ir/`, `passes/`, `src/`) have no circles:
//! at every level, the modules under one parent (and the parent's own file) reference each other
//! one way only. References are the paths in the source (`crate::…`, `super::…`, `self::…` and a
//! child module's name), `use` trees expanded; a path through a re-export (`pub use`) counts as a
//! reference to the module the item comes from, so a crate root that only re-exports is not a
//! hub every module passes through. Also: the command-line parser stays in `src/cli/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root (`["backend", "gpu"]`), from its file.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments and string literals (so a path in a doc comment or a message is
/// not a reference).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path the code names: `use` trees expanded, then every `a::b::c` run of identifiers.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if boundary {
            let mut items = vec![];
            expand(&rest[at + 4..end], &mut vec![], &mut items);
            out.extend(items.into_iter().map(|(_, p)| p));
        }
        rest = &rest[(at + 4).min(end)..];
    }
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                i += 1;
                continue;
            }
            let mut segs = vec![];
            let mut j = i;
            loop {
                let s = j;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                segs.push(code[s..j].to_string());
                if code[j..].starts_with("::")
                    && code[j + 2..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                {
                    j += 2;
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push(segs);
            }
            i = j.max(start + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The items `code` re-exports (`pub use`, `pub(crate) use`, …): each name (or alias) with the
/// path it stands for, as written.
fn reexports(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    for (at, _) in code.match_indices("use ") {
        // The statement's words before `use`, attributes left out.
        let start = code[..at].rfind([';', '{', '}']).map_or(0, |i| i + 1);
        let head = code[start..at].rsplit(']').next().unwrap_or_default().trim();
        if !(head == "pub" || head.starts_with("pub(") && head.ends_with(')')) {
            continue;
        }
        let end = code[at..].find(';').map_or(code.len(), |e| at + e);
        let mut items = vec![];
        expand(&code[at + 4..end], &mut vec![], &mut items);
        out.extend(items.into_iter().filter_map(|(name, p)| name.filter(|n| n != "self").map(|n| (n, p))));
    }
    out
}

/// Expands a `use` tree (`a::{b, c::d as e}`) under `prefix`: each item's path, with its name
/// (the alias after `as`, else the last segment; none for a glob).
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<(Option<String>, Vec<String>)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> =
            tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let n = prefix.len();
        prefix.extend(head);
        let mut depth = 0;
        let mut from = 0;
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[from..k], prefix, out);
                    from = k + 1;
                }
                _ => {}
            }
        }
        expand(&inner[from..], prefix, out);
        prefix.truncate(n);
    } else if !tree.is_empty() {
        let mut parts = tree.split(" as ");
        let item = parts.next().unwrap();
        let mut p = prefix.clone();
        p.extend(item.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(String::from));
        let name = match parts.next() {
            Some(alias) => Some(alias.trim().to_string()),
            None if item.trim_end().ends_with('*') => None,
            None => p.last().cloned(),
        };
        out.push((name, p));
    }
}

/// The path `p` written in module `here` from the crate root, or None when it leaves the crate
/// (another crate, the standard library, a local name).
fn absolute(p: &[String], here: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    Some(match p[0].as_str() {
        "crate" => p[1..].to_vec(),
        "self" => [here.to_vec(), p[1..].to_vec()].concat(),
        "super" => {
            let ups = p.iter().take_while(|s| *s == "super").count();
            let base = &here[..here.len().saturating_sub(ups)];
            [base.to_vec(), p[ups..].to_vec()].concat()
        }
        child if modules.contains(&[here.to_vec(), vec![child.to_string()]].concat()) => {
            [here.to_vec(), p.to_vec()].concat()
        }
        _ => return None,
    })
}

/// The module an absolute path refers to: its longest module prefix, after following the
/// re-exports its items pass through.
fn module_referred(
    mut p: Vec<String>,
    modules: &BTreeSet<Vec<String>>,
    reexported: &BTreeMap<(Vec<String>, String), Vec<String>>,
) -> Vec<String> {
    // A chain of re-exports is short; the bound keeps a malformed one from looping.
    for _ in 0..16 {
        let mut k = p.len();
        while k > 0 && !modules.contains(&p[..k]) {
            k -= 1;
        }
        match p.get(k).and_then(|item| reexported.get(&(p[..k].to_vec(), item.clone()))) {
            Some(target) => p = [target.clone(), p[k + 1..].to_vec()].concat(),
            None => return p[..k].to_vec(),
        }
    }
    p
}

/// The module circles of the crate whose sources are under `src` (`skip`: files left out), one
/// line each: `parent: a -> b -> a`.
fn circles(src: &Path, skip: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut files = vec![];
    rust_files(src, &mut files);
    files.retain(|f| !skip(f));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    // Each file's code, without its unit tests (an inline module at its end: not part of the
    // graph).
    let codes: Vec<(Vec<String>, String)> = files
        .iter()
        .map(|f| {
            let mut code = code_of(&std::fs::read_to_string(f).unwrap());
            if let Some(at) = code.find("#[cfg(test)]\nmod tests") {
                code.truncate(at);
            }
            (module_of(src, f), code)
        })
        .collect();
    let mut reexported = BTreeMap::new();
    for (here, code) in &codes {
        for (name, p) in reexports(code) {
            if let Some(abs) = absolute(&p, here, &modules) {
                reexported.insert((here.clone(), name), abs);
            }
        }
    }
    // Every reference as (from module, to module).
    let mut refs: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for (here, code) in &codes {
        for p in paths(code) {
            let Some(abs) = absolute(&p, here, &modules) else { continue };
            let to = module_referred(abs, &modules, &reexported);
            if to != *here {
                refs.insert((here.clone(), to));
            }
        }
    }
    // At each parent, its children (and its own file, "self") must not reference in a circle.
    let mut circles = vec![];
    for parent in &modules {
        let child_of = |m: &Vec<String>| -> Option<String> {
            if m == parent {
                Some("(self)".into())
            } else if m.len() > parent.len() && m.starts_with(parent) {
                Some(m[parent.len()].clone())
            } else {
                None
            }
        };
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in &refs {
            if let (Some(x), Some(y)) = (child_of(a), child_of(b)) {
                if x != y {
                    edges.entry(x).or_default().insert(y);
                }
            }
        }
        // A circle: a node that reaches itself.
        for start in edges.keys() {
            let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((n, trail)) = stack.pop() {
                for m in edges.get(&n).into_iter().flatten() {
                    if m == start {
                        let mut t = trail.clone();
                        t.push(m.clone());
                        circles.push(format!(
                            "{}: {}",
                            if parent.is_empty() { "crate".into() } else { parent.join("::") },
                            t.join(" -> ")
                        ));
                    } else if seen.insert(m.clone()) {
                        let mut t = trail.clone();
                        t.push(m.clone());
                        stack.push((m.clone(), t));
                    }
                }
            }
        }
    }
    circles.sort();
    circles.dedup();
    circles
}

/// The sources of the workspace crate in `dir` (`.` for slimc itself).
fn crate_src(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir).join("src")
}

#[test]
fn no_module_circles_in_the_library() {
    let src = crate_src(".");
    // The binary's command line sits on top of the library.
    let found = circles(&src, |f| f.starts_with(src.join("cli")) || f.ends_with("main.rs"));
    assert!(found.is_empty(), "module circles in src/:\n{}", found.join("\n"));
}

#[test]
fn no_module_circles_in_the_ir_crate() {
    let found = circles(&crate_src("ir"), |_| false);
    assert!(found.is_empty(), "module circles in ir/src/:\n{}", found.join("\n"));
}

#[test]
fn no_module_circles_in_the_passes_crate() {
    let found = circles(&crate_src("passes"), |_| false);
    assert!(found.is_empty(), "module circles in passes/src/:\n{}", found.join("\n"));
}

#[test]
fn a_circle_through_a_re_export_is_found() {
    // A crate root re-exporting from `a`, and `a` reaching back through the root into `b`,
    // which uses `a`: the circle a -> b -> a passes through the re-export.
    let dir = std::env::temp_dir().join(format!("slimc-module-graph-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\npub use b::B;\npub use a::A;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::B;\npub struct A(B);\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B;\nimpl B { fn f(_: crate::a::A) {} }\n").unwrap();
    let found = circles(&src, |_| false);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, ["crate: a -> b -> a", "crate: b -> a -> b"]);
}

#[test]
fn the_command_line_parser_stays_in_the_cli() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("cli")))
        .filter(|f| code_of(&std::fs::read_to_string(f).unwrap()).contains("clap"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "clap used outside src/cli/: {outside:?}");
}
