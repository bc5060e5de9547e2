//! The fuzz harness: seeded, structure-aware mutations of every file slimc reads (ONNX, .slim,
//! Ultralytics .pt checkpoints, model YAML, dataset YAML and labels, .npy, safetensors, JPEG
//! and PNG images), each fed to the binary under a 4 GiB address-space cap and a time limit. A case passes when slimc succeeds or fails
//! cleanly (exit 1 or 2, no internal error); a panic (the panic hook's message), an abort, a
//! signal or a timeout fails the harness with the case's seed and file.
//!
//! CI runs a bounded number of cases per reader. `scripts/fuzz.sh SECONDS` runs the same
//! generators for as long as asked (`SLIMC_FUZZ_SECONDS`), `SLIMC_FUZZ_SEED` picks the seed.

mod common;
use onnx_protobuf::{Message, ModelProto};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Cases per reader in CI.
const CI_CASES: usize = 40;
/// One case's time limit.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// Numbers that break careless arithmetic.
const EXTREMES: [&str; 14] = [
    "0",
    "-1",
    "-64",
    "1e9",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    ".inf",
    "-.inf",
    ".nan",
    "1e-45",
    "3.5",
    "100001",
    "65536",
];

/// What a reader's cases need: a name, the file name its mutants are written to, the seed
/// bytes, a mutator, and the slimc arguments that read the file (`{}` stands for its path).
struct Reader {
    name: &'static str,
    file: &'static str,
    seed: Vec<u8>,
    mutate: fn(&[u8], &mut ChaCha8Rng) -> Vec<u8>,
    args: Vec<String>,
}

/// Byte-level damage: flips, truncation, a duplicated or removed span, inserted junk.
fn bytes(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if b.is_empty() {
            b.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..5) {
            0 => b[i] ^= 1 << rng.random_range(0..8),
            1 => b.truncate(i),
            2 => {
                let j = (i + rng.random_range(1..64)).min(b.len());
                let span = b[i..j].to_vec();
                b.splice(i..i, span);
            }
            3 => {
                let j = (i + rng.random_range(1..64)).min(b.len());
                b.drain(i..j);
            }
            _ => {
                let junk: Vec<u8> = (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                b.splice(i..i, junk);
            }
        }
    }
    b
}

/// Text-level damage of a YAML or label file: numbers replaced by extremes, lines dropped or
/// repeated, aliases, junk bytes.
fn text(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let s = String::from_utf8_lossy(seed);
    let mut lines: Vec<String> = s.lines().map(String::from).collect();
    for _ in 0..rng.random_range(1..4) {
        if lines.is_empty() {
            lines.push("x: 1".into());
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..6) {
            0 | 1 => {
                // Replace one number on the line.
                let l = &lines[i];
                let starts: Vec<usize> = l
                    .char_indices()
                    .filter(|&(k, c)| c.is_ascii_digit() && (k == 0 || !l.as_bytes()[k - 1].is_ascii_alphanumeric()))
                    .map(|(k, _)| k)
                    .collect();
                if let Some(&k) = starts.get(rng.random_range(0..starts.len().max(1))) {
                    let end = l[k..].find(|c: char| !c.is_ascii_digit() && c != '.').map_or(l.len(), |e| k + e);
                    let v = EXTREMES[rng.random_range(0..EXTREMES.len())];
                    lines[i] = format!("{}{v}{}", &l[..k], &l[end..]);
                }
            }
            2 => {
                lines.remove(i);
            }
            3 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            4 => lines[i] = format!("{} &a [*a, *a]", lines[i]),
            _ => lines[i] = String::from_utf8_lossy(&bytes(lines[i].as_bytes(), rng)).to_string(),
        }
    }
    (lines.join("\n") + "\n").into_bytes()
}

