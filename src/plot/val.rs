//! Ultralytics' validation plots of a [`ValResult`]: curves, confusion matrices and the
//! `val_batchN` mosaics.

use super::annotate::{mosaic, save_image, Mark, Tile};
use super::confusion::plot_confusion;
use super::curves::plot_val_curves;
use crate::val::validate::{KeptImage, ValResult};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};

/// A kept batch as two rows of mosaic tiles: with the labels, and with the detections.
pub fn tiles(batch: &[KeptImage]) -> (Vec<Tile>, Vec<Tile>) {
    let tile = |k: &KeptImage, marks: Vec<Mark>| Tile { image: k.image.clone(), name: k.name.clone(), marks };
    let labels = batch
        .iter()
        .map(|k| tile(k, k.labels.iter().map(|&(class, xyxy)| Mark { xyxy, class, conf: None }).collect()))
        .collect();
    let preds = batch
        .iter()
        .map(|k| {
            tile(k, k.detections.iter().map(|d| Mark { xyxy: d.xyxy, class: d.class, conf: Some(d.score) }).collect())
        })
        .collect();
    (labels, preds)
}

/// Writes Ultralytics' validation plots into `dir`: the PR, F1, P and R curves, both
/// confusion matrices (each with its numbers as CSV) and the `val_batchN_labels.jpg` /
/// `val_batchN_pred.jpg` mosaics. Returns the files written.
pub fn save_val_plots(r: &ValResult, names: &[String], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
    let mut files = plot_val_curves(&r.metrics, names, dir)?;
    files.extend(plot_confusion(&r.confusion, names, dir)?);
    for (ni, batch) in r.kept.iter().enumerate() {
        let (labels, preds) = tiles(batch);
        for (tiles, kind) in [(labels, "labels"), (preds, "pred")] {
            let f = dir.join(format!("val_batch{ni}_{kind}.jpg"));
            save_image(&mosaic(&tiles, names, 0.25)?, &f)?;
            files.push(f);
        }
    }
    Ok(files)
}
