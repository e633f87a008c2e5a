//! The baseline the backend is measured against: a plain `fi_read` loop,
//! as a libfabric program without pmrun's machinery would move the bytes.
//!
//! [`raw_read`](crate::raw_read) opens two RDM endpoints of one provider in this process —
//! a *target* whose completion queue a thread reads in a loop (so that
//! manual-progress providers such as `tcp;ofi_rxm` and `shm` serve the
//! reads), and an *initiator* — registers the caller's source region with
//! `FI_REMOTE_READ` on the target and the sink for local access on the
//! initiator, then times reading all of the source into the sink with
//! `fi_read`s of `chunk` bytes, `window` of them in flight, reaping the
//! initiator's CQ. No registry, no packed keys, no per-operation deadlines,
//! no completion channels: what is left is the provider's own cost, which
//! is what `pmbench replicate --transport fabric` divides by.
//!
//! `mr_mode` is honoured as the backend does (the shared sys layer
//! registers, binds and enables under `FI_MR_ENDPOINT`, passes descriptors
//! for `FI_MR_LOCAL`; the remote address is base + offset under
//! `FI_MR_VIRT_ADDR`, else the offset; the provider's key is used under
//! `FI_MR_PROV_KEY`). Without libfabric, `raw_read` fails with
//! `FabricError::NotBuilt`, like the rest of the crate.

use std::time::Duration;

/// How [`raw_read`](crate::raw_read) moves the bytes.
#[derive(Clone, Debug)]
pub struct RawReadOptions {
    /// A local address to open both endpoints on (`FI_SOURCE`), e.g.
    /// `127.0.0.1` for `tcp;ofi_rxm` on loopback; `None` for `shm`.
    pub source: Option<String>,
    /// Bytes per `fi_read` (the last one may be shorter).
    pub chunk: u64,
    /// `fi_read`s kept in flight.
    pub window: usize,
    /// Timed passes over the whole source (after one untimed read of a
    /// chunk, which connects the endpoints).
    pub runs: usize,
    /// A pass that sees no completion for this long fails (a stuck
    /// provider), instead of hanging the caller.
    pub stall: Duration,
}

impl Default for RawReadOptions {
    fn default() -> Self {
        Self {
            source: None,
            chunk: 16 << 20,
            window: 8,
            runs: 1,
            stall: Duration::from_secs(60),
        }
    }
}

/// What [`raw_read`](crate::raw_read) measured.
#[derive(Clone, Debug)]
pub struct RawReadReport {
    /// The provider that moved the bytes, e.g. `tcp;ofi_rxm`.
    pub provider: String,
    /// The `mr_mode` bits the provider asked for.
    pub mr_mode: u64,
    /// Bytes moved per pass (the source's length).
    pub bytes: u64,
    pub chunk: u64,
    pub window: usize,
    /// The time of each pass, from the first `fi_read` posted to the last
    /// completion read.
    pub runs: Vec<Duration>,
}

#[cfg(pm_fabric)]
pub use imp::raw_read;

#[cfg(pm_fabric)]
mod imp {
    use super::{RawReadOptions, RawReadReport};
    use crate::error::FabricError;
    use crate::sys::{self, Endpoint, FiError, MemoryRegion};
    use crate::transport::{first_offered, offered};
    use pm_core::transport::Region;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// Requested keys (ignored under `FI_MR_PROV_KEY`): one registration
    /// per domain, so any small distinct values do.
    const SOURCE_KEY: u64 = 1;
    const SINK_KEY: u64 = 2;

