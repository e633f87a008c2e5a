//! Reading snapshots back, verifying every chunk, and finding the newest
//! snapshot that verifies.

use super::Store;
use crate::StoreError;
use crate::copy::copy_hashed;
use crate::format::{ChunkHasher, Manifest, RegionManifest};
use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes verified per `pread` (`verify`): fits in a core's L2 cache.
const READ_PIECE: usize = 256 << 10;

/// An opened snapshot: its checked manifest and its data files.
pub struct Snapshot {
    manifest: Manifest,
    manifest_path: PathBuf,
    /// Data files by epoch; `None` when the file is missing.
    files: HashMap<u64, DataFile>,
    /// Maps the data files' pages in while the caller does other work.
    populate: Option<std::thread::JoinHandle<()>>,
}

/// One data file a snapshot reads from.
struct DataFile {
    path: PathBuf,
    file: Option<File>,
    /// A read-only mapping of the whole file (restores copy from it);
    /// `None` when the file is missing, empty, or cannot be mapped.
    map: Option<Arc<Mmap>>,
}

impl DataFile {
    fn open(path: PathBuf) -> Self {
        let file = File::open(&path).ok();
        let len = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len() as usize);
        // SAFETY: see `whole_map`: the bytes are only read while the file
        // is known to be as long as the mapping, and nothing truncates a
        // data file a kept snapshot refers to.
        let map = file
            .as_ref()
            .filter(|_| len > 0)
            .and_then(|f| unsafe { MmapOptions::new().len(len).map(f) }.ok())
            .map(Arc::new);
        Self { path, file, map }
    }

    /// The mapping, if the file is still as long as it.
    ///
    /// Reading a mapping raises SIGBUS where the file is shorter than the
    /// mapping. A restore reads a file's mapping only when, at the start of
    /// that read, the file is at least as long as the mapping, and only the
    /// chunks lying inside it (a chunk beyond the end is an error; a file
    /// found shortened is read with `pread`, which reports it as one). What
    /// is left is a file shortened *during* the read, which pmrun never
    /// does: a data file is resized only while it is a spare, which no kept
    /// snapshot refers to, and only by the rank's own writer, which does
    /// not run during a restore. Only a rank restoring its own store maps
    /// it; agents, which read stores other processes write, use `pread`.
    fn whole_map(&self) -> Option<&Mmap> {
        let map = self.map.as_deref()?;
        let len = self.file.as_ref()?.metadata().ok()?.len();
        (len >= map.len() as u64).then_some(map)
    }
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
            files
                .entry(c.file_epoch)
                .or_insert_with(|| DataFile::open(self.data_path(c.file_epoch)));
        }
        // Mapping a file's pages into this process costs about a third of
        // a memcpy (one fault per 16 pages of 4 KiB); a restarting rank
        // has it done while it allocates its regions, off the restore.
        let maps: Vec<Arc<Mmap>> = files.values().filter_map(|f| f.map.clone()).collect();
        let populate = std::thread::Builder::new()
            .name("pm-restore-map".into())
            .spawn(move || {
                for map in maps {
                    // SAFETY: advice on this mapping; a range beyond the end
                    // of the file is an error (EFAULT), never a signal.
                    unsafe {
                        libc::madvise(
                            map.as_ptr() as *mut libc::c_void,
                            map.len(),
                            libc::MADV_POPULATE_READ,
                        );
                    }
                }
            })
            .ok();
        Ok(Snapshot {
            manifest,
            manifest_path: self.manifest_path(epoch),
            files,
            populate,
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

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Some(h) = self.populate.take() {
            let _ = h.join();
        }
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
        // One length check per file and read, not a system call per chunk
        // (populating each chunk's range first cost a tenth of a memcpy).
        let maps: HashMap<u64, &Mmap> = self
            .files
            .iter()
            .filter_map(|(&epoch, f)| Some((epoch, f.whole_map()?)))
            .collect();
        // The first damaged chunk in file order is reported, whichever
        // thread finds damage first.
        dst.par_chunks_mut(region.chunk_size as usize)
            .enumerate()
            .map(|(i, buf)| self.restore_chunk(region, i, buf, &maps))
            .find_first(Result::is_err)
            .unwrap_or(Ok(()))
    }

    /// Copies chunk `i` of `region` into `dst` from the mapped data file,
    /// hashing each piece just before it is copied (so it is read from
    /// memory once), with streaming stores.
    fn restore_chunk(
        &self,
        region: &RegionManifest,
        i: usize,
        dst: &mut [u8],
        maps: &HashMap<u64, &Mmap>,
    ) -> Result<(), StoreError> {
        let c = region.chunks[i];
        let start = c.offset as usize;
        let Some(map) = maps.get(&c.file_epoch) else {
            // Missing, not mappable (an unusual file system) or shortened:
            // read it instead, which reports a short file as an error.
            return self.read_chunk(region, i, dst);
        };
        let Some(src) = map.get(start..start + dst.len()) else {
            return Err(self.missing(region, i, dst.len()));
        };
        let hash = copy_hashed(dst, src);
        self.check_hash(region, i, hash, dst.len())
    }

    fn missing(&self, region: &RegionManifest, i: usize, len: usize) -> StoreError {
        let c = region.chunks[i];
        StoreError::ChunkMissing {
            path: self.files[&c.file_epoch].path.clone(),
            region: region.name.clone(),
            chunk: i,
            offset: c.offset,
            end: c.offset + len as u64,
        }
    }

    fn check_hash(
        &self,
        region: &RegionManifest,
        i: usize,
        hash: u128,
        len: usize,
    ) -> Result<(), StoreError> {
        let c = region.chunks[i];
        if hash != c.hash {
            return Err(StoreError::ChunkCorrupt {
                path: self.files[&c.file_epoch].path.clone(),
                region: region.name.clone(),
                chunk: i,
                offset: c.offset,
                end: c.offset + len as u64,
            });
        }
        Ok(())
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
        let data = &self.files[&c.file_epoch];
        let file = data
            .file
            .as_ref()
            .ok_or_else(|| self.missing(region, i, buf.len()))?;
        // Read and hash in pieces small enough to be hashed from cache.
        let mut hasher = ChunkHasher::new();
        let mut offset = c.offset;
        let len = buf.len();
        for piece in buf.chunks_mut(READ_PIECE) {
            file.read_exact_at(piece, offset)
                .map_err(|e| match e.kind() {
                    ErrorKind::UnexpectedEof => self.missing(region, i, len),
                    _ => StoreError::io("read data file", &data.path, e),
                })?;
            hasher.update(piece);
            offset += piece.len() as u64;
        }
        self.check_hash(region, i, hasher.finish(), len)
    }
}
