//! slimc's accuracy benchmark set, generated deterministically: Fashion-MNIST products (real
//! photos, 10 classes) composited onto random crops of the bundled aerial tree photos, labelled
//! in Ultralytics' formats for detection, segmentation, oriented boxes and pose from the same
//! scenes. Training scenes take their products from Fashion-MNIST's training split and their
//! backgrounds from the trees training tiles; validation scenes take both from the held-out
//! splits.
//!
//! Layout of the output folder (each task an Ultralytics dataset; the task folders hold hard
//! links to the same images):
//!
//! ```text
//! detect.yaml  images/{train,val}/*.png  labels/{train,val}/*.txt
//! segment.yaml segment/{images,labels}/{train,val}/
//! obb.yaml     obb/{images,labels}/{train,val}/
//! pose.yaml    pose/{images,labels}/{train,val}/
//! benchset.json   the settings and the counts (written last: its presence marks a whole set)
//! ```

pub mod fashion;
pub mod labels;
pub mod scene;
pub mod silhouette;

use anyhow::{bail, Context, Result};
use fashion::{Fashion, Part, CLASS_NAMES};
use labels::{instances, label_file, Instance, Task, FLIP_IDX, KEYPOINTS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scene::{compose, Photo, Scene, SceneParams};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Training scenes.
    pub train: usize,
    /// Validation scenes.
    pub val: usize,
    /// Side of every scene in pixels.
    pub size: usize,
    /// The seed every scene's random stream derives from.
    pub seed: u64,
}

/// The two splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training scenes.
    Train,
    /// Validation scenes.
    Val,
}

impl Split {
    /// The split's folder name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Counts of one split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// Scenes.
    pub images: usize,
    /// Labelled products.
    pub instances: usize,
    /// Instances per class, in class order.
    pub per_class: Vec<usize>,
    /// Instances whose longest box side is below 16, 32, 64 pixels, and the rest.
    pub by_size: [usize; 4],
    /// Instances partly hidden by a later product.
    pub occluded: usize,
    /// Keypoints hidden by a later product.
    pub hidden_keypoints: usize,
}

/// What `benchset.json` records: the settings and the counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The generator's settings.
    pub settings: Settings,
    /// Counts of the training split.
    pub train: SplitStats,
    /// Counts of the validation split.
    pub val: SplitStats,
}

/// The manifest's file name.
pub const MANIFEST: &str = "benchset.json";

/// One scene's random stream: the seed, then a stream per split and scene index, so that every
/// scene is the same whatever the thread count and a set's first scenes are a smaller set's.
pub fn scene_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((split as u64) << 40) | index as u64);
    rng
}

/// Reads every JPEG in `dir` (background photos), sorted by name.
pub fn read_photos(dir: &Path) -> Result<Vec<Photo>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg")))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{}: no JPEG photos for backgrounds", dir.display());
    }
    paths.iter().map(|p| decode_jpeg(p)).collect()
}

/// A JPEG decoded by libjpeg-turbo (integer IDCT: the same pixels on every CPU).
fn decode_jpeg(path: &Path) -> Result<Photo> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let run = std::panic::catch_unwind(|| -> std::io::Result<Photo> {
        let d = mozjpeg::Decompress::new_mem(&bytes)?;
        let (w, h) = d.size();
        let mut s = d.rgb()?;
        let rgb: Vec<u8> = s.read_scanlines()?;
        s.finish()?;
        Ok(Photo { w, h, rgb })
    });
    match run {
        Ok(Ok(p)) if p.w > 0 && p.h > 0 && p.rgb.len() == p.w * p.h * 3 => Ok(p),
        Ok(Ok(_)) => bail!("{}: empty or short image", path.display()),
        Ok(Err(e)) => bail!("{}: {e}", path.display()),
        Err(_) => bail!("{}: libjpeg could not decode it", path.display()),
    }
}

