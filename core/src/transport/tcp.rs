//! The plain-TCP backend of [`Transport`].
//!
//! Every endpoint runs a small server (an accept thread and one thread per
//! connection, std::net) that serves one-sided reads and writes against its
//! registered regions; this plays the part of libfabric's target-side
//! progress thread. Clients keep up to `connections_per_peer` connections
//! per peer, each driven by a worker thread, so that many transfers can be
//! in flight; transfers queue for a free connection.
//!
//! Every connection starts with the `wire` handshake under the job's secret.
//! A request is one authenticated frame (`Request`); the bulk bytes of a read
//! reply or a write follow the frame raw, moved with `send`/`recv` directly
//! between the socket and the mapped region in pieces of `piece_size` bytes,
//! never through an intermediate buffer or a serializer. Every remote offset
//! and length is checked against the region before any byte moves; a
//! refused request gets an error reply and the connection goes on serving.

use super::{
    Access, Completer, Completion, LOCAL, LocalSlice, Region, RegionKey, Registry, RemoteSlice,
    Transport, TransportError,
};
use crate::wire::{JobSecret, Limits, Role, Session, WireError, WireErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Settings of a TCP endpoint.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// This node's name, announced in handshakes and used in logs.
    pub node: String,
    /// Connections (and worker threads) a client opens per peer at most.
    pub connections_per_peer: usize,
    /// How long one send or receive may block before the transfer fails
    /// (a stopped or vanished peer), also the handshake's limit.
    pub timeout: Duration,
    /// How long a server keeps an idle connection open.
    pub idle_timeout: Duration,
    /// Largest piece moved by one system call.
    pub piece_size: usize,
    /// Connections a server serves at once; more are closed at once.
    pub max_server_connections: usize,
    pub limits: Limits,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            node: "node".into(),
            connections_per_peer: 2,
            timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            piece_size: 4 << 20,
            max_server_connections: 256,
            limits: Limits { max_body: 4096 },
        }
    }
}

/// A request frame; the payload of a write follows it raw.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    Read {
        key: RegionKey,
        offset: u64,
        len: u64,
    },
    Write {
        key: RegionKey,
        offset: u64,
        len: u64,
    },
}

/// A reply frame; the payload of a read follows `Data` raw.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Data { len: u64 },
    Written { len: u64 },
    Refused(Refusal),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    UnknownKey,
    OutOfBounds { region_len: u64 },
    ReadOnly,
}

struct Job {
    write: bool,
    remote: RemoteSlice,
    local: Arc<Region>,
    local_offset: u64,
    len: u64,
    done: Completer,
}

struct Inner {
    secret: JobSecret,
    opts: TcpOptions,
    addr: SocketAddr,
    regions: Registry<Arc<Region>>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Job>>>,
    /// Server-side connections, so that shutdown can cut them.
    server_conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    shutdown: AtomicBool,
}

