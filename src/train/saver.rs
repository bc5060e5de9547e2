//! Checkpoints written on a thread of their own: encoding, writing and syncing an epoch's model
//! files (last.slim holds the optimizer state too: about 50 MB for yolo11n) overlap the next
//! epoch's training. One epoch's files are in flight at a time; each file is still written
//! atomically, and the trainer writes an epoch's results.csv row after its model files, so an
//! interrupted run finds every epoch the CSV lists in last.slim.

use anyhow::{anyhow, Result};
use slimc_ir::Model;
use std::path::PathBuf;
use std::thread::JoinHandle;

/// Writes an epoch's files in the background, one epoch at a time.
#[derive(Default)]
pub struct Saver {
    pending: Option<JoinHandle<Result<()>>>,
}

impl Saver {
    /// Starts writing `files` (each model to its path, in order), then runs `then`, once the
    /// previous epoch's files are written; returns that epoch's error, if it had one.
    pub fn save(
        &mut self,
        files: Vec<(Model, PathBuf)>,
        then: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.wait()?;
        self.pending = Some(std::thread::spawn(move || {
            for (model, path) in files {
                model.save(&path)?;
            }
            then()
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
