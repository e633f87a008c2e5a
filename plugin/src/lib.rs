//! `pm`: the rank runtime an MPI application links.
//!
//! The application keeps its state in registered regions and calls one step
//! function per time step; the runtime takes coordinated checkpoints of those
//! regions into the node-local store and restores them on restart. So far this
//! crate provides the region buffers; the MPI coordination, the step function
//! and the C ABI (`pm.h`) are the next capability to be built (see README).

pub use pm_core::region::{PAGE_SIZE, RegionBuf};
