//! Ultralytics model YAMLs: parsing and `parse_model`'s rules (scales, repeats, widths).
//!
//! The resolved layer list is lowered to IR by [`super::yolo`]. Names and rules follow
//! Ultralytics 8.3.253 (`nn/tasks.py`): scale letter from the file name, `make_divisible`
//! with ceil, Python's round-half-even for repeats, the c3k rule for scales m/l/x.

use anyhow::{anyhow, bail, Result};
use std::path::Path;
use yaml_rust2::Yaml;

/// The YOLO11 YAML shipped inside the binary.
pub const YOLO11_YAML: &str = include_str!("../../models/yolo11.yaml");

/// The model YAMLs shipped inside the binary, by the file stem Ultralytics resolves a name to
/// (`yolov5` also serves the "u" names, `yolov5nu.yaml`).
pub const BUILTIN_YAMLS: [(&str, &str); 6] = [
    ("yolo11", YOLO11_YAML),
    ("yolov8", include_str!("../../models/yolov8.yaml")),
    ("yolov8-p2", include_str!("../../models/yolov8-p2.yaml")),
    ("yolov8-p6", include_str!("../../models/yolov8-p6.yaml")),
    ("yolov5", include_str!("../../models/yolov5.yaml")),
    ("yolo12", include_str!("../../models/yolo12.yaml")),
];

/// The most classes a model may have (LVIS has 1,203).
pub const MAX_CLASSES: usize = 10_000;

/// The most repeats a layer may ask for, before depth scaling.
pub const MAX_REPEATS: i64 = 100;

/// The most layers a model may have.
pub const MAX_LAYERS: usize = 1000;

/// A module argument as written in the YAML.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// `None` (or YAML null).
    None,
    /// Any other string (e.g. `"nearest"`).
    Str(String),
}

/// One `[from, repeats, module, args]` row, after `nc` substitution.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// Absolute indices of the input layers (`-1` resolved); `None` is the image.
    pub from: Vec<Option<usize>>,
    /// Repeats after depth scaling.
    pub repeats: usize,
    /// Module name (`Conv`, `C3k2`, `nn.Upsample`...).
    pub module: String,
    /// Raw arguments.
    pub args: Vec<Arg>,
}

/// A parsed model YAML with its scale resolved.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// Display name of the source (file name).
    pub source: String,
    /// Number of classes.
    pub nc: usize,
    /// Scale letter used ("" if the YAML has no scales).
    pub scale: String,
    /// Depth multiple.
    pub depth: f64,
    /// Width multiple.
    pub width: f64,
    /// Channel cap before width scaling.
    pub max_channels: usize,
    /// Layers: backbone then head.
    pub layers: Vec<LayerSpec>,
    /// The YAML as Ultralytics keeps it in a model (`nc` resolved, `scale`, `yaml_file` and
    /// `channels` set), as text.
    pub yaml: String,
}

/// Python's `round` (half to even) on non-negative values.
pub fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// Ultralytics' `make_divisible(x, 8)`: the next multiple of 8 at or above `x`.
pub fn make_divisible(x: f64, d: usize) -> usize {
    ((x / d as f64).ceil() as usize) * d
}

/// The scale letter Ultralytics guesses from a file name (`yolo11s.yaml` → `s`), as its regex
/// `yolo(e-)?[v]?\d+([nslmx])` does.
pub fn guess_scale(path: &str) -> Option<char> {
    let stem = Path::new(path).file_stem()?.to_string_lossy().to_lowercase();
    let b = stem.as_bytes();
    let mut start = 0;
    while let Some(p) = stem[start..].find("yolo") {
        let mut i = start + p + 4;
        if stem[i..].starts_with("e-") {
            i += 2;
        }
        if i < b.len() && b[i] == b'v' {
            i += 1;
        }
        let d0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > d0 && i < b.len() && b"nslmx".contains(&b[i]) {
            return Some(b[i] as char);
        }
        start = start + p + 1;
    }
    None
}

/// Reads a model YAML given by name or path: a file on disk wins; otherwise a name such as
/// `yolo11s.yaml`, `yolov8n-p6.yaml`, `yolov5nu.yaml` or `yolo12x.yaml` comes from the copies
/// inside the binary ([`BUILTIN_YAMLS`]).
pub fn load_spec(path: &str, nc: Option<usize>) -> Result<ModelSpec> {
    let file = Path::new(path).file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let name = p6_name(&file);
    let text = if Path::new(path).exists() {
        crate::io::read_text(Path::new(path))?
    } else if let Some(text) = builtin(&name).filter(|_| !path.contains('/')) {
        text.to_string()
    } else {
        let names: Vec<String> = BUILTIN_YAMLS.iter().map(|(s, _)| format!("{s}.yaml")).collect();
        bail!(
            "{path}: no such file (built-in models: {}, each also with a scale letter, e.g. yolov8n.yaml, \
             yolov8n-p6.yaml, yolov5nu.yaml)",
            names.join(", ")
        );
    };
    parse_spec(&text, &name, guess_scale(&name), nc)
}

