//! Removing data files off the writer's critical path.
//!
//! Dropping a data file's mapping and unlinking it make the kernel free
//! every page: about 0.2 s per GiB of tmpfs here, a quarter of a
//! checkpoint's time, paid at every commit that frees a file. So the writer
//! only renames the file to `doomed-<pid>-<n>.tmp` (microseconds; a name no
//! reader looks at and no writer takes, so a later file of the same epoch
//! can never be the one removed) and hands it, with its mapping, to a
//! thread that drops both. A process killed before that thread got to a
//! file leaves it under its doomed name; the next pre-faulting of the
//! store removes it with the other leftovers.

use super::CachedMap;
use crate::StoreError;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

/// A file to remove and its mapping, if the store held one.
struct Doomed {
    path: PathBuf,
    map: Option<CachedMap>,
}

/// The removal thread, started at the first removal.
#[derive(Default)]
pub(super) struct Reaper {
    worker: Option<(Sender<Doomed>, JoinHandle<()>)>,
    /// Files doomed so far: each one's name is its own.
    doomed: u64,
}

/// Whether `name` is a file the reaper renamed and did not remove yet.
pub(super) fn is_doomed(name: &str) -> bool {
    name.starts_with("doomed-") && name.ends_with(".tmp")
}

impl Reaper {
    /// Takes `path` from its name now and removes it (and drops `map`) in the background.
    pub fn remove(&mut self, path: &Path, map: Option<CachedMap>) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let doomed = dir.join(format!("doomed-{}-{}.tmp", std::process::id(), self.doomed));
        self.doomed += 1;
        std::fs::rename(path, &doomed).map_err(|e| StoreError::io("remove data file", path, e))?;
        let job = Doomed { path: doomed, map };
        let job = match self.sender() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        // No thread to hand it to: remove it here.
        drop(job.map);
        let _ = std::fs::remove_file(&job.path);
        Ok(())
    }

    fn sender(&mut self) -> Option<&Sender<Doomed>> {
        if self.worker.is_none() {
            let (tx, rx) = mpsc::channel::<Doomed>();
            let handle = std::thread::Builder::new()
                .name("pm-reaper".into())
                .spawn(move || {
                    for job in rx {
                        drop(job.map);
                        if let Err(e) = std::fs::remove_file(&job.path) {
                            tracing::debug!(path = %job.path.display(), error = %e, "removing a doomed data file failed");
                        }
                    }
                })
                .ok()?;
            self.worker = Some((tx, handle));
        }
        self.worker.as_ref().map(|(tx, _)| tx)
    }

    /// Waits until every file handed over is removed.
    pub fn finish(&mut self) {
        if let Some((tx, handle)) = self.worker.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}