/// Structure-aware damage of an ONNX model: node inputs and outputs dropped, attributes set to
/// extremes, initializer dims and data changed, nodes removed or duplicated, op types swapped.
fn onnx(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let Ok(mut m) = ModelProto::parse_from_bytes(seed) else { return bytes(seed, rng) };
    let g = m.graph.as_mut().expect("fixture has a graph");
    let big = [0i64, -1, 1 << 40, i64::MIN, i64::MAX, 3, 100_001];
    for _ in 0..rng.random_range(1..3) {
        let n = rng.random_range(0..g.node.len());
        match rng.random_range(0..8) {
            0 => {
                let node = &mut g.node[n];
                if !node.input.is_empty() {
                    let k = rng.random_range(0..node.input.len());
                    node.input.remove(k);
                }
            }
            1 => g.node[n].output.clear(),
            2 => {
                let node = &mut g.node[n];
                let k = rng.random_range(0..node.attribute.len().max(1));
                if let Some(a) = node.attribute.get_mut(k) {
                    a.i = big[rng.random_range(0..big.len())];
                    for v in a.ints.iter_mut() {
                        *v = big[rng.random_range(0..big.len())];
                    }
                    a.f = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30][rng.random_range(0..5)];
                }
            }
            3 => {
                let k = rng.random_range(0..g.initializer.len());
                let t = &mut g.initializer[k];
                let j = rng.random_range(0..t.dims.len().max(1));
                if let Some(d) = t.dims.get_mut(j) {
                    *d = big[rng.random_range(0..big.len())];
                }
            }
            4 => {
                let k = rng.random_range(0..g.initializer.len());
                let t = &mut g.initializer[k];
                let cut = rng.random_range(0..t.raw_data.len().max(1));
                t.raw_data.truncate(cut);
            }
            5 => {
                g.node.remove(n);
            }
            6 => {
                let d = g.node[n].clone();
                g.node.insert(n, d);
            }
            _ => {
                let ops = [
                    "Identity",
                    "Concat",
                    "Split",
                    "Shape",
                    "Reshape",
                    "Range",
                    "Expand",
                    "ConstantOfShape",
                    "Squeeze",
                    "Gather",
                    "Resize",
                    "MaxPool",
                    "Conv",
                ];
                g.node[n].op_type = ops[rng.random_range(0..ops.len())].into();
            }
        }
    }
    m.write_to_bytes().unwrap_or_default()
}

/// The fields of a protobuf message as (tag, whole field bytes); None if it does not parse.
fn fields(b: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let varint = |i: &mut usize| -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    };
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let key = varint(&mut i)?;
        match key & 7 {
            0 => {
                varint(&mut i)?;
            }
            2 => {
                let len = varint(&mut i)? as usize;
                i = i.checked_add(len).filter(|&e| e <= b.len())?;
            }
            _ => return None,
        }
        out.push((key >> 3, b[start..i].to_vec()));
    }
    Some(out)
}

/// Structure-aware damage of a .slim file: its graph text mutated as text (numbers to
/// extremes, lines dropped or repeated), tensor records dropped, repeated or damaged.
fn slim(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (magic, body) = seed.split_at(8);
    let Some(mut fs) = fields(body) else { return bytes(seed, rng) };
    match rng.random_range(0..4) {
        0 | 1 => {
            // Field 1 is the graph text: re-encode it after a text mutation.
            if let Some(f) = fs.iter_mut().find(|f| f.0 == 1) {
                let mut i = 1;
                while f.1[i - 1] & 0x80 != 0 {
                    i += 1;
                }
                let mut len_end = i;
                while f.1[len_end] & 0x80 != 0 {
                    len_end += 1;
                }
                let new = text(&f.1[len_end + 1..], rng);
                let mut enc = vec![0x0a];
                let mut n = new.len() as u64;
                loop {
                    let byte = (n & 0x7f) as u8;
                    n >>= 7;
                    enc.push(if n > 0 { byte | 0x80 } else { byte });
                    if n == 0 {
                        break;
                    }
                }
                enc.extend(new);
                f.1 = enc;
            }
        }
        2 => {
            let k = rng.random_range(0..fs.len());
            if rng.random_bool(0.5) {
                fs.remove(k);
            } else {
                let f = fs[k].clone();
                fs.push(f);
            }
        }
        _ => {
            let k = rng.random_range(0..fs.len());
            fs[k].1 = bytes(&fs[k].1, rng);
        }
    }
    [magic.to_vec(), fs.into_iter().flat_map(|f| f.1).collect()].concat()
}

