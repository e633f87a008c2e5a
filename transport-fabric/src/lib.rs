//! placeholder docs
#[cfg(pm_fabric)]
mod addr;
#[cfg(pm_fabric)]
mod error;
#[cfg(pm_fabric)]
mod key;
#[cfg(pm_fabric)]
mod progress;
#[cfg(pm_fabric)]
mod sys;
#[cfg(pm_fabric)]
mod transport;

#[cfg(pm_fabric)]
pub use addr::FabricAddr;
#[cfg(pm_fabric)]
pub use error::FabricError;
#[cfg(pm_fabric)]
pub use sys::FiError;
#[cfg(pm_fabric)]
pub use transport::{FabricOptions, FabricTransport, providers};

/// Whether this build has the libfabric backend (it had libfabric's
/// headers when it was compiled).
pub const AVAILABLE: bool = cfg!(pm_fabric);
