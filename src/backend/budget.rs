//! The memory budget of a run: `--max-memory`, or by default what the machine has available.
//! A graph whose planned peak exceeds it is refused before anything is allocated.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The user's limit in bytes; 0 when none was given.
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the limit (`--max-memory`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The limit in force: `--max-memory`, else the machine's available memory (Linux
/// `MemAvailable` when the process first asks), else none.
pub fn limit() -> Option<u64> {
    match LIMIT.load(Ordering::Relaxed) {
        0 => available(),
        n => Some(n),
    }
}

/// MemAvailable, read once per process (every model run checks against it).
fn available() -> Option<u64> {
    static AVAILABLE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(read_available)
}

fn read_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Bytes as MB or GB.
pub fn human(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MB", b as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses a run on input of `shape` whose planned arena (`bytes`, None when too large to
/// address) exceeds the limit.
pub fn check_fits(bytes: Option<u64>, shape: &[usize]) -> Result<()> {
    let Some(peak) = bytes else {
        bail!("the input {shape:?} makes the model's intermediate values too large to address");
    };
    if let Some(limit) = limit() {
        if peak > limit {
            bail!(
                "running the model on input {shape:?} needs {} for intermediate values, more than the {} available \
                 (--max-memory); use a smaller image size or batch",
                human(peak),
                human(limit)
            );
        }
    }
    Ok(())
}
