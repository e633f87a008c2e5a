//! Asynchronous checkpoints: the rank is blocked only while its regions are
//! copied into the epoch's data file (pre-faulted, so at memcpy speed);
//! hashing, the choice of the chunks that changed, and publishing the
//! manifest run on a background thread while the application computes.
//!
//! The staging memory is the data file itself, a file of the pool: an
//! asynchronous checkpoint needs no memory beyond what a synchronous one
//! does. At most one is in flight per store: another write waits for it.
//! Until its manifest is renamed into place the new data file is referenced
//! by nothing, so a crash at any moment leaves the earlier snapshots as
//! they were.

use super::write::{Publisher, chunk_slots, region_manifests};
use super::{CachedMap, Store, WritePhase, WriteReport};
use crate::StoreError;
use crate::copy::copy_nontemporal;
use crate::format::{ChunkRef, Manifest, chunk_hash};
use crate::region::RegionRef;
use rayon::prelude::*;
use std::os::unix::fs::MetadataExt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An asynchronous checkpoint whose background publishing has started.
pub(super) struct Staged {
    epoch: u64,
    started: Instant,
    handle: JoinHandle<Result<Published, StoreError>>,
}

/// What the background thread hands back.
struct Published {
    data: Option<(u64, CachedMap)>,
    report: WriteReport,
}

/// What the background thread needs: the copied data file, the layout, and
/// the previous snapshot (for deciding which chunks changed).
struct Job {
    data: Option<CachedMap>,
    regions: Vec<(String, u64, u64)>,
    chunk_size: usize,
    prev: Option<Manifest>,
    manifest_owner: (String, u32),
    epoch: u64,
    step: u64,
    started: Instant,
    publisher: Publisher,
    data_path: std::path::PathBuf,
}

/// What the blocked part of an asynchronous checkpoint did.
#[derive(Clone, Copy, Debug)]
pub struct StageReport {
    pub epoch: u64,
    /// Bytes copied (all of the state).
    pub state_bytes: u64,
    /// Time the caller was blocked.
    pub blocked: Duration,
}

