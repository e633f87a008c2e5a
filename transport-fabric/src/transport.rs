//! [`FabricTransport`]: one RDM endpoint and its progress thread.

use crate::addr::FabricAddr;
use crate::error::FabricError;
use crate::key::FabricKey;
use crate::liveness::PeerProcess;
use crate::options::FabricOptions;
use crate::progress::{self, Pending, Retry};
use crate::sys::{self, Endpoint, FiError, InfoList, MemoryRegion, Query};
use pm_core::transport::{
    Access, Completion, LOCAL, LocalSlice, Region, RegionKey, Registry, RemoteSlice, Transport,
    TransportError,
};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// A registered region and, unless it is empty, its registration.
#[derive(Clone)]
struct Registered {
    region: Arc<Region>,
    mr: Option<Arc<MemoryRegion>>,
}

impl Inner {
    /// A peer's `fi_addr_t`, inserting its name into the AV the first time;
    /// an error when the peer is a `shm` process that has exited (posting
    /// to it could spin forever; see `liveness.rs`).
    pub fn resolve(&self, peer: &FabricAddr) -> Result<u64, TransportError> {
        self.check_alive(peer)?;
        let mut peers = lock(&self.peers);
        if let Some(&a) = peers.get(peer) {
            return Ok(a);
        }
        let a = self
            .ep
            .insert(peer.as_bytes())
            .map_err(|e| TransportError::Connect {
                peer: peer.to_string(),
                source: io::Error::other(e),
            })?;
        peers.insert(peer.clone(), a);
        Ok(a)
    }

