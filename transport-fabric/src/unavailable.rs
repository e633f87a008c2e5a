//! The crate's face in a build without libfabric: the same names, so
//! callers need no `cfg`, and [`FabricTransport::open`], [`providers`] and
//! [`raw_read`] fail with [`FabricError::NotBuilt`], which says how to get the backend.

use crate::{FabricAddr, FabricOptions, RawReadOptions, RawReadReport};
use pm_core::transport::{
    Completion, LocalSlice, Region, RegionKey, RemoteSlice, Transport, TransportError,
};
use std::convert::Infallible;
use std::sync::Arc;

/// Why a fabric endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error(
        "this build of pmrun has no libfabric transport (libfabric's headers were missing when it was compiled); install libfabric-dev and rebuild, or use --transport tcp"
    )]
    NotBuilt,
}

/// Never exists in this build: [`FabricTransport::open`] always fails.
pub struct FabricTransport {
    never: Infallible,
}

impl FabricTransport {
    pub fn open(_provider: Option<&str>, _opts: FabricOptions) -> Result<Self, FabricError> {
        Err(FabricError::NotBuilt)
    }

    pub fn address(&self) -> FabricAddr {
        match self.never {}
    }

    pub fn provider(&self) -> &str {
        match self.never {}
    }

    pub fn region(&self, _key: RegionKey) -> Option<Arc<Region>> {
        match self.never {}
    }

    pub fn shutdown(&self) {
        match self.never {}
    }
}

impl Transport for FabricTransport {
    type Peer = FabricAddr;

    fn register(&self, _region: Arc<Region>) -> Result<RegionKey, TransportError> {
        match self.never {}
    }

    fn deregister(&self, _key: RegionKey) -> Result<(), TransportError> {
        match self.never {}
    }

    fn read(&self, _peer: &FabricAddr, _remote: RemoteSlice, _local: LocalSlice) -> Completion {
        match self.never {}
    }

    fn write(&self, _peer: &FabricAddr, _remote: RemoteSlice, _local: LocalSlice) -> Completion {
        match self.never {}
    }
}

/// The provider `open` would take: none without libfabric.
pub fn choose_provider(
    _provider: Option<&str>,
    _source: Option<&str>,
) -> Result<String, FabricError> {
    Err(FabricError::NotBuilt)
}

/// The providers `fi_getinfo` offers: none without libfabric.
pub fn providers(_source: Option<&str>) -> Result<Vec<String>, FabricError> {
    Err(FabricError::NotBuilt)
}

/// The plain `fi_read` loop (see `raw.rs`): not without libfabric.
pub fn raw_read(
    _provider: Option<&str>,
    _src: &Arc<Region>,
    _sink: &Arc<Region>,
    _opts: &RawReadOptions,
) -> Result<RawReadReport, FabricError> {
    Err(FabricError::NotBuilt)
}
