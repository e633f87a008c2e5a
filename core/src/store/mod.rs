//! The node-local checkpoint store.
//!
//! One directory per job and rank under a configurable root (default
//! `/dev/shm/pmrun-<uid>`, i.e. RAM). Each snapshot is a manifest
//! (`epoch-<E>.manifest`) and, for the chunks that changed since the previous
//! snapshot, a data file (`epoch-<E>.data`) in which every region lies at a
//! fixed, page-aligned offset. Unchanged chunks are not written again: the
//! manifest points to the earlier data file that holds them.
//!
//! Publishing a snapshot is the rename of its manifest, so a reader sees a
//! snapshot either complete or not at all. Data files that no kept manifest
//! references are recycled as spares (`spare-<n>.data`), and the files a
//! rank will need are pre-faulted in the background ([`Store::prefault`]),
//! so that every checkpoint writes into pages that are already allocated
//! and mapped (first-touch page faults cost many times a memcpy here).

pub mod commit;
pub mod flush;
mod import;
mod pool;
mod read;
mod reaper;
mod stage;
mod write;

pub use commit::CommitRecord;
pub use import::{ChunkFetch, ImportReport, ImportTarget};
pub use read::{Recovery, Skipped, Snapshot};
pub use stage::StageReport;
pub use write::{WritePhase, WriteReport, data_file_len};

use crate::StoreError;
use crate::format::Manifest;
use crate::names::validate_job_id;
use crate::region::PAGE_SIZE;
use memmap2::MmapMut;
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default chunk size: large enough that per-chunk bookkeeping is negligible
/// (a 1 GiB state has 1024 chunks), small enough that a sparse update stays sparse.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// Default number of epochs kept per rank.
pub const DEFAULT_KEEP: usize = 2;

/// Whether writes are forced to stable storage before a snapshot is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync` unless the store lives in RAM (tmpfs), where it has no meaning.
    Auto,
    Always,
    Never,
}

/// Called at the start of every phase of a write; used for progress tracing
/// and by the crash-consistency tests to stop a writer at a chosen phase.
pub type PhaseHook = Arc<dyn Fn(WritePhase) + Send + Sync>;

#[derive(Clone)]
pub struct StoreOptions {
    /// How many of the newest epochs to keep (at least 1).
    pub keep: usize,
    /// Chunk size in bytes: a positive multiple of the page size.
    pub chunk_size: usize,
    pub durability: Durability,
    /// Whether every published snapshot counts as committed. The rank
    /// runtime turns this off and calls [`Store::commit`] once the whole job
    /// has agreed on an epoch; until then pruning keeps the epoch's
    /// predecessors.
    pub auto_commit: bool,
    pub phase_hook: Option<PhaseHook>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            keep: DEFAULT_KEEP,
            chunk_size: DEFAULT_CHUNK_SIZE,
            durability: Durability::Auto,
            auto_commit: true,
            phase_hook: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("keep", &self.keep)
            .field("chunk_size", &self.chunk_size)
            .field("durability", &self.durability)
            .field("auto_commit", &self.auto_commit)
            .finish_non_exhaustive()
    }
}