    fn check_alive(&self, peer: &FabricAddr) -> Result<(), TransportError> {
        let Some(pid) = peer.shm_pid() else {
            return Ok(());
        };
        let mut processes = lock(&self.processes);
        // Watched from the first resolution on, while the peer was alive
        // (it had just sent its name); kept when its address is forgotten.
        let process = processes
            .entry(peer.clone())
            .or_insert_with(|| PeerProcess::watch(peer));
        match process {
            Some(p) if p.has_exited() => Err(TransportError::Connect {
                peer: peer.to_string(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("the peer's process (pid {pid}) has exited"),
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Drops a peer's resolved address after its connection broke (the
    /// provider does not reconnect by itself), unless it was re-resolved
    /// meanwhile: the next transfer connects afresh.
    pub fn forget_peer(&self, peer: &FabricAddr, fi_addr: u64) {
        let _removing = self.posting.write().unwrap_or_else(|e| e.into_inner());
        let mut peers = lock(&self.peers);
        if peers.get(peer) == Some(&fi_addr) {
            peers.remove(peer);
            if let Err(e) = self.ep.remove(fi_addr) {
                tracing::debug!(%peer, error = %e, "forgetting a peer's address failed");
            }
        }
    }
}

pub(crate) struct Inner {
    pub ep: Endpoint<Pending>,
    pub opts: FabricOptions,
    pub provider: String,
    name: FabricAddr,
    regions: Registry<Registered>,
    peers: Mutex<HashMap<FabricAddr, u64>>,
    /// `shm` peers' processes, by name (`None`: cannot be watched).
    processes: Mutex<HashMap<FabricAddr, Option<PeerProcess>>>,
    /// Held shared from resolving a peer's address until the operation
    /// using it is posted, and exclusively while an address is removed from
    /// the AV: libfabric 1.17's `ofi_rxm` crashes in `fi_read` on an
    /// address another thread has just removed.
    pub posting: RwLock<()>,
    pub shutdown: AtomicBool,
}

/// A libfabric RDM endpoint implementing [`Transport`] with `fi_read` and
/// `fi_write` (see the crate docs).
pub struct FabricTransport {
    inner: Arc<Inner>,
    progress: Mutex<Option<JoinHandle<()>>>,
}

/// The providers `fi_getinfo` offers with what we need, in its order.
pub fn providers(source: Option<&str>) -> Result<Vec<String>, FabricError> {
    let list = InfoList::query(&Query {
        provider: None,
        source,
    })
    .map_err(FabricError::GetInfo)?;
    let mut names: Vec<String> = Vec::new();
    for info in list.iter() {
        let p = info.provider();
        if !names.contains(&p) {
            names.push(p);
        }
    }
    Ok(names)
}

/// The provider [`FabricTransport::open`] would take for `provider` (the
/// first offered when `None`), without opening anything; an unknown one
/// is [`FabricError::NoProvider`], naming those offered.
pub fn choose_provider(
    provider: Option<&str>,
    source: Option<&str>,
) -> Result<String, FabricError> {
    let list = offered(provider, source)?;
    Ok(first_offered(&list, provider, source)?.provider())
}

/// What `fi_getinfo` offers of `provider` (any when `None`) with what we
/// need, best first; take the first with [`first_offered`].
pub(crate) fn offered(
    provider: Option<&str>,
    source: Option<&str>,
) -> Result<InfoList, FabricError> {
    InfoList::query(&Query { provider, source }).map_err(FabricError::GetInfo)
}

/// The first configuration of `list` (from [`offered`]), or
/// [`FabricError::NoProvider`] naming the providers that are offered.
pub(crate) fn first_offered<'a>(
    list: &'a InfoList,
    provider: Option<&str>,
    source: Option<&str>,
) -> Result<sys::Info<'a>, FabricError> {
    list.iter().next().ok_or_else(|| FabricError::NoProvider {
        provider: provider.map(str::to_owned),
        offered: providers(source).unwrap_or_default(),
    })
}

impl FabricTransport {
    /// Opens an endpoint of `provider` (e.g. `tcp;ofi_rxm`, `shm`, `verbs;ofi_rxm`),
    /// or of the first provider `fi_getinfo` offers with RMA when `None`,
    /// and starts its progress thread.
    pub fn open(provider: Option<&str>, opts: FabricOptions) -> Result<Self, FabricError> {
        let list = offered(provider, opts.source.as_deref())?;
        let info = first_offered(&list, provider, opts.source.as_deref())?;
        let (prov, fabric, domain) = (info.provider(), info.fabric(), info.domain());
        let open_err = |source: FiError| FabricError::Open {
            provider: prov.clone(),
            fabric: fabric.clone(),
            domain: domain.clone(),
            source,
        };
        let ep = Endpoint::open(info).map_err(open_err)?;
        let name = FabricAddr::from_bytes(ep.name().map_err(open_err)?);
        tracing::debug!(
            provider = %prov, %fabric, %domain, address = %name, node = %opts.node,
            mr_mode = format_args!("{:#x}", ep.mr_mode()), key_size = ep.key_size(),
            manual_progress = info.manual_progress(),
            "fabric endpoint open"
        );
        let inner = Arc::new(Inner {
            ep,
            opts,
            provider: prov.clone(),
            name,
            regions: Registry::default(),
            peers: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            posting: RwLock::new(()),
            shutdown: AtomicBool::new(false),
        });
        let thread = progress::spawn(inner.clone()).map_err(|source| FabricError::Thread {
            provider: prov,
            source,
        })?;
        Ok(Self {
            inner,
            progress: Mutex::new(Some(thread)),
        })
    }

    /// The address peers reach this endpoint at.
    pub fn address(&self) -> FabricAddr {
        self.inner.name.clone()
    }

    /// The provider this endpoint runs on, e.g. `tcp;ofi_rxm`.
    pub fn provider(&self) -> &str {
        &self.inner.provider
    }

    /// A registered region, for local access.
    pub fn region(&self, key: RegionKey) -> Option<Arc<Region>> {
        self.inner.regions.get(key).map(|r| r.region)
    }

    /// Stops the endpoint as if the node had died: the progress thread
    /// ends, the endpoint closes (peers' transfers to it fail), transfers
    /// in flight end with `Shutdown`, registrations are closed.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        if self.inner.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(h) = lock(&self.progress).take() {
            let _ = h.join();
        }
        for p in self.inner.ep.close() {
            p.fail(TransportError::Shutdown);
        }
        self.inner.regions.clear();
        tracing::debug!(provider = %self.inner.provider, node = %self.inner.opts.node, "fabric endpoint shut down");
    }

    fn local_range(
        &self,
        local: LocalSlice,
        writable: bool,
    ) -> Result<Option<Arc<MemoryRegion>>, TransportError> {
        let r = self
            .inner
            .regions
            .get(local.key)
            .ok_or(TransportError::UnknownKey {
                peer: LOCAL.into(),
                key: local.key,
            })?;
        if r.region.range_ptr(local.offset, local.len).is_none() {
            return Err(TransportError::OutOfBounds {
                peer: LOCAL.into(),
                key: local.key,
                offset: local.offset,
                len: local.len,
                region_len: r.region.len(),
            });
        }
        if writable && r.region.access() != Access::ReadWrite {
            return Err(TransportError::ReadOnly {
                peer: LOCAL.into(),
                key: local.key,
            });
        }
        Ok(r.mr.clone())
    }

    fn submit(
        &self,
        peer: &FabricAddr,
        write: bool,
        remote: RemoteSlice,
        local: LocalSlice,
    ) -> Completion {
        match self.try_submit(peer, write, remote, local) {
            Ok(c) => c,
            Err(e) => Completion::ready(Err(e)),
        }
    }

    fn try_submit(
        &self,
        peer: &FabricAddr,
        write: bool,
        remote: RemoteSlice,
        local: LocalSlice,
    ) -> Result<Completion, TransportError> {
        if self.inner.shutdown.load(Ordering::SeqCst) {
            return Err(TransportError::Shutdown);
        }
        let mr = self.local_range(local, !write)?;
        let key = FabricKey::decode(remote.key);
        let len = local.len;
        let Some(remote_addr) = key.address_of(remote.offset, len) else {
            return Err(TransportError::OutOfBounds {
                peer: peer.to_string(),
                key: remote.key,
                offset: remote.offset,
                len,
                region_len: key.len,
            });
        };
        if write && !key.writable {
            return Err(TransportError::ReadOnly {
                peer: peer.to_string(),
                key: remote.key,
            });
        }
        // Nothing to move, and an empty region has no registration.
        let Some(mr) = mr.filter(|_| len > 0) else {
            return Ok(Completion::ready(Ok(0)));
        };
        let (completion, done) = Completion::new();
        let deadline = Instant::now() + self.inner.opts.timeout;
        let mut pending = Pending {
            done: Some(done),
            deadline,
            write,
            len,
            peer: peer.clone(),
            // Resolved below, under `posting`.
            fi_addr: 0,
            key: remote.key,
            retry: Some(Retry {
                mr: mr.clone(),
                offset: local.offset,
                remote_addr,
                provider_key: key.provider_key,
            }),
            first_error: None,
        };
        loop {
            let _using = self.inner.posting.read().unwrap_or_else(|e| e.into_inner());
            let addr = match self.inner.resolve(peer) {
                Ok(a) => a,
                Err(e) => {
                    pending.fail(e);
                    return Ok(completion);
                }
            };
            pending.fi_addr = addr;
            match self.inner.ep.post(
                write,
                &mr,
                local.offset,
                len,
                addr,
                remote_addr,
                key.provider_key,
                pending,
            ) {
                Ok(()) => return Ok(completion),
                // The queue is full: the progress thread drains it.
                Err((_, p)) if self.inner.shutdown.load(Ordering::SeqCst) => {
                    p.fail(TransportError::Shutdown);
                    return Ok(completion);
                }
                Err((e, p)) if e.is_again() && Instant::now() < deadline => {
                    pending = p;
                    // Not holding `posting`: the progress thread may need
                    // it to drain the queue.
                    drop(_using);
                    std::thread::yield_now();
                }
                Err((e, p)) => {
                    let err = progress::transfer_error(&p, e);
                    p.fail(err);
                    return Ok(completion);
                }
            }
        }
    }
}

impl Drop for FabricTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for FabricTransport {
    type Peer = FabricAddr;

