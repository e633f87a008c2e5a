//! `pm-core`: the parts of pmrun every other crate builds on.
//!
//! * [`format`]: the snapshot manifest and its on-disk encoding.
//! * [`store`]: the node-local checkpoint store (atomic, incremental, verified).
//! * [`region`]: page-aligned, pre-faulted buffers applications compute in.
//! * [`names`]: validation of job ids and region names.
//!
//! Later additions (wire messages, the transport trait, and the I/O-free
//! estimator, balancer and gossip state machines) live here too.

mod error;
pub mod format;
pub mod names;
pub mod region;
pub mod store;

pub use error::StoreError;
pub use format::Manifest;
pub use region::{PAGE_SIZE, RegionBuf, RegionRef};
pub use store::{Durability, Recovery, Snapshot, Store, StoreOptions, WritePhase, WriteReport};
