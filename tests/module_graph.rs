//! The library's module graph has no circles: at every level of `src/`, the modules under one
//! parent (and the parent's own file) reference each other one way only. References are the
//! paths in the source (`crate::…`, `super::…`, `self::…` and a child module's name), `use`
//! trees expanded. Also: the command-line parser stays in `src/cli/`.

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
            expand(&rest[at + 4..end], &mut vec![], &mut out);
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

/// Expands a `use` tree (`a::{b, c::d}`) under `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
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
        let item = tree.split(" as ").next().unwrap();
        let mut p = prefix.clone();
        p.extend(item.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "*").map(String::from));
        out.push(p);
    }
}

#[test]
fn no_module_circles_in_the_library() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("cli")) && !f.ends_with("main.rs"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    // Every reference as (from module, to module), `to` the longest module prefix of the path.
    let mut refs: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for f in &files {
        let here = module_of(&src, f);
        let mut code = code_of(&std::fs::read_to_string(f).unwrap());
        // A file's unit tests (an inline module at its end) are not part of the graph.
        if let Some(at) = code.find("#[cfg(test)]\nmod tests") {
            code.truncate(at);
        }
        for p in paths(&code) {
            let mut abs: Vec<String> = match p[0].as_str() {
                "crate" => p[1..].to_vec(),
                "self" => [here.clone(), p[1..].to_vec()].concat(),
                "super" => {
                    let ups = p.iter().take_while(|s| *s == "super").count();
                    let base = &here[..here.len().saturating_sub(ups)];
                    [base.to_vec(), p[ups..].to_vec()].concat()
                }
                child if modules.contains(&[here.clone(), vec![child.to_string()]].concat()) => {
                    [here.clone(), p.clone()].concat()
                }
                _ => continue,
            };
            while !abs.is_empty() && !modules.contains(&abs) {
                abs.pop();
            }
            if abs != here {
                refs.insert((here.clone(), abs));
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
    assert!(circles.is_empty(), "module circles:\n{}", circles.join("\n"));
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