/// Damage to an .npy header (shape, descr, version, header length) or its data.
fn npy(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let hlen = u16::from_le_bytes([seed[8], seed[9]]) as usize;
    let (pre, rest) = seed.split_at(10);
    let (header, data) = rest.split_at(hlen.min(rest.len()));
    let mut h = String::from_utf8_lossy(header).to_string();
    let mut pre = pre.to_vec();
    let mut data = data.to_vec();
    match rng.random_range(0..5) {
        0 => {
            let shapes = [
                "(1, 3, 4294967296, 4294967296)",
                "(0,)",
                "()",
                "(-1, 3)",
                "(1, 3, 64, 64",
                "(18446744073709551615,)",
                "(1, 3, 64, 64)",
                "(1, 3, 0, 0)",
            ];
            if let (Some(a), Some(e)) = (h.find("'shape': ("), h.find("), }")) {
                h = format!("{}'shape': {}{}", &h[..a], shapes[rng.random_range(0..shapes.len())], &h[e + 1..]);
            }
        }
        1 => {
            pre[6] = rng.random_range(0..4);
            pre[8] = rng.random();
            pre[9] = rng.random();
            return [pre, h.into_bytes(), data].concat();
        }
        2 => h = h.replacen("<f4", ["<f8", "<i8", "|u1", ">f4", "<c8"][rng.random_range(0..5)], 1),
        3 => data.truncate(rng.random_range(0..data.len().max(1))),
        _ => return bytes(seed, rng),
    }
    pre[8..10].copy_from_slice(&(h.len() as u16).to_le_bytes());
    [pre, h.into_bytes(), data].concat()
}

/// Damage to a safetensors header (a tensor's shape, dtype or offsets, entries dropped, the
/// header's length) or its data.
fn safetensors(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let n = u64::from_le_bytes(std::array::from_fn(|i| seed[i])) as usize;
    let (head, data) = seed[8..].split_at(n.min(seed.len() - 8));
    let Ok(serde_json::Value::Object(mut h)) = serde_json::from_slice::<serde_json::Value>(head) else {
        return bytes(seed, rng);
    };
    let mut data = data.to_vec();
    let mut len_override = None;
    let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = &names[rng.random_range(0..names.len())];
    let big = [0i64, 1, 3, 1 << 32, i64::MAX, -1];
    match rng.random_range(0..6) {
        0 => {
            if let Some(serde_json::Value::Array(shape)) = h[name].get_mut("shape") {
                let k = rng.random_range(0..shape.len().max(1));
                if k < shape.len() {
                    shape[k] = big[rng.random_range(0..big.len())].into();
                } else {
                    shape.push(7.into());
                }
            }
        }
        1 => h[name]["dtype"] = ["F16", "BF16", "I64", "U8", "F64", "BOOL", "X"][rng.random_range(0..7)].into(),
        2 => {
            if let Some(serde_json::Value::Array(o)) = h[name].get_mut("data_offsets") {
                let k = rng.random_range(0..2).min(o.len().saturating_sub(1));
                if !o.is_empty() {
                    o[k] = big[rng.random_range(0..big.len())].into();
                }
            }
        }
        3 => {
            h.remove(name);
        }
        4 => len_override = Some([0, u64::MAX, 1 << 40, n as u64 + 1][rng.random_range(0..4)]),
        _ => data.truncate(rng.random_range(0..data.len().max(1))),
    }
    let head = serde_json::to_vec(&h).expect("json");
    let len = len_override.unwrap_or(head.len() as u64);
    [len.to_le_bytes().to_vec(), head, data].concat()
}

/// Structure-aware damage of a `.pt` checkpoint: its pickle's bytes replaced, cut or repeated,
/// or an entry cut short (the archive rebuilt around them), or the archive itself damaged.
fn pt(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    if rng.random_bool(0.2) {
        return bytes(seed, rng);
    }
    let mut e = common::archive::entries(seed);
    let pkl = e.iter().position(|(n, _)| n.ends_with("data.pkl")).expect("a checkpoint has a pickle");
    for _ in 0..rng.random_range(1..3) {
        let kind = rng.random_range(0..4);
        common::archive::damage(&mut e, pkl, kind, rng);
    }
    common::archive::archive(&e)
}

