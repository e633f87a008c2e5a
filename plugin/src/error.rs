//! The runtime's errors, each with a stable code for the C ABI.

use pm_core::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum PmError {
    #[error("{var}={value:?} is invalid: expected {expected}")]
    Config {
        var: &'static str,
        value: String,
        expected: &'static str,
    },

    #[error("{0}")]
    ConfigConflict(&'static str),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("region {0:?} is registered twice: region names must be unique")]
    DuplicateRegion(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(
        "job {job:?} was checkpointed by a run of {written} ranks but this run has {now}: \
         run it with {written} ranks to resume, or set another PM_JOB to start afresh"
    )]
    RankCount { job: String, written: u32, now: u32 },

    #[error(
        "the checkpoint of epoch {epoch} holds region {region:?}, which this run did not \
         register before its first step: register every region before calling step()"
    )]
    UnregisteredRegion { epoch: u64, region: String },

    #[error("value {name:?} could not be {action}: {reason}")]
    Value {
        name: String,
        action: &'static str,
        reason: String,
    },

    #[error("region {0:?} is borrowed while step() runs: finish with_mut before calling step")]
    RegionBorrowed(String),

    #[error("value {0:?} is borrowed while step() runs: drop its borrow_mut() before calling step")]
    ValueBorrowed(String),

    #[error("another rank failed to {stage}; its own error message says why")]
    Peer { stage: &'static str },

    #[error("{call} failed with MPI error code {code}")]
    Mpi { call: &'static str, code: i32 },

    #[error("{0}")]
    State(&'static str),

    #[error("node agent: {0}; is the job's pmrun still running?")]
    Agent(String),
}

/// Error codes of the C ABI (`pm.h`).
pub mod code {
    pub const OK: i32 = 0;
    pub const STATE: i32 = -1;
    pub const ARGUMENT: i32 = -2;
    pub const CONFIG: i32 = -3;
    pub const STORE: i32 = -4;
    pub const MISMATCH: i32 = -5;
    pub const CORRUPT: i32 = -6;
    pub const PEER: i32 = -7;
    pub const MPI: i32 = -8;
    pub const INTERNAL: i32 = -9;
}

impl PmError {
    /// The C ABI code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Self::Config { .. } | Self::ConfigConflict(_) => code::CONFIG,
            Self::Store(e) if e.is_damage() => code::CORRUPT,
            Self::Store(StoreError::RegionSize { .. } | StoreError::RegionMissing { .. }) => {
                code::MISMATCH
            }
            Self::Store(
                StoreError::InvalidJobId(_)
                | StoreError::InvalidRegionName(_)
                | StoreError::DuplicateRegion(_)
                | StoreError::InvalidChunkSize(_)
                | StoreError::InvalidKeep,
            ) => code::ARGUMENT,
            Self::Store(_) => code::STORE,
            Self::DuplicateRegion(_) | Self::InvalidArgument(_) | Self::Value { .. } => {
                code::ARGUMENT
            }
            Self::RankCount { .. } | Self::UnregisteredRegion { .. } => code::MISMATCH,
            Self::Peer { .. } => code::PEER,
            Self::Mpi { .. } => code::MPI,
            Self::State(_) | Self::RegionBorrowed(_) | Self::ValueBorrowed(_) => code::STATE,
            Self::Agent(_) => code::PEER,
        }
    }
}