/// A TCP endpoint: serves its registered regions and transfers to peers.
pub struct TcpTransport {
    inner: Arc<Inner>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl TcpTransport {
    /// Binds `addr` (port 0 for any) and starts serving.
    pub fn bind(addr: SocketAddr, secret: JobSecret, opts: TcpOptions) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let inner = Arc::new(Inner {
            secret,
            addr: listener.local_addr()?,
            opts,
            regions: Registry::default(),
            peers: Mutex::new(HashMap::new()),
            server_conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        });
        let server = inner.clone();
        let accept = std::thread::Builder::new()
            .name(format!("pm-tcp-accept-{}", inner.addr))
            .spawn(move || accept_loop(server, listener))?;
        tracing::debug!(addr = %inner.addr, node = %inner.opts.node, "transport listening");
        Ok(Self {
            inner,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// A registered region, for local access.
    pub fn region(&self, key: RegionKey) -> Option<Arc<Region>> {
        self.inner.regions.get(key)
    }

    /// Stops serving: closes the listener and cuts every connection, as if
    /// the node had died. Transfers of this endpoint's clients end with
    /// errors. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        if self.inner.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.inner.peers).clear();
        for (_, s) in lock(&self.inner.server_conns).drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.inner.addr, Duration::from_secs(1));
        if let Some(h) = lock(&self.accept).take() {
            let _ = h.join();
        }
    }

    fn local_range(
        &self,
        local: LocalSlice,
        writable: bool,
    ) -> Result<Arc<Region>, TransportError> {
        let region = self.region(local.key).ok_or(TransportError::UnknownKey {
            peer: LOCAL.into(),
            key: local.key,
        })?;
        if region.range_ptr(local.offset, local.len).is_none() {
            return Err(TransportError::OutOfBounds {
                peer: LOCAL.into(),
                key: local.key,
                offset: local.offset,
                len: local.len,
                region_len: region.len(),
            });
        }
        if writable && region.access() != Access::ReadWrite {
            return Err(TransportError::ReadOnly {
                peer: LOCAL.into(),
                key: local.key,
            });
        }
        Ok(region)
    }

    fn submit(
        &self,
        peer: SocketAddr,
        write: bool,
        remote: RemoteSlice,
        local: LocalSlice,
    ) -> Completion {
        if self.inner.shutdown.load(Ordering::SeqCst) {
            return Completion::ready(Err(TransportError::Shutdown));
        }
        let region = match self.local_range(local, !write) {
            Ok(r) => r,
            Err(e) => return Completion::ready(Err(e)),
        };
        let (completion, done) = Completion::new();
        let job = Job {
            write,
            remote,
            local: region,
            local_offset: local.offset,
            len: local.len,
            done,
        };
        let mut peers = lock(&self.inner.peers);
        let tx = peers
            .entry(peer)
            .or_insert_with(|| spawn_workers(&self.inner, peer));
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            job.done.complete(Err(TransportError::Shutdown));
        }
        completion
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for TcpTransport {
    type Peer = SocketAddr;

    fn register(&self, region: Arc<Region>) -> Result<RegionKey, TransportError> {
        let key = RegionKey::random().map_err(|e| TransportError::Register(e.to_string()))?;
        self.inner.regions.insert(key, region);
        Ok(key)
    }

    fn deregister(&self, key: RegionKey) -> Result<(), TransportError> {
        self.inner.regions.remove(key).map(drop)
    }

    fn read(&self, peer: &SocketAddr, remote: RemoteSlice, local: LocalSlice) -> Completion {
        self.submit(*peer, false, remote, local)
    }

    fn write(&self, peer: &SocketAddr, remote: RemoteSlice, local: LocalSlice) -> Completion {
        self.submit(*peer, true, remote, local)
    }
}

// Poisoned locks only mean another thread panicked while holding them; the
// maps stay consistent (single inserts and removes), so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------- client

struct Conn {
    stream: TcpStream,
    session: Session,
}

fn spawn_workers(inner: &Arc<Inner>, peer: SocketAddr) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..inner.opts.connections_per_peer.max(1) {
        let (inner, rx) = (inner.clone(), rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("pm-tcp-{peer}-{i}"))
            .spawn(move || client_worker(inner, peer, rx));
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "cannot start a transfer thread");
        }
    }
    tx
}

fn client_worker(inner: Arc<Inner>, peer: SocketAddr, jobs: Arc<Mutex<mpsc::Receiver<Job>>>) {
    let mut conn: Option<Conn> = None;
    loop {
        let Ok(job) = lock(&jobs).recv() else { return };
        if inner.shutdown.load(Ordering::SeqCst) {
            job.done.complete(Err(TransportError::Shutdown));
            continue;
        }
        if conn.as_ref().is_some_and(|c| !is_alive(&c.stream)) {
            conn = None;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&inner, peer) {
                Ok(c) => c,
                Err(e) => {
                    job.done.complete(Err(e));
                    continue;
                }
            },
        };
        let outcome = run_job(&mut c, &job, peer, inner.opts.piece_size);
        // After a refusal the stream is still in step; after anything else
        // its state is unknown, so the connection is dropped.
        let in_step = matches!(
            outcome,
            Ok(_)
                | Err(TransportError::UnknownKey { .. }
                    | TransportError::OutOfBounds { .. }
                    | TransportError::ReadOnly { .. })
        );
        if in_step {
            conn = Some(c);
        }
        job.done.complete(outcome);
    }
}

