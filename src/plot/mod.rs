//! Pictures, as Ultralytics users know them: `results.png`, the validation curves and confusion
//! matrices, and images with boxes drawn on them (training and validation mosaics, predictions).
//! Text is drawn with a bundled font, so no system fonts are needed.

pub mod annotate;
pub mod confusion;
pub mod curves;
pub mod results;
pub mod val;

use anyhow::{anyhow, Context, Result};
use plotters::style::{FontStyle, RGBColor};
use std::path::{Path, PathBuf};
use std::sync::Once;

/// DejaVu Sans (free licence, see assets/fonts).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Makes the bundled font the `sans-serif` family of plotters.
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Ultralytics' 20 class colours (`ultralytics.utils.plotting.Colors`), by class id modulo 20.
pub fn class_color(class: usize) -> RGBColor {
    const HEX: [u32; 20] = [
        0x042AFF, 0x0BDBEB, 0xF3F3F3, 0x00DFB7, 0x111F68, 0xFF6FDD, 0xFF444F, 0xCCED00, 0x00F344, 0xBD00FF, 0x00B4FF,
        0xDD00BA, 0x00FFFF, 0x26C000, 0x01FFB3, 0x7D24FF, 0x7B0068, 0xFF1B6C, 0xFC6D2F, 0xA2FF0B,
    ];
    let h = HEX[class % 20];
    RGBColor((h >> 16) as u8, (h >> 8) as u8, h as u8)
}

/// Writes `out` atomically: `draw` writes a temporary file of the same extension beside it,
/// which then replaces `out`. The error names `out`.
pub fn replace_atomic<E: std::fmt::Debug>(
    out: &Path,
    draw: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> Result<()> {
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("png");
    let tmp: PathBuf = out.with_extension(format!("tmp.{ext}"));
    let drawn = draw(&tmp).map_err(|e| anyhow!("{e:?}"));
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot draw {}", out.display())));
    }
    std::fs::rename(&tmp, out).with_context(|| format!("{}", out.display()))
}

/// Plotters' error as an anyhow error.
pub(crate) fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}
