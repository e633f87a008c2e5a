//! The progress thread: one per endpoint.
//!
//! The providers here (`tcp;ofi_rxm`, `shm`) make progress only inside
//! libfabric calls (`FI_PROGRESS_MANUAL`): a peer's `fi_read` of one of our
//! regions moves only while *we* call into the provider, and our own
//! operations complete only when we read the completion queue. Nothing in
//! the agent calls into the fabric while it waits for peers, so a thread
//! per endpoint reads the CQ in a loop: it completes our operations (each
//! operation's context maps to its [`Completer`]), fails those past their
//! deadline, and serves peers. It spins (yielding) while operations of its
//! own are in flight or completions came recently, or while it serves
//! peers (seen as polls that cost more CPU time than its idle ones: a
//! target gets no completions for reads of its regions), and otherwise polls every
//! `idle_poll`, which bounds an idle agent's CPU use at the price of up to
//! that much latency for the first bytes a peer asks of it. Sleeping
//! between the polls of a transfer it serves cost `shm` half its
//! throughput on loopback.

use crate::addr::FabricAddr;
use crate::sys::{FiError, Finished, MemoryRegion, code};
use crate::transport::Inner;
use pm_core::transport::{Completer, RegionKey, TransportError};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the progress thread knows of an operation in flight.
pub(crate) struct Pending {
    /// Taken when the outcome is reported (at completion, or earlier at
    /// the deadline: the operation itself stays with the endpoint until
    /// the provider is done with its memory).
    pub done: Option<Completer>,
    pub deadline: Instant,
    pub write: bool,
    pub len: u64,
    pub peer: FabricAddr,
    pub fi_addr: u64,
    pub key: RegionKey,
    /// What it takes to post the operation again, once.
    pub retry: Option<Retry>,
    /// Why the first attempt failed, while the retry is pending.
    pub first_error: Option<FiError>,
}

/// An operation's arguments, for its one retry on a fresh connection.
pub(crate) struct Retry {
    pub mr: Arc<MemoryRegion>,
    pub offset: u64,
    pub remote_addr: u64,
    pub provider_key: u64,
}

impl Pending {
    pub fn fail(mut self, e: TransportError) {
        if let Some(d) = self.done.take() {
            d.complete(Err(e));
        }
    }

    fn op(&self) -> &'static str {
        if self.write { "write" } else { "read" }
    }
}

/// The transport's error for a failed operation, in the same terms as TCP.
/// An initiator checks bounds and access from the key before it sends, so
/// what a live target refuses is the key itself: a region it no longer
/// has, or never had. Providers say so differently: an access or key
/// error, or (`tcp` in 1.17) by cutting the connection over the invalid
/// request, which cancels the operations on it; a dead peer is
/// `ENOTCONN`/`ECONNRESET` instead.
pub(crate) fn transfer_error(p: &Pending, e: FiError) -> TransportError {
    match e.code {
        code::ACCESS | code::INVALID | code::KEY_REJECTED | code::CANCELED => {
            TransportError::UnknownKey {
                peer: p.peer.to_string(),
                key: p.key,
            }
        }
        c => {
            let kind = if c == code::TIMED_OUT {
                io::ErrorKind::TimedOut
            } else {
                io::Error::from_raw_os_error(c).kind()
            };
            TransportError::Data {
                peer: p.peer.to_string(),
                op: p.op(),
                moved: 0,
                len: p.len,
                source: io::Error::new(kind, e),
            }
        }
    }
}

pub(crate) fn spawn(inner: Arc<Inner>) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("pm-fabric-{}", inner.opts.node))
        .spawn(move || run(&inner))
}

/// How long after the last sign of work the thread keeps spinning.
const BUSY_WINDOW: Duration = Duration::from_millis(2);
/// A poll that cost this much more CPU time than the cheapest recent one
/// served peers: the thread then stays busy, as for operations of its
/// own. An idle poll costs a microsecond or two here, but the first after
/// a sleep now and then tens to a hundred (cold caches); the first after a
/// sleep that finds a peer's read to serve, from half a millisecond
/// (`tcp;ofi_rxm`, a socket buffer's worth) to milliseconds (`shm`), and
/// the polls of a transfer being served, tens of microseconds and more.
/// CPU time, not wall time, so that a poll preempted on a busy node (ranks
/// on every core) is not taken for work; against the cheapest poll, so
/// that an endpoint whose idle polls are dear (many connections) is not
/// either.
const SERVING: Duration = Duration::from_micros(20);
const SERVING_AFTER_SLEEP: Duration = Duration::from_micros(250);
/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(5);

/// How long a transfer whose connection broke waits before its retry: the
/// provider tears the broken connection down asynchronously, and a retry
/// at once would find it still there.
const RETRY_AFTER: Duration = Duration::from_millis(50);