/// False when the server has closed an idle pooled connection.
fn is_alive(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let alive = matches!(stream.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && alive
}

fn connect(inner: &Inner, peer: SocketAddr) -> Result<Conn, TransportError> {
    let name = peer.to_string();
    let io_err = |source| TransportError::Connect {
        peer: name.clone(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&peer, inner.opts.timeout).map_err(io_err)?;
    stream.set_nodelay(true).map_err(io_err)?;
    stream
        .set_read_timeout(Some(inner.opts.timeout))
        .map_err(io_err)?;
    stream
        .set_write_timeout(Some(inner.opts.timeout))
        .map_err(io_err)?;
    let session = Session::connect(
        &mut stream,
        &inner.secret,
        &name,
        &inner.opts.node,
        Role::Transport,
        inner.opts.limits,
    )
    .map_err(|source| TransportError::Handshake {
        peer: name.clone(),
        source,
    })?;
    Ok(Conn { stream, session })
}

fn run_job(c: &mut Conn, job: &Job, peer: SocketAddr, piece: usize) -> Result<u64, TransportError> {
    let (key, offset, len) = (job.remote.key, job.remote.offset, job.len);
    let ptr =
        job.local
            .range_ptr(job.local_offset, len)
            .ok_or_else(|| TransportError::Protocol {
                peer: LOCAL.into(),
                reason: "local range checked at submission no longer fits".into(),
            })?;
    let data_err = |op, (moved, source): (u64, io::Error)| TransportError::Data {
        peer: peer.to_string(),
        op,
        moved,
        len,
        source,
    };
    if job.write {
        c.session
            .send(&mut c.stream, &Request::Write { key, offset, len })?;
        send_from(&c.stream, ptr, len, piece).map_err(|e| data_err("write", e))?;
    } else {
        c.session
            .send(&mut c.stream, &Request::Read { key, offset, len })?;
    }
    let reply: Reply = c.session.recv(&mut c.stream)?;
    let refused = |r: Refusal| match r {
        Refusal::UnknownKey => TransportError::UnknownKey {
            peer: peer.to_string(),
            key,
        },
        Refusal::OutOfBounds { region_len } => TransportError::OutOfBounds {
            peer: peer.to_string(),
            key,
            offset,
            len,
            region_len,
        },
        Refusal::ReadOnly => TransportError::ReadOnly {
            peer: peer.to_string(),
            key,
        },
    };
    match (job.write, reply) {
        (_, Reply::Refused(r)) => Err(refused(r)),
        (true, Reply::Written { len: n }) if n == len => Ok(len),
        (false, Reply::Data { len: n }) if n == len => {
            recv_into(&c.stream, ptr, len, piece).map_err(|e| data_err("read", e))?;
            Ok(len)
        }
        (_, other) => Err(TransportError::Protocol {
            peer: peer.to_string(),
            reason: format!("unexpected reply {other:?} to a transfer of {len} bytes"),
        }),
    }
}

// ---------------------------------------------------------------- server

fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    for stream in listener.incoming() {
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(addr = %inner.addr, error = %e, "accept failed");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_owned(), |a| a.to_string());
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut conns = lock(&inner.server_conns);
            if conns.len() >= inner.opts.max_server_connections {
                tracing::warn!(%peer, limit = inner.opts.max_server_connections, "too many connections; closing the new one");
                continue;
            }
            match stream.try_clone() {
                Ok(s) => conns.insert(id, s),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot track connection");
                    continue;
                }
            };
        }
        let server = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pm-tcp-serve-{id}"))
            .spawn(move || {
                serve(&server, stream, &peer);
                lock(&server.server_conns).remove(&id);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a connection thread");
            lock(&inner.server_conns).remove(&id);
        }
    }
}

fn serve(inner: &Inner, mut stream: TcpStream, peer: &str) {
    let setup = stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(inner.opts.timeout)))
        .and_then(|()| stream.set_write_timeout(Some(inner.opts.timeout)));
    if let Err(e) = setup {
        tracing::warn!(peer, error = %e, "cannot configure connection");
        return;
    }
    let mut session = match Session::accept(
        &mut stream,
        &inner.secret,
        peer,
        &inner.opts.node,
        inner.opts.limits,
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer, error = %e, "rejected a transport connection");
            return;
        }
    };
    tracing::debug!(
        peer,
        node = session.remote_node(),
        "transport connection accepted"
    );
    loop {
        let _ = stream.set_read_timeout(Some(inner.opts.idle_timeout));
        let request: Request = match session.recv(&mut stream) {
            Ok(r) => r,
            Err(WireError {
                kind: WireErrorKind::Closed,
                ..
            }) => return,
            Err(e) => {
                tracing::warn!(peer, error = %e, "dropping a transport connection");
                return;
            }
        };
        let _ = stream.set_read_timeout(Some(inner.opts.timeout));
        if let Err(e) = serve_request(inner, &mut session, &stream, request) {
            tracing::warn!(peer, error = %e, "transfer failed; closing the connection");
            return;
        }
    }
}