    fn register(&self, region: Arc<Region>) -> Result<RegionKey, TransportError> {
        if self.inner.shutdown.load(Ordering::SeqCst) {
            return Err(TransportError::Shutdown);
        }
        let ep = &self.inner.ep;
        let writable = region.access() == Access::ReadWrite;
        // Partners get read-only regions: FI_REMOTE_WRITE only where the
        // region accepts writes, so the provider enforces it too.
        let access =
            sys::LOCAL_ACCESS | sys::REMOTE_READ | if writable { sys::REMOTE_WRITE } else { 0 };
        let mut attempt = 0;
        let mr = loop {
            let requested =
                random_key(ep.key_size()).map_err(|e| TransportError::Register(e.to_string()))?;
            match ep.register(region.clone(), access, requested) {
                Ok(mr) => break mr.map(Arc::new),
                // A requested key already in use: draw another.
                Err(e) if attempt < 3 && ep.mr_mode() & sys::MR_PROV_KEY == 0 => {
                    tracing::debug!(error = %e, "registration refused; trying another key");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(TransportError::Register(format!(
                        "{} bytes with provider {}: {e}",
                        region.len(),
                        self.inner.provider
                    )));
                }
            }
        };
        let remote_addr = match &mr {
            Some(m) if ep.mr_mode() & sys::MR_VIRT_ADDR != 0 => m.base(),
            _ => 0,
        };
        let tag: [u8; 7] =
            getrandom_array().map_err(|e| TransportError::Register(e.to_string()))?;
        let key = FabricKey {
            provider_key: mr.as_ref().map_or(0, |m| m.key()),
            remote_addr,
            len: region.len(),
            writable,
            tag,
        }
        .encode();
        self.inner.regions.insert(key, Registered { region, mr });
        Ok(key)
    }

    fn deregister(&self, key: RegionKey) -> Result<(), TransportError> {
        // Dropping the entry closes the registration once no transfer of
        // ours uses it any more (they hold it); peers' later requests fail.
        self.inner.regions.remove(key).map(drop)
    }

    fn read(&self, peer: &FabricAddr, remote: RemoteSlice, local: LocalSlice) -> Completion {
        self.submit(peer, false, remote, local)
    }

    fn write(&self, peer: &FabricAddr, remote: RemoteSlice, local: LocalSlice) -> Completion {
        self.submit(peer, true, remote, local)
    }
}

/// A random requested key of `size` bytes (the provider's `mr_key_size`).
fn random_key(size: usize) -> Result<u64, getrandom::Error> {
    let k = u64::from_le_bytes(getrandom_array()?);
    Ok(match size {
        0 | 8.. => k,
        n => k & ((1u64 << (8 * n)) - 1),
    })
}

fn getrandom_array<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}

// Poisoned locks only mean another thread panicked while holding them; the
// maps stay consistent (single inserts and removes), so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
