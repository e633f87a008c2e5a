//! `pm-core`: the parts of pmrun every other crate builds on.
//!
//! * [`format`]: the snapshot manifest and its on-disk encoding.
//! * [`store`]: the node-local checkpoint store (atomic, incremental, verified).
//! * [`region`]: page-aligned, pre-faulted buffers applications compute in.
//! * [`names`]: validation of job ids and region names.
//! * [`estimate`]: per-rank runtime estimates (EWMA, variance, confidence, phase changes).
//! * [`balance`]: initial placement, rebalancing and the justification of moves.
//! * [`gossip`]: dissemination of node load with a fan-out that grows with the cluster.
//! * [`history`]: per-application weights of earlier runs, in a crash-safe file.
//! * [`topology`]: a node's cores from hwloc and its capacity for the balancer.
//! * [`wire`]: framed, authenticated sessions between agents, ranks and the launcher.
//! * [`proto`]: what those frames carry, one message type per direction of each link.
//! * [`transport`]: one-sided (RDMA-shaped) transfers and their TCP backend.
//! * [`replicate`]: copying a rank's snapshot to a partner's store over a transport.
//!
//! The balancing modules are pure (events in, decisions out, no I/O), so the
//! simulator in `pmbench sim` drives the same code for 10⁵ nodes.

pub mod balance;
mod copy;
mod error;
pub mod estimate;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
pub mod gossip;
pub mod history;
pub mod names;
pub mod proto;
pub mod region;
pub mod replicate;
pub mod store;
pub mod topology;
pub mod transport;
pub mod wire;

pub use error::StoreError;
pub use format::Manifest;
pub use region::{PAGE_SIZE, RegionBuf, RegionRef};
pub use store::{Durability, Recovery, Snapshot, Store, StoreOptions, WritePhase, WriteReport};
