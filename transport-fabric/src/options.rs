//! How a fabric endpoint is opened (the same with and without libfabric,
//! so callers configure it without `cfg`).

use std::time::Duration;

/// Settings of a fabric endpoint.
#[derive(Clone, Debug)]
pub struct FabricOptions {
    /// This node's name, for logs.
    pub node: String,
    /// A local address to open the endpoint on (`fi_getinfo` with
    /// `FI_SOURCE`), e.g. `127.0.0.1` for `tcp;ofi_rxm` on loopback;
    /// `None`: the provider's choice. Not meaningful for `shm`.
    pub source: Option<String>,
    /// How long one transfer may take before it fails (a stopped or
    /// vanished peer that the provider does not report).
    pub timeout: Duration,
    /// How long the progress thread sleeps between polls while it has no
    /// operation of its own in flight (it still serves peers then; see the
    /// crate docs on progress).
    pub idle_poll: Duration,
}

impl Default for FabricOptions {
    fn default() -> Self {
        Self {
            node: "node".into(),
            source: None,
            timeout: Duration::from_secs(30),
            idle_poll: Duration::from_micros(100),
        }
    }
}