fn run(inner: &Inner) {
    let mut last_busy = Instant::now();
    let mut next_sweep = Instant::now();
    let mut live = 0usize;
    let mut retries: Vec<(Instant, Pending, Retry)> = Vec::new();
    // The cheapest poll of the last sweep period, and of this one.
    let (mut cheapest, mut cheapest_now) = (Duration::MAX, Duration::MAX);
    let mut slept = false;
    let mut cpu = thread_cpu_time();
    while !inner.shutdown.load(Ordering::SeqCst) {
        let done = inner.ep.poll(64);
        // A target learns of peers' reads only from the work the provider
        // did serving them inside the poll: no completion tells it. (The
        // cost also counts the rest of the last round, a little, to save a
        // system call per poll.)
        let cost = {
            let before = std::mem::replace(&mut cpu, thread_cpu_time());
            cpu.saturating_sub(before)
        };
        let now = Instant::now();
        cheapest_now = cheapest_now.min(cost);
        let serving = if slept { SERVING_AFTER_SLEEP } else { SERVING };
        if !done.is_empty() || cost >= cheapest.saturating_add(serving) {
            last_busy = now;
        }
        for f in done {
            if let Some((p, r)) = finish(inner, f) {
                retries.push((now + RETRY_AFTER, p, r));
            }
        }
        let mut i = 0;
        while i < retries.len() {
            if retries[i].0 <= now {
                let (_, p, r) = retries.swap_remove(i);
                retry(inner, p, r);
            } else {
                i += 1;
            }
        }
        if !retries.is_empty() {
            last_busy = now;
        }
        if now >= next_sweep {
            live = sweep(inner, now);
            next_sweep = now + SWEEP;
            cheapest = std::mem::replace(&mut cheapest_now, Duration::MAX);
        }
        slept = live == 0 && now.duration_since(last_busy) >= BUSY_WINDOW;
        if slept {
            std::thread::sleep(inner.opts.idle_poll);
        } else {
            std::thread::yield_now();
        }
    }
}

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Reports an operation's end, or hands it back for a retry.
fn finish(inner: &Inner, f: Finished<Pending>) -> Option<(Pending, Retry)> {
    let Finished { payload, outcome } = f;
    match outcome {
        Ok(()) => {
            let len = payload.len;
            if let Some(d) = { payload }.done.take() {
                d.complete(Ok(len));
            }
            None
        }
        Err(e) => {
            let mut payload = payload;
            if matches!(
                e.code,
                code::CANCELED | code::NOT_CONNECTED | code::RESET | code::REFUSED | code::IO
            ) {
                // The connection broke (the peer died, or cut it over a
                // request it refused; the provider does not reconnect by
                // itself): forget it, and try once more on a fresh one.
                inner.forget_peer(&payload.peer, payload.fi_addr);
                if payload.done.is_some() && Instant::now() < payload.deadline {
                    if let Some(r) = payload.retry.take() {
                        tracing::debug!(peer = %payload.peer, error = %e, "connection broke; retrying the transfer");
                        payload.first_error = Some(e);
                        return Some((payload, r));
                    }
                }
            }
            let err = transfer_error(&payload, e);
            tracing::debug!(error = %err, "fabric transfer failed");
            payload.fail(err);
            None
        }
    }
}

/// Posts a failed operation again on a freshly resolved address; if it
/// cannot be posted, fails it with its first error.
fn retry(inner: &Inner, p: Pending, r: Retry) {
    if let Err((p, e)) = repost(inner, p, r) {
        p.fail(e);
    }
}

#[allow(clippy::result_large_err)]
fn repost(inner: &Inner, mut p: Pending, r: Retry) -> Result<(), (Pending, TransportError)> {
    let first = |p: &mut Pending| {
        let e = p.first_error.take().unwrap_or(FiError {
            call: "retry",
            code: code::CANCELED,
            detail: None,
        });
        transfer_error(p, e)
    };
    if inner.shutdown.load(Ordering::SeqCst) {
        return Err((p, TransportError::Shutdown));
    }
    let _using = inner.posting.read().unwrap_or_else(|e| e.into_inner());
    let addr = match inner.resolve(&p.peer) {
        Ok(a) => a,
        Err(_) => {
            let e = first(&mut p);
            return Err((p, e));
        }
    };
    p.fi_addr = addr;
    inner
        .ep
        .post(
            p.write,
            &r.mr,
            r.offset,
            p.len,
            addr,
            r.remote_addr,
            r.provider_key,
            p,
        )
        .map_err(|(_, mut p)| {
            let e = first(&mut p);
            (p, e)
        })
}

/// Fails the operations past their deadline; the number still awaited.
fn sweep(inner: &Inner, now: Instant) -> usize {
    let mut live = 0;
    inner.ep.for_each_inflight(|p| {
        if p.done.is_none() {
            return;
        }
        if now < p.deadline {
            live += 1;
            return;
        }
        let e = TransportError::Data {
            peer: p.peer.to_string(),
            op: p.op(),
            moved: 0,
            len: p.len,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no completion within {:?}; is the peer alive?",
                    inner.opts.timeout
                ),
            ),
        };
        if let Some(d) = p.done.take() {
            d.complete(Err(e));
        }
    });
    live
}