/// Serves one request. An error means the connection is out of step and must close.
fn serve_request(
    inner: &Inner,
    session: &mut Session,
    stream: &TcpStream,
    request: Request,
) -> Result<(), String> {
    let (write, key, offset, len) = match request {
        Request::Read { key, offset, len } => (false, key, offset, len),
        Request::Write { key, offset, len } => (true, key, offset, len),
    };
    let region = inner.regions.get(key);
    let target = match &region {
        None => Err(Refusal::UnknownKey),
        Some(r) if write && r.access() != Access::ReadWrite => Err(Refusal::ReadOnly),
        Some(r) => r.range_ptr(offset, len).ok_or(Refusal::OutOfBounds {
            region_len: r.len(),
        }),
    };
    let piece = inner.opts.piece_size;
    let mut w = stream;
    match target {
        Err(refusal) => {
            tracing::warn!(peer = session.peer(), %key, offset, len, ?refusal, "refused a transfer");
            if write {
                drain(stream, len, piece)
                    .map_err(|(n, e)| format!("draining a refused write after {n} bytes: {e}"))?;
            }
            session
                .send(&mut w, &Reply::Refused(refusal))
                .map_err(|e| e.to_string())
        }
        Ok(ptr) if write => {
            recv_into(stream, ptr, len, piece).map_err(|(n, e)| {
                format!("write of {len} bytes at {offset} of region {key} ended after {n}: {e}")
            })?;
            session
                .send(&mut w, &Reply::Written { len })
                .map_err(|e| e.to_string())
        }
        Ok(ptr) => {
            session
                .send(&mut w, &Reply::Data { len })
                .map_err(|e| e.to_string())?;
            send_from(stream, ptr, len, piece).map_err(|(n, e)| {
                format!("read of {len} bytes at {offset} of region {key} ended after {n}: {e}")
            })
        }
    }
}

// ---------------------------------------------------------------- raw bytes

/// Sends `len` bytes starting at `ptr`; on failure, how many were sent.
fn send_from(
    stream: &TcpStream,
    ptr: *const u8,
    len: u64,
    piece: usize,
) -> Result<(), (u64, io::Error)> {
    let fd = stream.as_raw_fd();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(piece as u64) as usize;
        // SAFETY: `ptr..ptr+len` lies inside a live region (bounds checked
        // by the caller, region kept alive by an Arc); the kernel copies
        // from it and reports EFAULT rather than faulting us.
        let sent = unsafe { libc::send(fd, ptr.add(done as usize).cast(), n, libc::MSG_NOSIGNAL) };
        if sent < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((done, e));
        }
        done += sent as u64;
    }
    Ok(())
}

/// Receives exactly `len` bytes into `ptr`; on failure, how many arrived.
fn recv_into(
    stream: &TcpStream,
    ptr: *mut u8,
    len: u64,
    piece: usize,
) -> Result<(), (u64, io::Error)> {
    let fd = stream.as_raw_fd();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(piece as u64) as usize;
        // SAFETY: as in `send_from`; the region is writable (checked).
        let got = unsafe { libc::recv(fd, ptr.add(done as usize).cast(), n, 0) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err((done, e));
        }
        if got == 0 {
            return Err((done, io::ErrorKind::UnexpectedEof.into()));
        }
        done += got as u64;
    }
    Ok(())
}

/// Reads and discards `len` bytes (the payload of a refused write).
fn drain(stream: &TcpStream, len: u64, piece: usize) -> Result<(), (u64, io::Error)> {
    let mut scratch = vec![0u8; piece.min(1 << 16)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(scratch.len() as u64);
        recv_into(stream, scratch.as_mut_ptr(), n, piece).map_err(|(m, e)| (done + m, e))?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