/// Ultralytics' renaming of the old P6 names: `yolov8n6.yaml` is `yolov8n-p6.yaml` (v5 and v8).
fn p6_name(file: &str) -> String {
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let b = stem.as_bytes();
    if b.len() == 8
        && (stem.starts_with("yolov5") || stem.starts_with("yolov8"))
        && b"nslmx".contains(&b[6])
        && b[7] == b'6'
    {
        return format!("{}-p6.{ext}", &stem[..7]);
    }
    file.to_string()
}

/// The built-in YAML for a file name, found as Ultralytics' `yaml_model_load` finds it: the
/// scale letter after the first digits that have one is dropped (`yolov8n-p6` → `yolov8-p6`,
/// `yolov5nu` → `yolov5u`), and `yolov5u` is `yolov5`.
fn builtin(file: &str) -> Option<&'static str> {
    let stem = file.strip_suffix(".yaml").or_else(|| file.strip_suffix(".yml"))?;
    let b = stem.as_bytes();
    let mut unified = stem.to_string();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j < b.len() && b"nslmx".contains(&b[j]) {
                unified = format!("{}{}", &stem[..j], &stem[j + 1..]);
                break;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    let unified = if unified == "yolov5u" { "yolov5".to_string() } else { unified };
    BUILTIN_YAMLS.iter().find(|(s, _)| *s == unified).map(|(_, t)| *t)
}

fn num(y: &Yaml) -> Option<f64> {
    match y {
        Yaml::Integer(i) => Some(*i as f64),
        Yaml::Real(_) => y.as_f64(),
        _ => None,
    }
}

/// Parses YAML text; `source` names it in errors.
pub fn parse_spec(text: &str, source: &str, scale: Option<char>, nc_override: Option<usize>) -> Result<ModelSpec> {
    let docs = crate::io::parse_yaml(text, source)?;
    let doc = docs.first().ok_or_else(|| anyhow!("{source}: empty YAML"))?;
    spec_from_doc(doc, source, scale, nc_override)
}

/// Resolves a parsed model YAML document (from a file, or the `yaml` dict a checkpoint keeps);
/// `scale` picks a row of `scales` (default: the first, as Ultralytics does).
pub fn spec_from_doc(doc: &Yaml, source: &str, scale: Option<char>, nc_override: Option<usize>) -> Result<ModelSpec> {
    let yaml_nc = match &doc["nc"] {
        Yaml::Integer(n) if *n > 0 => Some(*n as usize),
        Yaml::BadValue => None,
        other => bail!("{source}: `nc` must be a positive integer, found {other:?}"),
    };
    let nc =
        nc_override.or(yaml_nc).ok_or_else(|| anyhow!("{source}: no `nc` given (set it in the YAML or pass --nc)"))?;
    if nc == 0 || nc > MAX_CLASSES {
        bail!("{source}: nc {nc} is outside 1..={MAX_CLASSES}");
    }
    let (scale_name, depth, width, max_channels) = match &doc["scales"] {
        Yaml::Hash(h) => {
            let keys: Vec<String> = h.keys().filter_map(|k| k.as_str().map(String::from)).collect();
            let key = match scale {
                Some(c) => {
                    let k = c.to_string();
                    if !keys.contains(&k) {
                        bail!("{source}: scale `{k}` is not among the YAML's scales {keys:?}");
                    }
                    k
                }
                None => keys.first().cloned().ok_or_else(|| anyhow!("{source}: `scales` is empty"))?,
            };
            let row = &doc["scales"][key.as_str()];
            let vals: Vec<f64> = row.as_vec().map(|v| v.iter().filter_map(num).collect()).unwrap_or_default();
            if vals.len() != 3 {
                bail!("{source}: scale `{key}` must be [depth, width, max_channels], found {row:?}");
            }
            (key, vals[0], vals[1], check_max_channels(vals[2], source)?)
        }
        Yaml::BadValue => {
            let d = num(&doc["depth_multiple"]).unwrap_or(1.0);
            let w = num(&doc["width_multiple"]).unwrap_or(1.0);
            let m = num(&doc["max_channels"]).map(|m| check_max_channels(m, source)).transpose()?;
            (String::new(), d, w, m.unwrap_or(usize::MAX))
        }
        other => bail!("{source}: `scales` must be a mapping, found {other:?}"),
    };
    for (what, v) in [("depth multiple", depth), ("width multiple", width)] {
        if !(v.is_finite() && v > 0.0 && v <= 16.0) {
            bail!("{source}: {what} {v} is outside (0, 16]");
        }
    }
    let mut layers = vec![];
    for section in ["backbone", "head"] {
        let rows = doc[section].as_vec().ok_or_else(|| anyhow!("{source}: missing `{section}` list"))?;
        for (j, row) in rows.iter().enumerate() {
            let i = layers.len();
            if i >= MAX_LAYERS {
                bail!("{source}: more than {MAX_LAYERS} layers");
            }
            let at = format!("{source}: layer {i} ({section}[{j}])");
            layers.push(parse_row(row, i, nc, depth, &at)?);
        }
    }
    if layers.is_empty() {
        bail!("{source}: the model has no layers");
    }
    let yaml = as_kept(doc, nc, &scale_name, source)?;
    Ok(ModelSpec { source: source.to_string(), nc, scale: scale_name, depth, width, max_channels, layers, yaml })
}

