//! Ultralytics detection datasets: the dataset YAML, image listing, the images/ → labels/ path
//! rule and label checking (bad files are counted and skipped with a warning, as Ultralytics
//! does; a split without a usable image is an error).

use super::image::{decode, Img};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use yaml_rust2::Yaml;

/// Image suffixes Ultralytics accepts (those slimc can decode).
pub const IMAGE_SUFFIXES: [&str; 8] = ["bmp", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"];

/// A parsed dataset YAML.
#[derive(Clone, Debug)]
pub struct DatasetSpec {
    /// Dataset root.
    pub root: PathBuf,
    /// Training sources (directories or .txt lists), resolved.
    pub train: Vec<PathBuf>,
    /// Validation sources, resolved.
    pub val: Vec<PathBuf>,
    /// Class names by id.
    pub names: Vec<String>,
}

fn sources(y: &Yaml, root: &Path, key: &str, file: &Path) -> Result<Vec<PathBuf>> {
    let list: Vec<&Yaml> = match y {
        Yaml::String(_) => vec![y],
        Yaml::Array(a) => a.iter().collect(),
        Yaml::BadValue => bail!("{}: `{key}` is required", file.display()),
        _ => bail!("{}: `{key}` must be a path or a list of paths", file.display()),
    };
    list.into_iter()
        .map(|s| match s.as_str() {
            Some(p) => Ok(root.join(p)),
            None => bail!("{}: `{key}` entries must be paths", file.display()),
        })
        .collect()
}

/// Reads a dataset YAML (`path`, `train`, `val`, `names`, optional `nc`). A relative `path` is
/// resolved against the YAML's own folder.
pub fn load_dataset_spec(file: &Path) -> Result<DatasetSpec> {
    let text = crate::io::read_text(file)?;
    let docs = crate::io::parse_yaml(&text, &file.display().to_string())?;
    let y = docs.first().ok_or_else(|| anyhow!("{}: empty YAML", file.display()))?;
    let here = file.parent().unwrap_or(Path::new("."));
    let root = match y["path"].as_str() {
        Some(p) if Path::new(p).is_absolute() => PathBuf::from(p),
        Some(p) => here.join(p),
        None => here.to_path_buf(),
    };
    let names: Vec<String> = match &y["names"] {
        Yaml::Array(a) => a.iter().map(|n| n.as_str().map(str::to_string)).collect::<Option<_>>(),
        Yaml::Hash(h) => {
            let mut v: Vec<(i64, String)> = vec![];
            for (k, n) in h {
                v.push((k.as_i64().ok_or_else(|| anyhow!("{}: `names` keys must be class ids", file.display()))?, {
                    n.as_str().map(str::to_string).unwrap_or_else(|| format!("{n:?}"))
                }));
            }
            v.sort();
            if v.iter().enumerate().any(|(i, (k, _))| *k != i as i64) {
                bail!("{}: `names` ids must be 0..{}", file.display(), v.len());
            }
            Some(v.into_iter().map(|(_, n)| n).collect())
        }
        _ => None,
    }
    .ok_or_else(|| anyhow!("{}: `names` must be a list or an id: name mapping", file.display()))?;
    if names.is_empty() {
        bail!("{}: `names` is empty", file.display());
    }
    if let Some(nc) = y["nc"].as_i64() {
        if nc as usize != names.len() {
            bail!("{}: nc {nc} does not match the {} names", file.display(), names.len());
        }
    }
    Ok(DatasetSpec {
        train: sources(&y["train"], &root, "train", file)?,
        val: sources(&y["val"], &root, "val", file)?,
        root,
        names,
    })
}

/// Whether a path names an image file Ultralytics reads (by its extension).
pub fn is_image(p: &Path) -> bool {
    p.extension().map(|e| e.to_string_lossy().to_lowercase()).is_some_and(|e| IMAGE_SUFFIXES.contains(&e.as_str()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Every image of a split: directories are searched recursively, `.txt` files list one image
/// per line (`./` relative to the list's folder). Sorted, as Ultralytics sorts them.
pub fn list_images(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for s in sources {
        if s.is_dir() {
            walk(s, &mut out)?;
        } else if s.extension().is_some_and(|e| e == "txt") {
            let text = std::fs::read_to_string(s).with_context(|| format!("{}: cannot read", s.display()))?;
            let base = s.parent().unwrap_or(Path::new("."));
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let p = line.strip_prefix("./").map(|r| base.join(r)).unwrap_or_else(|| PathBuf::from(line));
                if is_image(&p) {
                    out.push(p);
                }
            }
        } else {
            bail!("{}: no such directory or .txt image list", s.display());
        }
    }
    out.sort();
    Ok(out)
}

/// The label file of an image: the last `/images/` becomes `/labels/`, the suffix `.txt`.
pub fn label_path(image: &Path) -> PathBuf {
    let s = image.to_string_lossy();
    let sep = std::path::MAIN_SEPARATOR;
    let key = format!("{sep}images{sep}");
    let swapped = match s.rfind(&key) {
        Some(i) => format!("{}{sep}labels{sep}{}", &s[..i], &s[i + key.len()..]),
        None => s.to_string(),
    };
    Path::new(&swapped).with_extension("txt")
}

/// One object: class and normalised cx, cy, w, h.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Label {
    /// Class id.
    pub cls: usize,
    /// Normalised cx, cy, w, h.
    pub xywh: [f32; 4],
}

/// Parses a label file's text. Returns the labels (duplicates removed) and how many duplicate
/// rows were dropped; a bad line is an error naming its line number.
pub fn parse_labels(text: &str, nc: usize) -> std::result::Result<(Vec<Label>, usize), String> {
    let mut out: Vec<Label> = vec![];
    let mut seen = std::collections::HashSet::new();
    let mut dups = 0;
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        let nums: Vec<f32> = fields
            .iter()
            .map(|f| f.parse::<f32>().map_err(|_| format!("{at}: `{f}` is not a number")))
            .collect::<std::result::Result<_, _>>()?;
        let xywh = if nums.len() == 5 {
            [nums[1], nums[2], nums[3], nums[4]]
        } else if nums.len() > 6 && nums.len() % 2 == 1 {
            // A polygon: its box is the points' extent.
            let (xs, ys): (Vec<f32>, Vec<f32>) = nums[1..].chunks(2).map(|p| (p[0], p[1])).unzip();
            let (x0, x1) = (xs.iter().copied().fold(f32::MAX, f32::min), xs.iter().copied().fold(f32::MIN, f32::max));
            let (y0, y1) = (ys.iter().copied().fold(f32::MAX, f32::min), ys.iter().copied().fold(f32::MIN, f32::max));
            [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
        } else {
            return Err(format!("{at}: {} fields; labels need 5 (class cx cy w h) or a polygon", nums.len()));
        };
        if nums[1..].iter().any(|&v| !(-0.01..=1.01).contains(&v)) {
            return Err(format!("{at}: coordinates must be normalised to [0, 1]"));
        }
        if nums[0] < 0.0 || nums[0].fract() != 0.0 || nums[0] as usize >= nc {
            return Err(format!("{at}: class {} is not an id below the dataset's {nc} classes", fields[0]));
        }
        let l = Label { cls: nums[0] as usize, xywh };
        // Exact duplicates (as NumPy's unique over rows finds them), by bit pattern with -0
        // read as 0: a hash set keeps this linear in the number of rows.
        let key = (l.cls, xywh.map(|v| (v + 0.0).to_bits()));
        if seen.insert(key) {
            out.push(l);
        } else {
            dups += 1;
        }
    }
    Ok((out, dups))
}

/// One usable image of a split.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Image file.
    pub path: PathBuf,
    /// Original (h, w).
    pub shape: [usize; 2],
    /// Its objects.
    pub labels: Vec<Label>,
}

/// What scanning a split found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Images with labels.
    pub found: usize,
    /// Images without a label file (background).
    pub missing: usize,
    /// Images with an empty label file.
    pub empty: usize,
    /// Images skipped as corrupt (bad image or bad label file).
    pub corrupt: usize,
    /// One warning per skipped or repaired file.
    pub warnings: Vec<String>,
}

