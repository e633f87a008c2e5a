//! The store's typed errors. Every variant names the file (and chunk) involved
//! and, where the user can act, says what to do.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid job id {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ - that do not start with '.'"
    )]
    InvalidJobId(String),

    #[error(
        "invalid region name {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - that do not start with '.'"
    )]
    InvalidRegionName(String),

    #[error("region {0:?} is given twice in one snapshot: region names must be unique")]
    DuplicateRegion(String),

    #[error("chunk size {0} is not a positive multiple of the page size (4096 bytes)")]
    InvalidChunkSize(u64),

    #[error("keep must be at least 1 epoch")]
    InvalidKeep,

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{path}: the manifest is truncated ({len} bytes, expected {expected}); the snapshot was damaged after it was written"
    )]
    ManifestTruncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },

    #[error("{path}: not a pmrun snapshot manifest (bad magic bytes)")]
    BadMagic { path: PathBuf },

    #[error(
        "{path}: snapshot format version {found} is not supported (this pmrun reads version {supported}); restore it with the pmrun release that wrote it"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "{path}: manifest checksum mismatch (stored {stored:016x}, computed {computed:016x}): the manifest is corrupt"
    )]
    ManifestChecksum {
        path: PathBuf,
        stored: u64,
        computed: u64,
    },

    #[error("{path}: the manifest is malformed: {reason}")]
    ManifestInvalid { path: PathBuf, reason: String },

    #[error(
        "{path}: snapshot belongs to job {found_job:?} rank {found_rank}, not job {job:?} rank {rank}"
    )]
    WrongOwner {
        path: PathBuf,
        job: String,
        rank: u32,
        found_job: String,
        found_rank: u32,
    },

    #[error(
        "{path}: region {region:?} chunk {chunk} (file bytes {offset}..{end}) is corrupt: its content hash does not match the manifest"
    )]
    ChunkCorrupt {
        path: PathBuf,
        region: String,
        chunk: usize,
        offset: u64,
        end: u64,
    },

    #[error(
        "{path}: region {region:?} chunk {chunk} (file bytes {offset}..{end}) lies past the end of the data file: the data file is truncated or missing"
    )]
    ChunkMissing {
        path: PathBuf,
        region: String,
        chunk: usize,
        offset: u64,
        end: u64,
    },

    #[error("{path}: the commit record is damaged ({reason}); remove it to start the job afresh")]
    CommitRecordInvalid { path: PathBuf, reason: String },

    #[error("no snapshot of epoch {epoch} in {dir}")]
    NoSuchEpoch { dir: PathBuf, epoch: u64 },

    #[error("region {region:?} is not in the snapshot of epoch {epoch} ({path})")]
    RegionMissing {
        path: PathBuf,
        region: String,
        epoch: u64,
    },

    #[error(
        "region {region:?} has {given} bytes but the snapshot of epoch {epoch} holds {stored} bytes ({path}); restart with the same problem size"
    )]
    RegionSize {
        path: PathBuf,
        region: String,
        epoch: u64,
        stored: u64,
        given: u64,
    },

    #[error(
        "importing the snapshot of epoch {epoch} into {dir} failed while fetching its chunks: {source}; the store's earlier snapshots are intact, retry the import"
    )]
    Fetch {
        dir: PathBuf,
        epoch: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error says a snapshot's bytes are damaged or unusable, as
    /// opposed to an operational failure (permissions, I/O) or a caller mistake.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            Self::ManifestTruncated { .. }
                | Self::BadMagic { .. }
                | Self::UnsupportedVersion { .. }
                | Self::ManifestChecksum { .. }
                | Self::ManifestInvalid { .. }
                | Self::WrongOwner { .. }
                | Self::ChunkCorrupt { .. }
                | Self::ChunkMissing { .. }
        )
    }
}
