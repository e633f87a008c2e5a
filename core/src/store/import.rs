//! Importing a snapshot written elsewhere (a replica from a partner node).
//!
//! The import follows the write protocol of [`Store::write`] phase by phase;
//! only the source of the changed chunks differs: instead of copying them
//! from memory, a caller-supplied `fetch` fills them into this store's data
//! file (for example with one-sided transport reads straight into the
//! mapped file). Every fetched chunk is then checked against the manifest's
//! hash before the manifest is published, so a bad transfer can never
//! become a visible snapshot, and an interrupted one leaves the earlier
//! snapshots as they were.

use super::{Store, WritePhase};
use crate::StoreError;
use crate::format::{ChunkRef, Manifest, RegionManifest, chunk_hash};
use crate::region::page_align;
use rayon::prelude::*;
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A chunk the importing store lacks: where the source holds it and where
/// it must be written in this store's data file of the imported epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkFetch {
    /// The chunk as the source's manifest names it (its data file epoch and
    /// offset there, and the hash it must have).
    pub source: ChunkRef,
    pub len: u64,
    /// Byte offset in this store's `epoch-<E>.data`.
    pub dest_offset: u64,
}

/// What one [`Store::import_snapshot`] did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub epoch: u64,
    /// Bytes of region data in the snapshot.
    pub state_bytes: u64,
    /// Bytes fetched (the chunks this store did not hold already).
    pub bytes_fetched: u64,
    pub chunks: usize,
    pub chunks_fetched: usize,
    /// Time until the snapshot was published.
    pub publish_time: Duration,
    pub pruned: Vec<u64>,
}

impl Store {
    /// Publishes a copy of `manifest`'s snapshot (same job, rank and epoch)
    /// in this store, fetching only the chunks that differ from this store's
    /// newest older snapshot.
    ///
    /// `fetch` receives this store's data file for the epoch (already sized,
    /// see [`ImportTarget`]) and the chunks to fill; it must write each
    /// chunk's bytes at its `dest_offset`, by any means that reaches the
    /// file. Every chunk is verified against its hash (by the fetcher
    /// through [`ImportTarget::verify`] as chunks arrive, or here
    /// afterwards) and the manifest is then published atomically, with the
    /// crash guarantees of [`Store::write`].
    pub fn import_snapshot<F, E>(
        &mut self,
        manifest: &Manifest,
        fetch: F,
    ) -> Result<ImportReport, StoreError>
    where
        F: FnOnce(&ImportTarget<'_>, &[ChunkFetch]) -> Result<(), E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let epoch = manifest.epoch;
        self.phase(WritePhase::Prepare);
        if manifest.job != self.job || manifest.rank != self.rank {
            return Err(StoreError::WrongOwner {
                path: self.manifest_path(epoch),
                job: self.job.clone(),
                rank: self.rank,
                found_job: manifest.job.clone(),
                found_rank: manifest.rank,
            });
        }
        manifest
            .check_consistency()
            .map_err(|reason| StoreError::ManifestInvalid {
                path: self.manifest_path(epoch),
                reason,
            })?;
        self.discard_from(epoch)?;
        let prev = self.newest_valid_before(epoch);

        // The same layout rule as `write`: regions back to back, page-aligned.
        let mut fetches = Vec::new();
        let mut regions = Vec::with_capacity(manifest.regions.len());
        let mut end = 0u64;
        for r in &manifest.regions {
            let base = page_align(end);
            end = base + r.len;
            let held = prev
                .as_ref()
                .and_then(|m| m.region(&r.name))
                .filter(|p| p.chunk_size == r.chunk_size);
            let chunks = r
                .chunks
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let len = r.chunk_len(i);
                    let mine = held
                        .filter(|p| i < p.chunks.len() && p.chunk_len(i) == len)
                        .map(|p| p.chunks[i])
                        .filter(|p| p.hash == c.hash);
                    mine.unwrap_or_else(|| {
                        let dest_offset = base + i as u64 * r.chunk_size;
                        fetches.push(ChunkFetch {
                            source: *c,
                            len,
                            dest_offset,
                        });
                        ChunkRef {
                            hash: c.hash,
                            file_epoch: epoch,
                            offset: dest_offset,
                        }
                    })
                })
                .collect();
            regions.push(RegionManifest {
                name: r.name.clone(),
                len: r.len,
                chunk_size: r.chunk_size,
                chunks,
            });
        }
        let file_len = page_align(end);

        let mut bytes_fetched = 0;
        if !fetches.is_empty() {
            let data = self
                .acquire_data_file(epoch, file_len)?
                .expect("chunks to fetch imply a non-empty data file");
            self.phase(WritePhase::CopyChunks);
            let path = self.data_path(epoch);
            let target = ImportTarget {
                file: &data.file,
                len: file_len,
                map: &data.map,
                path: &path,
                epoch,
                regions: &regions,
                verified: Mutex::new(HashSet::new()),
            };
            fetch(&target, &fetches).map_err(|e| StoreError::Fetch {
                dir: self.dir.clone(),
                epoch,
                source: e.into(),
            })?;
            let verified = target
                .verified
                .into_inner()
                .unwrap_or_else(|p| p.into_inner());
            fetches
                .par_iter()
                .filter(|f| !verified.contains(&f.dest_offset))
                .try_for_each(|f| check_chunk(&data.map, &path, epoch, &regions, f))?;
            bytes_fetched = fetches.iter().map(|f| f.len).sum();
            self.phase(WritePhase::SyncData);
            if self.sync {
                data.map
                    .flush()
                    .map_err(|e| StoreError::io("sync data file", &path, e))?;
            }
            let ino = std::os::unix::fs::MetadataExt::ino(
                &data
                    .file
                    .metadata()
                    .map_err(|e| StoreError::io("stat data file", &path, e))?,
            );
            self.maps.insert(ino, data);
        }

        let copy = Manifest {
            job: manifest.job.clone(),
            rank: manifest.rank,
            epoch,
            step: manifest.step,
            created_unix_ms: manifest.created_unix_ms,
            regions,
        };
        self.publish_manifest(&copy)?;
        let publish_time = started.elapsed();
        self.phase(WritePhase::Prune);
        let pruned = self.prune()?;
        tracing::debug!(
            epoch,
            bytes_fetched,
            chunks_fetched = fetches.len(),
            "snapshot imported"
        );
        Ok(ImportReport {
            epoch,
            state_bytes: copy.state_bytes(),
            bytes_fetched,
            chunks: copy.regions.iter().map(|r| r.chunks.len()).sum(),
            chunks_fetched: fetches.len(),
            publish_time,
            pruned,
        })
    }
}