/// CRC-32 (IEEE) as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Structure-aware damage of a PNG: a header field (width, height, bit depth, colour type,
/// interlacing) set to an extreme, or the compressed data damaged or cut, each chunk's CRC made
/// right again so the decoder reads on; else byte-level damage.
fn png(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut chunks: Vec<([u8; 4], Vec<u8>)> = vec![];
    let mut at = 8;
    while at + 12 <= seed.len() {
        let len = u32::from_be_bytes(seed[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = seed[at + 4..at + 8].try_into().unwrap();
        chunks.push((kind, seed[at + 8..(at + 8 + len).min(seed.len())].to_vec()));
        at += 12 + len;
    }
    let Some(k) = chunks.iter().position(|c| &c.0 == b"IHDR").filter(|_| !rng.random_bool(0.2)) else {
        return bytes(seed, rng);
    };
    let big: [u32; 6] = [0, 1, 65_535, 1 << 16, 1 << 24, u32::MAX];
    match rng.random_range(0..4) {
        0 => {
            let field = rng.random_range(0..2) * 4;
            let v = big[rng.random_range(0..big.len())];
            chunks[k].1[field..field + 4].copy_from_slice(&v.to_be_bytes());
        }
        1 => {
            let field = 8 + rng.random_range(0..5);
            chunks[k].1[field] = [0u8, 1, 3, 7, 16, 255][rng.random_range(0..6)];
        }
        _ => {
            if let Some(d) = chunks.iter_mut().find(|c| &c.0 == b"IDAT") {
                d.1 = bytes(&d.1, rng);
            }
        }
    }
    let mut out = seed[..8].to_vec();
    for (kind, data) in chunks {
        out.extend((data.len() as u32).to_be_bytes());
        let body = [kind.as_slice(), &data].concat();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    out
}

/// Runs one case: slimc with `args` (`{}` → `file`), under a 4 GiB address-space cap.
fn run_case(args: &[String], file: &Path) -> Result<bool, String> {
    let args: Vec<String> = args.iter().map(|a| a.replace("{}", &file.display().to_string())).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_slimc"));
    cmd.args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).current_dir(file.parent().expect("in a folder"));
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if start.elapsed() > CASE_LIMIT {
            let _ = child.kill();
            return Err(format!("hung for {CASE_LIMIT:?}: slimc {}", args.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let last = err.trim_end().lines().last().unwrap_or_default().to_string();
    match (status.code(), status.signal()) {
        (Some(0), _) if !err.contains("internal error") => Ok(true),
        (Some(1 | 2), _) if !err.contains("internal error") => {
            if std::env::var("SLIMC_FUZZ_VERBOSE").is_ok() {
                eprintln!("  {last}");
            }
            Ok(false)
        }
        (Some(c), _) => Err(format!("exit {c}: slimc {}: {last}", args.join(" "))),
        (None, Some(s)) => Err(format!("signal {s}: slimc {}: {last}", args.join(" "))),
        _ => Err(format!("no status: slimc {}", args.join(" "))),
    }
}

fn readers(dir: &Path) -> Vec<Reader> {
    let fx = |p: &str| std::fs::read(common::fixture(p)).expect("fixture");
    let data = common::dataset(&dir.join("data"), 2);
    let label = std::fs::read(dir.join("data/labels/val/im0.txt")).expect("label");
    let image = std::fs::read(dir.join("data/images/val/im0.jpg")).expect("image");
    let slim_seed = common::yaml_model("yolo11n.yaml", Some(1), 64).to_bytes();
    let mut png_seed = vec![];
    image::load_from_memory(&image)
        .expect("the dataset's image decodes")
        .write_to(&mut std::io::Cursor::new(&mut png_seed), image::ImageFormat::Png)
        .expect("PNG");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let data_yaml = data.display().to_string();
    vec![
        Reader {
            name: "onnx",
            file: "m.onnx",
            seed: fx("yolo11p-nc2/model-bn.onnx"),
            mutate: onnx,
            args: s(&["info", "{}"]),
        },
        Reader { name: "slim", file: "m.slim", seed: slim_seed, mutate: slim, args: s(&["info", "{}"]) },
        Reader {
            name: "pt",
            file: "m.pt",
            seed: fx("checkpoints/yolo11p-trees/best.pt"),
            mutate: pt,
            args: s(&["info", "{}"]),
        },
        Reader {
            name: "model yaml",
            file: "m.yaml",
            seed: fx("yolo11p-nc2/yolo11p.yaml"),
            mutate: text,
            args: s(&["info", "{}", "--imgsz", "64"]),
        },
        Reader {
            name: "dataset yaml",
            file: "data/d.yaml",
            seed: std::fs::read(&data).expect("dataset yaml"),
            mutate: text,
            args: s(&["val", "yolo11n.yaml", "--nc", "1", "--imgsz", "64", "--no-plots", "--data", "{}"]),
        },
        Reader {
            name: "labels",
            file: "data/labels/val/im0.txt",
            seed: label,
            mutate: text,
            args: s(&["val", "yolo11n.yaml", "--nc", "1", "--imgsz", "64", "--no-plots", "--data", &data_yaml]),
        },
        Reader {
            name: "images",
            file: "data/images/val/im0.jpg",
            seed: image,
            mutate: bytes,
            args: s(&["val", "yolo11n.yaml", "--nc", "1", "--imgsz", "64", "--no-plots", "--data", &data_yaml]),
        },
        Reader {
            name: "png",
            file: "im.png",
            seed: png_seed,
            mutate: png,
            args: s(&["predict", "yolo11n.yaml", "--nc", "1", "--imgsz", "64", "--no-save", "--source", "{}"]),
        },
        Reader {
            name: "npy",
            file: "x.npy",
            seed: fx("yolo11p-nc2/input.npy"),
            mutate: npy,
            args: s(&["run", "yolo11n.yaml", "--input", "{}", "-o", "y.npy"]),
        },
        Reader {
            name: "safetensors",
            file: "w.safetensors",
            seed: fx("yolo11p-nc2/model.safetensors"),
            mutate: safetensors,
            args: vec![
                "import".into(),
                common::fixture("yolo11p-nc2/yolo11p.yaml").display().to_string(),
                "--weights".into(),
                "{}".into(),
                "-o".into(),
                "out.slim".into(),
            ],
        },
    ]
}

#[test]
fn every_reader_survives_mutated_input() {
    let dir = common::scratch("fuzz");
    let seconds: Option<u64> = std::env::var("SLIMC_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("SLIMC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let readers = readers(&dir);
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut failures = vec![];
    let mut counts = vec![0usize; readers.len()];
    let mut accepted = vec![0usize; readers.len()];
    let mut round = 0u64;
    loop {
        for (k, r) in readers.iter().enumerate() {
            let case_seed = seed.wrapping_mul(1_000_003).wrapping_add(round * 64 + k as u64);
            let mut rng = ChaCha8Rng::seed_from_u64(case_seed);
            let path: PathBuf = dir.join(r.file);
            let original = std::fs::read(&path).ok();
            std::fs::write(&path, (r.mutate)(&r.seed, &mut rng)).expect("write case");
            let outcome = run_case(&r.args, &path);
            accepted[k] += matches!(outcome, Ok(true)) as usize;
            if let Err(e) = outcome {
                let kept = dir.join(format!("failure-{}-{case_seed}", r.name.replace(' ', "-")));
                let _ = std::fs::copy(&path, &kept);
                failures.push(format!("{} (seed {case_seed}, input kept as {}): {e}", r.name, kept.display()));
            }
            // Readers whose file sits in the shared dataset get their original back.
            if let Some(o) = original.filter(|_| r.file.starts_with("data/")) {
                std::fs::write(&path, o).expect("restore");
            }
            counts[k] += 1;
        }
        round += 1;
        let done = match deadline {
            Some(d) => Instant::now() >= d,
            None => round as usize >= CI_CASES,
        };
        if done {
            break;
        }
    }
    let summary: Vec<String> = readers
        .iter()
        .zip(counts.iter().zip(&accepted))
        .map(|(r, (c, a))| format!("{} {c} ({a} accepted)", r.name))
        .collect();
    eprintln!("fuzz: {} cases ({})", counts.iter().sum::<usize>(), summary.join(", "));
    assert!(failures.is_empty(), "{} failing cases:\n{}", failures.len(), failures.join("\n"));
}
