//! Reading snapshots back, verifying every chunk, and finding the newest
//! snapshot that verifies.

use super::Store;
use crate::StoreError;
use crate::format::{ChunkHasher, Manifest, RegionManifest};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Bytes read per system call on restore: fits in a core's L2 cache.
const READ_PIECE: usize = 256 << 10;

/// An opened snapshot: its checked manifest and its data files.
pub struct Snapshot {
    manifest: Manifest,
    manifest_path: PathBuf,
    /// Data files by epoch; `None` when the file is missing.
    files: HashMap<u64, (PathBuf, Option<File>)>,
}

/// A snapshot that was skipped while looking for the newest valid one.
#[derive(Debug)]
pub struct Skipped {
    pub epoch: u64,
    pub error: StoreError,
}

/// The outcome of [`Store::latest_valid`].
pub struct Recovery {
    /// The newest snapshot whose every chunk verified, if any.
    pub snapshot: Option<Snapshot>,
    /// Newer snapshots that did not verify, newest first, with the reason.
    pub skipped: Vec<Skipped>,
}

impl Store {
    /// Opens the snapshot of `epoch`: checks its manifest and opens its data
    /// files. Chunks are verified as they are read.
    pub fn open_snapshot(&self, epoch: u64) -> Result<Snapshot, StoreError> {
        let manifest = self.manifest(epoch)?;
        let mut files = HashMap::new();
        for c in manifest.regions.iter().flat_map(|r| &r.chunks) {
            files.entry(c.file_epoch).or_insert_with(|| {
                let path = self.data_path(c.file_epoch);
                let file = File::open(&path).ok();
                (path, file)
            });
        }
        Ok(Snapshot {
            manifest,
            manifest_path: self.manifest_path(epoch),
            files,
        })
    }

    /// Finds the newest snapshot whose manifest and every chunk verify,
    /// skipping (and reporting) damaged newer ones. Operational errors, such
    /// as an unreadable directory, are returned rather than skipped.
    pub fn latest_valid(&self) -> Result<Recovery, StoreError> {
        let mut skipped = Vec::new();
        for epoch in self.epochs()?.into_iter().rev() {
            match self
                .open_snapshot(epoch)
                .and_then(|s| s.verify().map(|()| s))
            {
                Ok(snapshot) => {
                    return Ok(Recovery {
                        snapshot: Some(snapshot),
                        skipped,
                    });
                }
                Err(error)
                    if error.is_damage() || matches!(error, StoreError::NoSuchEpoch { .. }) =>
                {
                    tracing::warn!(epoch, %error, "skipping snapshot that does not verify");
                    skipped.push(Skipped { epoch, error });
                }
                Err(error) => return Err(error),
            }
        }
        Ok(Recovery {
            snapshot: None,
            skipped,
        })
    }
}

impl Snapshot {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn epoch(&self) -> u64 {
        self.manifest.epoch
    }

    pub fn step(&self) -> u64 {
        self.manifest.step
    }

    /// Copies region `name` into `dst`, which must have the region's exact
    /// length, verifying every chunk's hash.
    pub fn read_region(&self, name: &str, dst: &mut [u8]) -> Result<(), StoreError> {
        let region = self.region(name)?;
        if region.len != dst.len() as u64 {
            return Err(StoreError::RegionSize {
                path: self.manifest_path.clone(),
                region: name.to_owned(),
                epoch: self.manifest.epoch,
                stored: region.len,
                given: dst.len() as u64,
            });
        }
        // The first damaged chunk in file order is reported, whichever
        // thread finds damage first.
        dst.par_chunks_mut(region.chunk_size as usize)
            .enumerate()
            .map(|(i, buf)| self.read_chunk(region, i, buf))
            .find_first(Result::is_err)
            .unwrap_or(Ok(()))
    }

    /// Reads every chunk of every region and checks its hash, without a destination.
    pub fn verify(&self) -> Result<(), StoreError> {
        let chunks: Vec<(&RegionManifest, usize)> = self
            .manifest
            .regions
            .iter()
            .flat_map(|r| (0..r.chunks.len()).map(move |i| (r, i)))
            .collect();
        chunks
            .par_iter()
            .map_init(Vec::new, |scratch, &(region, i)| {
                scratch.resize(region.chunk_len(i) as usize, 0);
                self.read_chunk(region, i, scratch)
            })
            .find_first(Result::is_err)
            .unwrap_or(Ok(()))
    }

    fn region(&self, name: &str) -> Result<&RegionManifest, StoreError> {
        self.manifest
            .region(name)
            .ok_or_else(|| StoreError::RegionMissing {
                path: self.manifest_path.clone(),
                region: name.to_owned(),
                epoch: self.manifest.epoch,
            })
    }

    fn read_chunk(
        &self,
        region: &RegionManifest,
        i: usize,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let c = region.chunks[i];
        let (path, file) = &self.files[&c.file_epoch];
        let end = c.offset + buf.len() as u64;
        let missing = || StoreError::ChunkMissing {
            path: path.clone(),
            region: region.name.clone(),
            chunk: i,
            offset: c.offset,
            end,
        };
        let file = file.as_ref().ok_or_else(missing)?;
        // Read and hash in pieces small enough to be hashed from cache.
        let mut hasher = ChunkHasher::new();
        let mut offset = c.offset;
        for piece in buf.chunks_mut(READ_PIECE) {
            file.read_exact_at(piece, offset)
                .map_err(|e| match e.kind() {
                    ErrorKind::UnexpectedEof => missing(),
                    _ => StoreError::io("read data file", path, e),
                })?;
            hasher.update(piece);
            offset += piece.len() as u64;
        }
        if hasher.finish() != c.hash {
            return Err(StoreError::ChunkCorrupt {
                path: path.clone(),
                region: region.name.clone(),
                chunk: i,
                offset: c.offset,
                end,
            });
        }
        Ok(())
    }
}