/// Where an import's fetcher puts the chunks: this store's data file of
/// the imported epoch, already sized.
pub struct ImportTarget<'a> {
    file: &'a File,
    len: u64,
    map: &'a [u8],
    path: &'a Path,
    epoch: u64,
    regions: &'a [RegionManifest],
    /// Destination offsets of the chunks already verified.
    verified: Mutex<HashSet<u64>>,
}

impl ImportTarget<'_> {
    /// The data file; write each fetched chunk at its `dest_offset`.
    pub fn file(&self) -> &File {
        self.file
    }

    /// The data file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the hash of `bytes`, the chunk's contents that the fetcher
    /// writes in full at its offset (and fails the fetch if it cannot): one
    /// pass while they are in cache, instead of reading them back. Chunks
    /// checked here are not checked again before publishing.
    pub fn verify_bytes(&self, chunk: &ChunkFetch, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() as u64 != chunk.len || chunk_hash(bytes) != chunk.source.hash {
            let (region, index) = locate(self.regions, chunk.dest_offset, self.epoch);
            return Err(StoreError::ChunkCorrupt {
                path: self.path.to_owned(),
                region,
                chunk: index,
                offset: chunk.dest_offset,
                end: chunk.dest_offset + chunk.len,
            });
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chunk.dest_offset);
        Ok(())
    }

    /// Checks the hash of a chunk that has arrived while others are still
    /// in flight, so that checking overlaps the transfers; chunks checked
    /// here are not checked again before publishing.
    pub fn verify(&self, chunk: &ChunkFetch) -> Result<(), StoreError> {
        check_chunk(self.map, self.path, self.epoch, self.regions, chunk)?;
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chunk.dest_offset);
        Ok(())
    }
}

fn check_chunk(
    map: &[u8],
    path: &Path,
    epoch: u64,
    regions: &[RegionManifest],
    f: &ChunkFetch,
) -> Result<(), StoreError> {
    let start = f.dest_offset as usize;
    let bytes = map.get(start..start + f.len as usize).unwrap_or_default();
    if bytes.len() as u64 == f.len && chunk_hash(bytes) == f.source.hash {
        return Ok(());
    }
    let (region, chunk) = locate(regions, f.dest_offset, epoch);
    Err(StoreError::ChunkCorrupt {
        path: path.to_owned(),
        region,
        chunk,
        offset: f.dest_offset,
        end: f.dest_offset + f.len,
    })
}

/// The region and chunk index whose fetched copy lies at `offset` (for errors).
fn locate(regions: &[RegionManifest], offset: u64, epoch: u64) -> (String, usize) {
    regions
        .iter()
        .find_map(|r| {
            r.chunks
                .iter()
                .position(|c| c.file_epoch == epoch && c.offset == offset)
                .map(|i| (r.name.clone(), i))
        })
        .unwrap_or_default()
}
