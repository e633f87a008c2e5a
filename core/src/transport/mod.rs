//! One-sided, RDMA-shaped transfers of bulk bytes between nodes.
//!
//! A node *registers* a [`Region`] (a mapped file range or a buffer) and gets
//! an unguessable [`RegionKey`]; it hands the key to a peer in a message
//! (`proto::ToPartner::SnapshotReady`); the peer then *reads* or *writes*
//! ranges of that region one-sidedly, without the owner's code taking part
//! per request, and *waits* for the [`Completion`]s of as many transfers as
//! it keeps in flight.
//!
//! The trait follows libfabric's RMA model so that a libfabric backend can
//! implement it without changing callers:
//!
//! | this trait | libfabric |
//! |---|---|
//! | [`Transport::register`] → [`RegionKey`] | `fi_mr_reg` (+ `fi_mr_bind`/`fi_mr_enable`), key = `fi_mr_key` (with `FI_MR_PROV_KEY`, or a random `requested_key`) |
//! | [`Transport::deregister`] | `fi_close(&mr->fid)` |
//! | [`Transport::read`] / [`Transport::write`] | `fi_read` / `fi_write` with the local region's `fi_mr_desc`, the peer's `fi_addr_t` and the remote key; the remote address is base + offset under `FI_MR_VIRT_ADDR`, else the offset |
//! | [`Completion`] / [`Transport::wait`] | the `context` of the operation, reaped from the completion queue (`fi_cq_read`) |
//! | the TCP backend's server threads | the target's progress thread (`tcp;ofi_rxm` needs one) |
//!
//! That backend is the `pm-transport-fabric` crate; both run the
//! conformance suite in [`suite`] (feature `transport-suite`).
//!
//! Both ends of a transfer are registered regions: the local side is named by
//! a [`LocalSlice`] (as `fi_read` needs a local descriptor), so a transfer
//! never borrows caller memory across the call and the data can move
//! directly between the wire and the mapped file.
//!
//! Peers are authenticated by the backend (the TCP backend runs the `wire`
//! handshake with the job's secret on every connection). Payload integrity
//! is end to end, as over RDMA: callers check chunk hashes from the
//! (authenticated) manifest before they publish anything built from the bytes.

mod region;
mod registry;
#[cfg(any(test, feature = "transport-suite"))]
pub mod suite;
pub mod tcp;

pub use region::{Access, Region};
pub use registry::Registry;
pub use tcp::{TcpOptions, TcpTransport};

use crate::wire::WireError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::mpsc;

/// The key of a registered region: [`RegionKey::LEN`] bytes whose meaning
/// belongs to the backend that issued it. The TCP backend's keys are random
/// bytes, so a peer can reach only the regions whose keys it was given; a
/// libfabric backend packs the provider's (≤ 64-bit) key, the remote address
/// and the region's length and access into it, as its initiators need them
/// and a key travels only inside authenticated control messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegionKey([u8; RegionKey::LEN]);

impl RegionKey {
    /// The size of a key in bytes.
    pub const LEN: usize = 32;

    /// A fresh random key.
    pub fn random() -> Result<Self, getrandom::Error> {
        Ok(Self(crate::wire::random_bytes()?))
    }

    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    pub const fn to_bytes(self) -> [u8; Self::LEN] {
        self.0
    }

    /// A key whose first 16 bytes are `v` (little-endian) and the rest zero:
    /// made-up keys in tests and examples.
    pub fn from_u128(v: u128) -> Self {
        let mut b = [0; Self::LEN];
        b[..16].copy_from_slice(&v.to_le_bytes());
        Self(b)
    }
}

impl fmt::Display for RegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: logs should identify a key, not hand it out. The
        // last bytes are random in both backends.
        let t = &self.0[Self::LEN - 4..];
        write!(f, "{:02x}{:02x}{:02x}{:02x}…", t[0], t[1], t[2], t[3])
    }
}

impl fmt::Debug for RegionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegionKey({self})")
    }
}

/// A range of a region on a remote peer: its key and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSlice {
    pub key: RegionKey,
    pub offset: u64,
}

/// A range of a locally registered region: the source of a write or the
/// destination of a read. Its length is the transfer's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSlice {
    pub key: RegionKey,
    pub offset: u64,
    pub len: u64,
}

