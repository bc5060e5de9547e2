//! Fashion-MNIST as Debian's `dataset-fashion-mnist` ships it: gzipped idx files of 28×28
//! greyscale product photos (white products on black) and their class bytes.

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Where Debian's `dataset-fashion-mnist` installs the idx files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Side of every Fashion-MNIST image.
pub const SIDE: usize = 28;

/// The ten classes, in label order.
pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

/// One split of Fashion-MNIST in memory.
pub struct Fashion {
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

/// Which of Fashion-MNIST's splits: its 60,000 training or 10,000 test photos.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `train-*-ubyte.gz`.
    Train,
    /// `t10k-*-ubyte.gz`.
    Test,
}

/// The decompressed bytes of `path`.
fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!("{}: cannot open (install Debian's dataset-fashion-mnist: scripts/benchset.sh does)", path.display())
    })?;
    let mut out = vec![];
    GzDecoder::new(file).read_to_end(&mut out).with_context(|| format!("{}: not a gzip file", path.display()))?;
    Ok(out)
}

/// The big-endian u32 at `at`, naming `path` when the file is too short.
fn be_u32(bytes: &[u8], at: usize, path: &Path) -> Result<usize> {
    match bytes.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
        None => bail!("{}: truncated idx header", path.display()),
    }
}

impl Fashion {
    /// Reads one split from `dir` (the idx files as Debian ships them).
    pub fn read(dir: &Path, part: Part) -> Result<Fashion> {
        let stem = match part {
            Part::Train => "train",
            Part::Test => "t10k",
        };
        let ipath = dir.join(format!("{stem}-images-idx3-ubyte.gz"));
        let lpath = dir.join(format!("{stem}-labels-idx1-ubyte.gz"));
        let images = gunzip(&ipath)?;
        let labels = gunzip(&lpath)?;
        if be_u32(&images, 0, &ipath)? != 0x0803 || be_u32(&labels, 0, &lpath)? != 0x0801 {
            bail!("{} / {}: not idx3 images and idx1 labels", ipath.display(), lpath.display());
        }
        let n = be_u32(&images, 4, &ipath)?;
        let (rows, cols) = (be_u32(&images, 8, &ipath)?, be_u32(&images, 12, &ipath)?);
        if (rows, cols) != (SIDE, SIDE) {
            bail!("{}: images are {rows}x{cols}, expected {SIDE}x{SIDE}", ipath.display());
        }
        if be_u32(&labels, 4, &lpath)? != n {
            bail!("{}: {} labels for {n} images", lpath.display(), be_u32(&labels, 4, &lpath)?);
        }
        let pixels = images.get(16..16 + n * SIDE * SIDE).with_context(|| format!("{}: truncated", ipath.display()))?;
        let labels = labels.get(8..8 + n).with_context(|| format!("{}: truncated", lpath.display()))?;
        if let Some(bad) = labels.iter().find(|&&c| c as usize >= CLASS_NAMES.len()) {
            bail!("{}: class {bad} outside 0..{}", lpath.display(), CLASS_NAMES.len());
        }
        Ok(Fashion { pixels: pixels.to_vec(), labels: labels.to_vec() })
    }

    /// The number of photos.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no photo.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Photo `i`: its 28×28 pixels (row-major, 0 = background) and its class.
    pub fn item(&self, i: usize) -> (&[u8], usize) {
        (&self.pixels[i * SIDE * SIDE..(i + 1) * SIDE * SIDE], self.labels[i] as usize)
    }
}