/// The scene's PNG bytes.
fn png(scene: &Scene) -> Result<Vec<u8>> {
    let s = scene.size as u32;
    let img = image::RgbImage::from_raw(s, s, scene.rgb.clone()).context("scene buffer size")?;
    let mut bytes = vec![];
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// The image folder of `task` (detection's is the root's own) for `split`.
fn images_dir(out: &Path, task: Task, split: Split) -> PathBuf {
    task_root(out, task).join("images").join(split.name())
}

/// The root of `task`'s dataset.
fn task_root(out: &Path, task: Task) -> PathBuf {
    match task {
        Task::Detect => out.to_path_buf(),
        t => out.join(t.name()),
    }
}

/// Writes `bytes` to `path`.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// Generates one split: every scene, its image (linked into each task's folder) and its labels.
fn generate_split(
    out: &Path,
    split: Split,
    count: usize,
    settings: &Settings,
    fashion: &Fashion,
    photos: &[Photo],
) -> Result<SplitStats> {
    for task in Task::ALL {
        for dir in [images_dir(out, task, split), task_root(out, task).join("labels").join(split.name())] {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        }
    }
    let params = SceneParams::new(settings.size);
    let per_scene: Vec<Vec<Instance>> = (0..count)
        .into_par_iter()
        .map(|i| -> Result<Vec<Instance>> {
            let scene = compose(&mut scene_rng(settings.seed, split, i), photos, fashion, &params);
            let insts = instances(&scene);
            let file = format!("{}_{i:05}", split.name());
            let image = images_dir(out, Task::Detect, split).join(format!("{file}.png"));
            write(&image, &png(&scene)?)?;
            for task in Task::ALL {
                if task != Task::Detect {
                    let link = images_dir(out, task, split).join(format!("{file}.png"));
                    if std::fs::hard_link(&image, &link).is_err() {
                        std::fs::copy(&image, &link).with_context(|| format!("{}: cannot write", link.display()))?;
                    }
                }
                let labels = task_root(out, task).join("labels").join(split.name()).join(format!("{file}.txt"));
                write(&labels, label_file(&insts, task, settings.size).as_bytes())?;
            }
            Ok(insts)
        })
        .collect::<Result<_>>()?;
    let mut st = SplitStats { images: count, per_class: vec![0; CLASS_NAMES.len()], ..Default::default() };
    for inst in per_scene.iter().flatten() {
        st.instances += 1;
        st.per_class[inst.class] += 1;
        let side = (inst.bbox[2] - inst.bbox[0]).max(inst.bbox[3] - inst.bbox[1]);
        st.by_size[[16.0, 32.0, 64.0].iter().take_while(|&&t| side >= t).count()] += 1;
        st.occluded += usize::from(inst.visible_share < 1.0);
        st.hidden_keypoints += inst.keypoints.iter().filter(|k| !k.1).count();
    }
    Ok(st)
}

/// The dataset YAML of `task`.
fn dataset_yaml(task: Task, settings: &Settings) -> String {
    let path = match task {
        Task::Detect => ".".to_string(),
        t => t.name().to_string(),
    };
    let mut y = format!(
        "# slimc's benchmark set ({} labels): Fashion-MNIST products on aerial tree photos, {} train + {} val \
         scenes of {}x{} px, seed {}.\n# Generated by scripts/benchset.sh (slimc-benchset); relative paths resolve \
         against this file's folder.\npath: {path}\ntrain: images/train\nval: images/val\n",
        task.name(),
        settings.train,
        settings.val,
        settings.size,
        settings.size,
        settings.seed
    );
    if task == Task::Pose {
        let flip: Vec<String> = FLIP_IDX.iter().map(|i| i.to_string()).collect();
        y.push_str(&format!("kpt_shape: [{KEYPOINTS}, 3]\nflip_idx: [{}]\n", flip.join(", ")));
    }
    y.push_str("names:\n");
    for (i, n) in CLASS_NAMES.iter().enumerate() {
        y.push_str(&format!("  {i}: {n}\n"));
    }
    y
}

/// Removes a previous set at `out` (a folder with a manifest, or one left half-written by an
/// interrupted run: only the generator's own entries), refusing any other non-empty folder.
fn clear(out: &Path) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let ours = [
        "images",
        "labels",
        "segment",
        "obb",
        "pose",
        "detect.yaml",
        "segment.yaml",
        "obb.yaml",
        "pose.yaml",
        MANIFEST,
    ];
    let entries: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("{}: cannot list", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    if let Some(other) = entries.iter().find(|e| !ours.contains(&e.as_str())) {
        bail!("{}: holds {other}, which the generator did not write; give an empty or new folder", out.display());
    }
    for e in entries {
        let p = out.join(e);
        if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }
            .with_context(|| format!("{}: cannot remove", p.display()))?;
    }
    Ok(())
}

/// The manifest of a whole set at `out`, if there is one.
pub fn read_manifest(out: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(out.join(MANIFEST)).ok()?).ok()
}

/// Generates the set into `out` (replacing a previous one) from Fashion-MNIST's idx files in
/// `fashion_dir` and the trees dataset at `trees` (its `images/train` and `images/val` tiles).
pub fn generate(out: &Path, settings: &Settings, fashion_dir: &Path, trees: &Path) -> Result<Manifest> {
    if settings.size < 64 {
        bail!("scenes of {} px are too small (at least 64)", settings.size);
    }
    clear(out)?;
    let mut stats = vec![];
    for (split, count, part) in [(Split::Train, settings.train, Part::Train), (Split::Val, settings.val, Part::Test)] {
        let fashion = Fashion::read(fashion_dir, part)?;
        let photos = read_photos(&trees.join("images").join(split.name()))?;
        stats.push(generate_split(out, split, count, settings, &fashion, &photos)?);
    }
    for task in Task::ALL {
        write(&out.join(format!("{}.yaml", task.name())), dataset_yaml(task, settings).as_bytes())?;
    }
    let val = stats.pop().unwrap_or_default();
    let train = stats.pop().unwrap_or_default();
    let manifest = Manifest { settings: settings.clone(), train, val };
    write(&out.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(manifest)
}