/// `doc` as Ultralytics' `yaml_model_load` leaves it on a model: with the class count in use,
/// the scale letter, the file name and the input channels.
fn as_kept(doc: &Yaml, nc: usize, scale: &str, source: &str) -> Result<String> {
    let mut h = doc.as_hash().cloned().ok_or_else(|| anyhow!("{source}: the model YAML is not a mapping"))?;
    h.insert(Yaml::String("nc".into()), Yaml::Integer(nc as i64));
    h.insert(Yaml::String("scale".into()), Yaml::String(scale.into()));
    h.insert(Yaml::String("yaml_file".into()), Yaml::String(source.into()));
    h.entry(Yaml::String("channels".into())).or_insert(Yaml::Integer(3));
    let mut text = String::new();
    yaml_rust2::YamlEmitter::new(&mut text).dump(&Yaml::Hash(h)).map_err(|e| anyhow!("{source}: {e}"))?;
    Ok(text)
}

/// A scale's channel cap: a whole number in 1..=16384.
fn check_max_channels(m: f64, source: &str) -> Result<usize> {
    if !(m >= 1.0 && m <= 16384.0 && m.fract() == 0.0) {
        bail!("{source}: max_channels {m} is not a whole number in 1..=16384");
    }
    Ok(m as usize)
}

fn parse_row(row: &Yaml, i: usize, nc: usize, depth: f64, at: &str) -> Result<LayerSpec> {
    let cells =
        row.as_vec().filter(|c| c.len() == 4).ok_or_else(|| anyhow!("{at}: expected [from, repeats, module, args]"))?;
    let resolve = |f: i64| -> Result<Option<usize>> {
        let abs = if f < 0 { i as i64 + f } else { f };
        if abs == -1 && i == 0 {
            return Ok(None);
        }
        if abs < 0 || abs >= i as i64 {
            bail!("{at}: `from` index {f} does not name an earlier layer");
        }
        Ok(Some(abs as usize))
    };
    let from = match &cells[0] {
        Yaml::Integer(f) => vec![resolve(*f)?],
        Yaml::Array(v) => v
            .iter()
            .map(|f| f.as_i64().ok_or_else(|| anyhow!("{at}: `from` entries must be integers")).and_then(resolve))
            .collect::<Result<_>>()?,
        other => bail!("{at}: `from` must be an integer or a list, found {other:?}"),
    };
    if from.is_empty() {
        bail!("{at}: `from` lists no layer");
    }
    let n = cells[1]
        .as_i64()
        .filter(|n| (1..=MAX_REPEATS).contains(n))
        .ok_or_else(|| anyhow!("{at}: repeats must be an integer in 1..={MAX_REPEATS}"))?;
    let repeats = if n > 1 { round_half_even(n as f64 * depth).max(1) as usize } else { n as usize };
    let module = cells[2].as_str().ok_or_else(|| anyhow!("{at}: module must be a name"))?.to_string();
    let args = cells[3]
        .as_vec()
        .ok_or_else(|| anyhow!("{at}: args must be a list"))?
        .iter()
        .map(|a| {
            Ok(match a {
                Yaml::Integer(v) => Arg::Int(*v),
                Yaml::Real(_) => Arg::Float(a.as_f64().unwrap_or(0.0)),
                Yaml::Boolean(b) => Arg::Bool(*b),
                Yaml::Null => Arg::None,
                Yaml::String(s) if s == "nc" => Arg::Int(nc as i64),
                Yaml::String(s) if s == "None" => Arg::None,
                Yaml::String(s) if s == "True" => Arg::Bool(true),
                Yaml::String(s) if s == "False" => Arg::Bool(false),
                Yaml::String(s) => Arg::Str(s.clone()),
                other => bail!("{at}: unsupported argument {other:?}"),
            })
        })
        .collect::<Result<_>>()?;
    Ok(LayerSpec { from, repeats, module, args })
}
