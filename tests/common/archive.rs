//! `.pt` checkpoints (zip archives) taken apart, damaged and put back together, for the tests
//! that feed slimc mutated checkpoints (`checkpoint.rs` in process, `fuzz.rs` through the
//! binary under its memory cap).

use rand::Rng;
use std::io::{Read, Write};

/// The entries of a zip archive, in order: (name, bytes).
pub fn entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
    let mut out = vec![];
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let mut b = vec![];
        f.read_to_end(&mut b).unwrap();
        out.push((f.name().unwrap().to_string(), b));
    }
    out
}

/// A zip archive of `entries`, stored (as `torch.save` writes them).
pub fn archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, bytes) in entries {
        z.start_file(n.as_str(), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// Damage of kind `kind` (0 to 3) to a checkpoint's entries, whose pickle is entry `pkl`: a few
/// of its bytes replaced, the pickle cut short, a span of it repeated, or any entry (a storage,
/// or the pickle) cut to a third.
pub fn damage(e: &mut [(String, Vec<u8>)], pkl: usize, kind: usize, rng: &mut impl Rng) {
    let b = &mut e[pkl].1;
    match kind {
        0 => {
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        2 => {
            let i = rng.random_range(0..b.len());
            let j = (i + rng.random_range(1..64)).min(b.len());
            let chunk = b[i..j].to_vec();
            b.splice(i..i, chunk);
        }
        _ => {
            // A storage cut short or a tensor entry emptied.
            let k = rng.random_range(0..e.len());
            let len = e[k].1.len();
            e[k].1.truncate(len / 3);
        }
    }
}