impl Store {
    /// Takes the snapshot of `regions` at `epoch` asynchronously: copies
    /// every region into the epoch's data file and returns; a background
    /// thread then hashes the chunks, keeps references to those unchanged
    /// since the previous snapshot (as [`Store::write`] does) and publishes
    /// the manifest. Collect the outcome with [`Store::finish_staged`]
    /// (which prunes); a checkpoint still in flight is finished first.
    pub fn write_async(
        &mut self,
        epoch: u64,
        step: u64,
        regions: &[RegionRef<'_>],
    ) -> Result<StageReport, StoreError> {
        let mut start = self.begin_write(epoch, regions)?;
        let cs = self.opts.chunk_size;
        let map: &mut [u8] = start
            .data
            .as_mut()
            .map(|d| &mut d.map[..])
            .unwrap_or(&mut []);
        chunk_slots(regions, &start.bases, cs, map)
            .into_par_iter()
            .for_each(|(src, dst, _)| copy_nontemporal(dst, src));
        let (started, blocked) = (start.started, start.started.elapsed());
        let job = Job {
            data: start.data,
            regions: regions
                .iter()
                .zip(&start.bases)
                .map(|(r, &base)| (r.name.to_owned(), r.bytes.len() as u64, base))
                .collect(),
            chunk_size: cs,
            prev: start.prev,
            manifest_owner: (self.job.clone(), self.rank),
            epoch,
            step,
            started,
            publisher: self.publisher(),
            data_path: self.data_path(epoch),
        };
        let handle = std::thread::Builder::new()
            .name("pm-publish".into())
            .spawn(move || publish(job))
            .map_err(|e| StoreError::io("start the publishing thread", self.dir.clone(), e))?;
        self.staged = Some(Staged {
            epoch,
            started,
            handle,
        });
        Ok(StageReport {
            epoch,
            state_bytes: regions.iter().map(|r| r.bytes.len() as u64).sum(),
            blocked,
        })
    }

    /// The epoch of the asynchronous checkpoint in flight, if any.
    pub fn staged_epoch(&self) -> Option<u64> {
        self.staged.as_ref().map(|s| s.epoch)
    }

    /// Whether the checkpoint in flight (if any) has been published or has failed.
    pub fn staged_done(&self) -> bool {
        self.staged.as_ref().is_none_or(|s| s.handle.is_finished())
    }

    /// Waits for the asynchronous checkpoint in flight, then prunes as
    /// [`Store::write`] does. `None` when none was in flight.
    pub fn finish_staged(&mut self) -> Result<Option<WriteReport>, StoreError> {
        let Some(staged) = self.staged.take() else {
            return Ok(None);
        };
        let published = staged.handle.join().unwrap_or_else(|_| {
            Err(StoreError::io(
                "publish a snapshot",
                self.data_path(staged.epoch),
                std::io::Error::other("the publishing thread panicked"),
            ))
        })?;
        if let Some((ino, map)) = published.data {
            self.maps.insert(ino, map);
        }
        let mut report = published.report;
        self.phase(WritePhase::Prune);
        report.pruned = self.prune()?;
        tracing::debug!(
            epoch = report.epoch,
            bytes_written = report.bytes_written,
            elapsed_ms = staged.started.elapsed().as_secs_f64() * 1e3,
            "asynchronous snapshot published"
        );
        Ok(Some(report))
    }

    /// Stops background work before the directory is changed under it: the
    /// pre-fault thread is cancelled, a checkpoint in flight is waited for.
    pub(super) fn abandon_background(&mut self) {
        self.abandon_background_prefault();
        if let Some(staged) = self.staged.take() {
            let _ = staged.handle.join();
        }
        self.reaper.finish();
    }
}

/// The background half: hash, compare, publish.
fn publish(job: Job) -> Result<Published, StoreError> {
    job.publisher.phase(WritePhase::HashChunks);
    let cs = job.chunk_size;
    let map: &[u8] = job.data.as_ref().map(|d| &d.map[..]).unwrap_or(&[]);
    let mut chunks = Vec::new();
    for (name, len, base) in &job.regions {
        let prev_region = job
            .prev
            .as_ref()
            .and_then(|m| m.region(name))
            .filter(|p| p.chunk_size == cs as u64);
        for i in 0..len.div_ceil(cs as u64) as usize {
            let offset = base + (i * cs) as u64;
            let n = (cs as u64).min(len - (i * cs) as u64);
            let reusable = prev_region
                .filter(|p| i < p.chunks.len() && p.chunk_len(i) == n)
                .map(|p| p.chunks[i]);
            chunks.push((offset, n, reusable));
        }
    }
    let refs: Vec<(ChunkRef, bool)> = chunks
        .into_par_iter()
        .map(|(offset, n, reusable)| {
            let hash = chunk_hash(&map[offset as usize..(offset + n) as usize]);
            match reusable {
                Some(old) if old.hash == hash => (old, false),
                _ => {
                    let fresh = ChunkRef {
                        hash,
                        file_epoch: job.epoch,
                        offset,
                    };
                    (fresh, true)
                }
            }
        })
        .collect();

    job.publisher.phase(WritePhase::SyncData);
    let mut data = None;
    if let Some(d) = job.data {
        if job.publisher.sync {
            d.map
                .flush()
                .map_err(|e| StoreError::io("sync data file", &job.data_path, e))?;
        }
        let ino = d.file.metadata().map(|m| m.ino()).unwrap_or(0);
        data = Some((ino, d));
    }

    let (regions, bytes_written, chunks_written) = region_manifests(
        job.regions.iter().map(|(n, l, _)| (n.clone(), *l)),
        cs,
        &refs,
    );
    let manifest = Manifest {
        job: job.manifest_owner.0,
        rank: job.manifest_owner.1,
        epoch: job.epoch,
        step: job.step,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        regions,
    };
    job.publisher.publish(&manifest)?;
    Ok(Published {
        data,
        report: WriteReport {
            epoch: job.epoch,
            step: job.step,
            state_bytes: manifest.state_bytes(),
            bytes_written,
            chunks: manifest.regions.iter().map(|r| r.chunks.len()).sum(),
            chunks_written,
            publish_time: job.started.elapsed(),
            pruned: Vec::new(),
        },
    })
}