impl ScanReport {
    /// Ultralytics' one-line scan summary.
    pub fn summary(&self, split: &str) -> String {
        format!(
            "{split}: {} images, {} backgrounds, {} corrupt ({} with labels, {} empty label files)",
            self.found + self.missing + self.empty,
            self.missing + self.empty,
            self.corrupt,
            self.found,
            self.empty
        )
    }
}

/// Scans a split: decodes every image once (to find corrupt ones and read sizes) and checks
/// every label file. Returns the usable samples and the report; no usable image is an error.
pub fn scan(sources: &[PathBuf], nc: usize, split: &str) -> Result<(Vec<Sample>, ScanReport)> {
    use rayon::prelude::*;
    let images = list_images(sources)?;
    if images.is_empty() {
        bail!(
            "{split}: no images found in {}",
            sources.iter().map(|s| s.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(dir) = images.first().map(|p| label_path(p)).and_then(|l| l.parent().map(Path::to_path_buf)) {
        if !dir.is_dir() {
            bail!("{split}: labels directory {} does not exist (labels sit beside images/ in labels/)", dir.display());
        }
    }
    enum Outcome {
        Ok(Sample, Option<String>, bool),
        Corrupt(String),
    }
    let results: Vec<Outcome> = images
        .par_iter()
        .map(|p| {
            let img: Img = match std::fs::read(p).map_err(|e| e.to_string()).and_then(|b| decode(&b)) {
                Ok(i) => i,
                Err(e) => return Outcome::Corrupt(format!("{}: ignoring corrupt image: {e}", p.display())),
            };
            let lp = label_path(p);
            let text = match std::fs::metadata(&lp) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                _ => match crate::io::read_text(&lp) {
                    Ok(t) => Some(t),
                    Err(e) => return Outcome::Corrupt(format!("{e:#}; labels unreadable, image ignored")),
                },
            };
            let (labels, note, has_file) = match text {
                None => (vec![], None, false),
                Some(text) => match parse_labels(&text, nc) {
                    Ok((l, 0)) => (l, None, true),
                    Ok((l, d)) => (l, Some(format!("{}: {d} duplicate labels removed", lp.display())), true),
                    Err(e) => return Outcome::Corrupt(format!("{}: {e}; image ignored", lp.display())),
                },
            };
            Outcome::Ok(Sample { path: p.clone(), shape: [img.h, img.w], labels }, note, has_file)
        })
        .collect();
    let mut report = ScanReport::default();
    let mut samples = vec![];
    for r in results {
        match r {
            Outcome::Ok(s, note, has_file) => {
                match (has_file, s.labels.is_empty()) {
                    (false, _) => report.missing += 1,
                    (true, true) => report.empty += 1,
                    (true, false) => report.found += 1,
                }
                report.warnings.extend(note);
                samples.push(s);
            }
            Outcome::Corrupt(w) => {
                report.corrupt += 1;
                report.warnings.push(w);
            }
        }
    }
    if samples.is_empty() {
        bail!("{split}: no usable image ({} corrupt): {}", report.corrupt, report.warnings.join("; "));
    }
    Ok((samples, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_path_swaps_the_last_images_folder() {
        let p = label_path(Path::new("/d/images/x/images/a.b.jpg"));
        assert_eq!(p, PathBuf::from("/d/images/x/labels/a.b.txt"));
    }

    #[test]
    fn labels_parse_polygons_and_reject_bad_lines() {
        let (l, d) = parse_labels("0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.5\n", 2).unwrap();
        assert_eq!(d, 1);
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].cls, 1);
        assert!((l[1].xywh[0] - 0.2).abs() < 1e-6 && (l[1].xywh[3] - 0.4).abs() < 1e-6);
        assert!(parse_labels("0 0.5 0.5 0.2\n", 1).unwrap_err().starts_with("line 1: 4 fields"));
        assert!(parse_labels("\n3 0.5 0.5 0.2 0.2\n", 2).unwrap_err().starts_with("line 2: class 3"));
        assert!(parse_labels("0 0.5 1.5 0.2 0.2\n", 1).unwrap_err().contains("normalised"));
        assert!(parse_labels("0 0.5 x 0.2 0.2\n", 1).unwrap_err().contains("`x` is not a number"));
    }
}

/// A class's name, or its id where the model has no name for it.
pub fn class_name(names: &[String], class: usize) -> String {
    names.get(class).cloned().unwrap_or_else(|| class.to_string())
}