/// The default store root: RAM, private to the user.
pub fn default_root() -> PathBuf {
    PathBuf::from(format!(
        "/dev/shm/pmrun-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// A data file kept mapped between checkpoints so that its pages stay faulted in.
struct CachedMap {
    file: File,
    map: MmapMut,
}

/// The checkpoints of one rank of one job on this node.
pub struct Store {
    job: String,
    rank: u32,
    dir: PathBuf,
    opts: StoreOptions,
    sync: bool,
    /// Mappings of data files this store wrote or pre-faulted, by inode number.
    maps: HashMap<u64, CachedMap>,
    /// Background pre-faulting of the data files, once started.
    prefault: Option<pool::Prefault>,
    /// The layout length pre-faulting was started for.
    prefault_len: Option<u64>,
    /// New pre-faulted files not taken yet (under their temporary names).
    ready: Vec<pool::Prepared>,
    /// An asynchronous checkpoint being published in the background.
    staged: Option<stage::Staged>,
    /// Removes the data files pruning frees, in the background.
    reaper: reaper::Reaper,
    /// The last pruning left no spare and none in the making.
    top_up_wanted: bool,
}

impl Store {
    /// Opens (creating if needed) the store directory `<root>/<job>/rank-<rank>`.
    pub fn open(root: &Path, job: &str, rank: u32, opts: StoreOptions) -> Result<Self, StoreError> {
        validate_job_id(job)?;
        if opts.chunk_size == 0 || opts.chunk_size % PAGE_SIZE != 0 {
            return Err(StoreError::InvalidChunkSize(opts.chunk_size as u64));
        }
        if opts.keep == 0 {
            return Err(StoreError::InvalidKeep);
        }
        let dir = root.join(job).join(format!("rank-{rank}"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| StoreError::io("create store directory", &dir, e))?;
        let sync = match opts.durability {
            Durability::Always => true,
            Durability::Never => false,
            Durability::Auto => !in_ram(&dir)?,
        };
        Ok(Self {
            job: job.to_owned(),
            rank,
            dir,
            opts,
            sync,
            maps: HashMap::new(),
            prefault: None,
            prefault_len: None,
            ready: Vec::new(),
            staged: None,
            reaper: reaper::Reaper::default(),
            top_up_wanted: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The job's directory (`<root>/<job>`), shared by the ranks on this node.
    pub fn job_dir(&self) -> &Path {
        self.dir.parent().expect("a rank directory has a parent")
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Whether this store forces its writes to stable storage.
    pub fn is_durable(&self) -> bool {
        self.sync
    }

    /// Epochs whose manifest is present, oldest first (not verified).
    pub fn epochs(&self) -> Result<Vec<u64>, StoreError> {
        Ok(self.list()?.manifests)
    }

    /// Reads and checks the manifest of `epoch` (not the chunks).
    pub fn manifest(&self, epoch: u64) -> Result<Manifest, StoreError> {
        let path = self.manifest_path(epoch);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchEpoch {
                    dir: self.dir.clone(),
                    epoch,
                });
            }
            Err(e) => return Err(StoreError::io("read manifest", &path, e)),
        };
        let m = Manifest::decode(&bytes, &path)?;
        if m.job != self.job || m.rank != self.rank {
            return Err(StoreError::WrongOwner {
                path,
                job: self.job.clone(),
                rank: self.rank,
                found_job: m.job,
                found_rank: m.rank,
            });
        }
        if m.epoch != epoch {
            return Err(StoreError::ManifestInvalid {
                path,
                reason: format!(
                    "it records epoch {} but is named for epoch {epoch}",
                    m.epoch
                ),
            });
        }
        Ok(m)
    }

    /// Deletes every snapshot and record of this rank but keeps its directory
    /// (a fresh start of a job whose earlier run never committed).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.abandon_background();
        self.maps.clear();
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| StoreError::io("list store directory", &self.dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| StoreError::io("list store directory", &self.dir, e))?
                .path();
            fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        }
        self.sync_dir()
    }

    /// Deletes every snapshot of this rank (the end of a job), and the job's
    /// directory once no rank on this node has anything left in it.
    pub fn destroy(mut self) -> Result<(), StoreError> {
        self.abandon_background();
        fs::remove_dir_all(&self.dir)
            .map_err(|e| StoreError::io("remove store directory", &self.dir, e))?;
        // Fails while another rank of the job still has its directory here.
        let _ = fs::remove_dir(self.job_dir());
        Ok(())
    }

    pub fn manifest_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(manifest_name(epoch))
    }

    pub fn data_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("epoch-{epoch:020}.data"))
    }

    fn commit_path(&self) -> PathBuf {
        self.dir.join("committed")
    }

    /// A name for one more spare data file: `spare-<n>.data`, `n` unused.
    fn free_spare_path(&self, taken: &[PathBuf]) -> PathBuf {
        (0..)
            .map(|n| self.dir.join(format!("spare-{n}.data")))
            .find(|p| !taken.contains(p) && !p.exists())
            .expect("some spare name is free")
    }

    fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| StoreError::io("list store directory", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list store directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".manifest.tmp") {
                listing.temporaries.push(entry.path());
            } else if name.starts_with("spare") && name.ends_with(".data") {
                listing.spares.push(entry.path());
            } else if (name.starts_with("prefault-") && name.ends_with(".tmp"))
                || reaper::is_doomed(name)
            {
                listing.prefault_leftovers.push(entry.path());
            } else if let Some(e) = parse_epoch(name, ".manifest") {
                listing.manifests.push(e);
            } else if let Some(e) = parse_epoch(name, ".data") {
                listing.data.push(e);
            }
        }
        listing.manifests.sort_unstable();
        listing.data.sort_unstable();
        listing.spares.sort_unstable();
        Ok(listing)
    }

    fn phase(&self, phase: WritePhase) {
        if let Some(hook) = &self.opts.phase_hook {
            hook(phase);
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        if self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.abandon_background();
    }
}

#[derive(Default)]
struct Listing {
    manifests: Vec<u64>,
    data: Vec<u64>,
    temporaries: Vec<PathBuf>,
    /// Recycled data files (`spare-<n>.data`), ready to be reused.
    spares: Vec<PathBuf>,
    /// Files an interrupted pre-fault or removal left behind
    /// (`prefault-<n>.tmp`, `doomed-<pid>-<n>.tmp`).
    prefault_leftovers: Vec<PathBuf>,
}

/// Makes the entries of `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync store directory", dir, e))
}

/// The file name of `epoch`'s manifest.
fn manifest_name(epoch: u64) -> String {
    format!("epoch-{epoch:020}.manifest")
}

fn parse_epoch(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix("epoch-")?.strip_suffix(suffix)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// True for tmpfs and ramfs, where `fsync` has nothing to make durable.
fn in_ram(dir: &Path) -> Result<bool, StoreError> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let st = rustix::fs::statfs(dir)
        .map_err(|e| StoreError::io("statfs store directory", dir, e.into()))?;
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as i64;
    Ok(kind == TMPFS_MAGIC || kind == RAMFS_MAGIC)
}
