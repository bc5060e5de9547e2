//! Checkpoints written on a thread of their own: encoding, writing and syncing an epoch's model
//! files (last.slim holds the optimizer state too: about 50 MB for yolo11n) overlap the next
//! epoch's training. One batch of files is in flight at a time; each file is still written
//! atomically, so an interrupted run finds the previous epoch's files whole.

use anyhow::{anyhow, Result};
use slimc_ir::Model;
use std::path::PathBuf;
use std::thread::JoinHandle;

/// Writes model files in the background, one batch at a time.
#[derive(Default)]
pub struct Saver {
    pending: Option<JoinHandle<Result<()>>>,
}

impl Saver {
    /// Starts writing `files` (each model to its path, in order) once the previous batch has
    /// been written; returns that batch's error, if it had one.
    pub fn save(&mut self, files: Vec<(Model, PathBuf)>) -> Result<()> {
        self.wait()?;
        self.pending = Some(std::thread::spawn(move || {
            for (model, path) in files {
                model.save(&path)?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// Waits until every file asked for is written.
    pub fn wait(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(h) => h.join().map_err(|_| anyhow!("the checkpoint writer stopped unexpectedly"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Saver {
    /// A run that ends early (an error in a later epoch) still leaves its last files whole.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("WARNING {e:#}");
        }
    }
}