    /// Reads all of `src` into the start of `sink` over `provider` (or
    /// the first RMA provider `fi_getinfo` offers), `opts.runs` times, and
    /// reports the time of each pass; see the module docs. The sink's
    /// bytes are the source's afterwards.
    pub fn raw_read(
        provider: Option<&str>,
        src: &Arc<Region>,
        sink: &Arc<Region>,
        opts: &RawReadOptions,
    ) -> Result<RawReadReport, FabricError> {
        let list = offered(provider, opts.source.as_deref())?;
        let info = first_offered(&list, provider, opts.source.as_deref())?;
        let prov = info.provider();
        let failed = |reason: String| FabricError::RawRead {
            provider: prov.clone(),
            reason,
        };
        let bytes = src.len();
        if bytes == 0 || opts.chunk == 0 || opts.window == 0 {
            return Err(failed(format!(
                "nothing to time: {bytes} source bytes, chunks of {}, {} in flight",
                opts.chunk, opts.window
            )));
        }
        if sink.len() < bytes {
            return Err(failed(format!(
                "the sink holds {} bytes, the source {bytes}",
                sink.len()
            )));
        }
        let open_err = |source: FiError| FabricError::Open {
            provider: prov.clone(),
            fabric: info.fabric(),
            domain: info.domain(),
            source,
        };
        let fi = |e: FiError| failed(e.to_string());
        let registered = |mr: Option<MemoryRegion>| {
            mr.map(Arc::new)
                .ok_or_else(|| failed("an empty region has no registration".into()))
        };
        // Declared in this order so that they drop in reverse, on the error
        // paths too: the initiator (and what it has in flight) before the
        // source's registration, and that before the target.
        let target: Endpoint<()> = Endpoint::open(info).map_err(open_err)?;
        let source_mr = registered(
            target
                .register(src.clone(), sys::REMOTE_READ, SOURCE_KEY)
                .map_err(fi)?,
        )?;
        let initiator: Endpoint<u64> = Endpoint::open(info).map_err(open_err)?;
        let sink_mr = registered(
            initiator
                .register(sink.clone(), sys::LOCAL_ACCESS, SINK_KEY)
                .map_err(fi)?,
        )?;
        let remote = Remote {
            peer: initiator.insert(&target.name().map_err(fi)?).map_err(fi)?,
            base: if target.mr_mode() & sys::MR_VIRT_ADDR != 0 {
                source_mr.base()
            } else {
                0
            },
            key: source_mr.key(),
        };
        let stop = AtomicBool::new(false);
        let runs = std::thread::scope(|s| {
            // The target's progress: reading its (empty) CQ is what makes a
            // manual-progress provider answer the initiator's reads.
            let driver = std::thread::Builder::new()
                .name("pm-fabric-raw-target".into())
                .spawn_scoped(s, || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = target.poll(16);
                        std::thread::yield_now();
                    }
                })
                .map_err(|source| FabricError::Thread {
                    provider: prov.clone(),
                    source,
                })?;
            let outcome = (|| {
                // Untimed: connects the endpoints (tcp;ofi_rxm connects on
                // the first operation) and faults in the provider's buffers.
                pass(&initiator, &sink_mr, &remote, bytes.min(opts.chunk), opts)
                    .map_err(&failed)?;
                (0..opts.runs)
                    .map(|_| pass(&initiator, &sink_mr, &remote, bytes, opts).map_err(&failed))
                    .collect::<Result<Vec<_>, _>>()
            })();
            stop.store(true, Ordering::Relaxed);
            let _ = driver.join();
            outcome
        })?;
        Ok(RawReadReport {
            provider: prov,
            mr_mode: info.mr_mode(),
            bytes,
            chunk: opts.chunk,
            window: opts.window,
            runs,
        })
    }

    /// Where the source is, as the initiator names it.
    struct Remote {
        peer: u64,
        base: u64,
        key: u64,
    }

    /// One timed pass: bytes `0..len` of the source into the sink.
    fn pass(
        ep: &Endpoint<u64>,
        sink: &Arc<MemoryRegion>,
        remote: &Remote,
        len: u64,
        opts: &RawReadOptions,
    ) -> Result<std::time::Duration, String> {
        let started = Instant::now();
        let (mut next, mut done, mut inflight) = (0u64, 0u64, 0usize);
        let mut last_progress = started;
        while done < len {
            while inflight < opts.window && next < len {
                let n = opts.chunk.min(len - next);
                match ep.post(
                    false,
                    sink,
                    next,
                    n,
                    remote.peer,
                    remote.base + next,
                    remote.key,
                    n,
                ) {
                    Ok(()) => {
                        next += n;
                        inflight += 1;
                    }
                    // The queue is full: reap, then post again.
                    Err((e, _)) if e.is_again() => break,
                    Err((e, _)) => return Err(format!("posting fi_read at {next}: {e}")),
                }
            }
            let finished = ep.poll(opts.window);
            if finished.is_empty() {
                if last_progress.elapsed() > opts.stall {
                    return Err(format!(
                        "no completion for {:?} with {inflight} reads in flight ({done} of {len} bytes read)",
                        opts.stall
                    ));
                }
                std::thread::yield_now();
                continue;
            }
            last_progress = Instant::now();
            for f in finished {
                f.outcome.map_err(|e| format!("an fi_read failed: {e}"))?;
                done += f.payload;
                inflight -= 1;
            }
        }
        Ok(started.elapsed())
    }
}