/// A transfer in flight; pass it to [`Transport::wait`].
#[must_use = "a transfer's outcome is known only by waiting for it"]
pub struct Completion {
    rx: mpsc::Receiver<Result<u64, TransportError>>,
}

/// The backend's half of a [`Completion`]: reports the outcome once.
pub struct Completer {
    tx: mpsc::Sender<Result<u64, TransportError>>,
}

impl Completion {
    /// A transfer's two halves: the caller waits on the first, the backend
    /// completes the second (from any thread, once).
    pub fn new() -> (Completion, Completer) {
        let (tx, rx) = mpsc::channel();
        (Completion { rx }, Completer { tx })
    }

    /// A completion that is already done (an error found before queueing).
    pub fn ready(outcome: Result<u64, TransportError>) -> Completion {
        let (c, done) = Self::new();
        done.complete(outcome);
        c
    }

    /// Blocks until the transfer ends; the bytes moved or why it failed.
    pub fn wait(self) -> Result<u64, TransportError> {
        self.rx.recv().unwrap_or(Err(TransportError::Shutdown))
    }
}

impl Completer {
    pub fn complete(self, outcome: Result<u64, TransportError>) {
        // The waiter may have given up; nothing to do then.
        let _ = self.tx.send(outcome);
    }
}

/// One-sided transfers between registered regions (see the module docs).
pub trait Transport: Send + Sync {
    /// How a peer is addressed (a socket address for TCP, the endpoint name
    /// from `fi_getname` for libfabric, which the backend resolves to an
    /// `fi_addr_t`). Serialisable, since peers learn each other's addresses
    /// from control messages.
    type Peer: Clone + fmt::Debug + Send + Sync + Serialize + serde::de::DeserializeOwned;

    /// Exposes `region` for remote access (reads always; writes if its
    /// access allows) and for use as the local side of transfers.
    fn register(&self, region: std::sync::Arc<Region>) -> Result<RegionKey, TransportError>;

    /// Withdraws a region: later requests naming `key` fail with
    /// `UnknownKey`. Transfers already running finish on the region, which
    /// stays alive until they do.
    fn deregister(&self, key: RegionKey) -> Result<(), TransportError>;

    /// Starts copying `local.len` bytes from `remote` on `peer` into the
    /// local region range `local`.
    fn read(&self, peer: &Self::Peer, remote: RemoteSlice, local: LocalSlice) -> Completion;

    /// Starts copying the local range `local` to `remote` on `peer`.
    fn write(&self, peer: &Self::Peer, remote: RemoteSlice, local: LocalSlice) -> Completion;

    /// Waits for one transfer; the number of bytes moved.
    fn wait(&self, completion: Completion) -> Result<u64, TransportError> {
        completion.wait()
    }

    /// Waits for every transfer, returning the total bytes moved or the
    /// first error (after all have ended, so no transfer outlives the call).
    fn wait_all(&self, completions: Vec<Completion>) -> Result<u64, TransportError> {
        let mut total = 0;
        let mut first_err = None;
        for c in completions {
            match self.wait(c) {
                Ok(n) => total += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(total), Err)
    }
}

/// Why a transfer or registration failed. Remote errors name the peer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {peer}: {source}; is its agent running?")]
    Connect {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{peer} rejected the connection or closed it during the handshake; check that both sides belong to the same job (same secret): {source}"
    )]
    Handshake {
        peer: String,
        #[source]
        source: WireError,
    },
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{peer}: {op} failed after {moved} of {len} bytes: {source}")]
    Data {
        peer: String,
        op: &'static str,
        moved: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer}: region key {key} is not registered there (deregistered, or from another run)")]
    UnknownKey { peer: String, key: RegionKey },
    #[error("{peer}: range {offset}+{len} lies outside region {key} of {region_len} bytes")]
    OutOfBounds {
        peer: String,
        key: RegionKey,
        offset: u64,
        len: u64,
        region_len: u64,
    },
    #[error(
        "{peer}: region {key} is registered read-only; register it with Access::ReadWrite to accept writes"
    )]
    ReadOnly { peer: String, key: RegionKey },
    #[error("{peer} broke the protocol: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("the transport was shut down")]
    Shutdown,
    #[error("cannot register a region: {0}")]
    Register(String),
}

/// The peer name local errors carry.
pub const LOCAL: &str = "local";
