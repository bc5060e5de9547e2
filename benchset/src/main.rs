//! `slimc-benchset`: generates slimc's accuracy benchmark set (see the library's docs).

use anyhow::Result;
use clap::Parser;
use slimc_benchset::fashion::{CLASS_NAMES, DEBIAN_DIR};
use slimc_benchset::{generate, read_manifest, Settings, SplitStats};
use std::path::PathBuf;
use std::time::Instant;

/// Generates the benchmark set: Fashion-MNIST products composited onto aerial tree photos,
/// labelled for detect, segment, OBB and pose. Deterministic: the same settings give the same
/// bytes on any machine and thread count.
#[derive(Parser)]
#[command(
    name = "slimc-benchset",
    after_help = "Example:\n  slimc-benchset --out datasets/benchset --train 2000 --val 1000 --size 160"
)]
struct Args {
    /// Output folder (created; a previous set there is replaced).
    #[arg(long)]
    out: PathBuf,
    /// Training scenes.
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Validation scenes.
    #[arg(long, default_value_t = 1000)]
    val: usize,
    /// Scene side in pixels.
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Seed of every scene's random stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fashion-MNIST's gzipped idx files (Debian's dataset-fashion-mnist).
    #[arg(long, default_value = DEBIAN_DIR)]
    fashion: PathBuf,
    /// The trees dataset whose images/train and images/val tiles give the backgrounds.
    #[arg(long, default_value = "datasets/trees")]
    trees: PathBuf,
    /// Do nothing when OUT already holds a whole set with these settings.
    #[arg(long)]
    keep: bool,
}

/// One split's counts as a table row.
fn row(name: &str, s: &SplitStats) -> String {
    let classes: Vec<String> = s.per_class.iter().map(|c| c.to_string()).collect();
    format!(
        "{name:<6} {:>6} {:>9} {:>7.2}   {:>5} {:>5} {:>5} {:>5}   {:>8}   {}",
        s.images,
        s.instances,
        s.instances as f64 / s.images.max(1) as f64,
        s.by_size[0],
        s.by_size[1],
        s.by_size[2],
        s.by_size[3],
        s.occluded,
        classes.join(" ")
    )
}

fn main() -> Result<()> {
    let a = Args::parse();
    let settings = Settings { train: a.train, val: a.val, size: a.size, seed: a.seed };
    if a.keep && read_manifest(&a.out).is_some_and(|m| m.settings == settings) {
        println!("{}: the set is already there", a.out.display());
        return Ok(());
    }
    let t = Instant::now();
    let m = generate(&a.out, &settings, &a.fashion, &a.trees)?;
    println!(
        "{}: {} + {} scenes of {} px in {:.1} s",
        a.out.display(),
        a.train,
        a.val,
        a.size,
        t.elapsed().as_secs_f64()
    );
    println!(
        "split  images instances per-img    <16  <32  <64  >=64   occluded   per class ({})",
        CLASS_NAMES.join(", ")
    );
    println!("{}", row("train", &m.train));
    println!("{}", row("val", &m.val));
    Ok(())
}
