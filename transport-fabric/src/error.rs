//! Why a fabric endpoint could not be opened. (Transfers fail with
//! `pm_core::transport::TransportError`, like every backend's.)

use crate::sys::FiError;

#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error(
        "libfabric has no provider {} with RDM endpoints and RMA (FI_RMA, remote read and write) here; fi_getinfo offers: {}; pick one of those, or check `fi_info -p <provider>`",
        provider.as_deref().map_or_else(|| "at all".to_owned(), |p| format!("{p:?}")),
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    )]
    NoProvider {
        provider: Option<String>,
        offered: Vec<String>,
    },
    #[error("fi_getinfo failed: {0}")]
    GetInfo(#[source] FiError),
    #[error(
        "cannot open libfabric provider {provider} (fabric {fabric}, domain {domain}): {source}"
    )]
    Open {
        provider: String,
        fabric: String,
        domain: String,
        #[source]
        source: FiError,
    },
    #[error("cannot start the progress thread of provider {provider}: {source}")]
    Thread {
        provider: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the raw fi_read loop over provider {provider} failed: {reason}")]
    RawRead { provider: String, reason: String },
}
