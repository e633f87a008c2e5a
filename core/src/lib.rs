//! `pm-core`: the parts of pmrun every other crate builds on.
//!
//! * [`format`]: the snapshot manifest and its on-disk encoding.
//! * [`store`]: the node-local checkpoint store (atomic, incremental, verified).
//! * [`region`]: page-aligned, pre-faulted buffers applications compute in.
//! * [`names`]: validation of job ids and region names.
//! * [`wire`]: framed, authenticated messages between agents and the launcher.
//! * [`transport`]: one-sided (RDMA-shaped) transfers and their TCP backend.
//! * [`replicate`]: copying a rank's snapshot to a partner's store over a transport.
//!
//! Later additions (wire messages, the transport trait, and the I/O-free
//! estimator, balancer and gossip state machines) live here too.

mod error;
pub mod format;
pub mod names;
pub mod region;
pub mod replicate;
pub mod store;
pub mod transport;
pub mod wire;

pub use error::StoreError;
pub use format::Manifest;
pub use region::{PAGE_SIZE, RegionBuf, RegionRef};
pub use store::{Durability, Recovery, Snapshot, Store, StoreOptions, WritePhase, WriteReport};
