//! The flush worker: copies the node's committed snapshots out to the
//! flush directory (`--flush`, a shared file system), and back into the
//! node's store when the job resumes from it. One copy at a time, on its
//! own thread, so neither the event loop nor the file worker (commit
//! records) waits for a shared file system.

use super::core::Event;
use super::event_loop::Input;
use super::{Resources, error_chain};
use pm_core::Store;
use pm_core::proto::{FlushWay, FromAgent};
use pm_core::store::flush::copy_snapshot;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};

/// One [`pm_core::proto::ToAgent::CopyFlush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FlushJob {
    pub(super) way: FlushWay,
    pub(super) epoch: u64,
    pub(super) ranks: Vec<u32>,
}

pub(super) fn start(res: Arc<Resources>, tx: Sender<Input>) -> std::io::Result<Sender<FlushJob>> {
    let (jobs, rx) = channel::<FlushJob>();
    super::spawn("pmd-flush", move || {
        for job in rx {
            let done = run(&res, &job);
            if tx.send(Event::FlushCopied(done).into()).is_err() {
                return;
            }
        }
    })?;
    Ok(jobs)
}

fn run(res: &Resources, job: &FlushJob) -> FromAgent {
    let mut copied = Vec::new();
    let mut failed = Vec::new();
    let mut bytes_written = 0;
    for &rank in &job.ranks {
        match copy(res, job.way, job.epoch, rank) {
            Ok(bytes) => {
                bytes_written += bytes;
                copied.push(rank);
            }
            Err(e) => {
                tracing::warn!(rank, epoch = job.epoch, way = ?job.way, error = %e, "flush copy failed");
                failed.push((rank, e));
            }
        }
    }
    tracing::info!(way = ?job.way, epoch = job.epoch, ?copied, bytes_written, "flush copy done");
    FromAgent::FlushCopied {
        way: job.way,
        epoch: job.epoch,
        copied,
        failed,
        bytes_written,
    }
}

/// Copies one rank's snapshot of `epoch`; the bytes written.
fn copy(res: &Resources, way: FlushWay, epoch: u64, rank: u32) -> Result<u64, String> {
    let flush = res
        .opts
        .flush
        .as_deref()
        .ok_or("this node's agent was started without a flush directory")?;
    let open = |root: &Path| {
        Store::open(root, &res.opts.job, rank, Resources::store_options())
            .map_err(|e| error_chain(&e))
    };
    let node = open(&res.opts.store)?;
    let shared = open(flush)?;
    let (src, mut dst) = match way {
        FlushWay::Out => (node, shared),
        FlushWay::In => (shared, node),
    };
    copy_snapshot(&src, epoch, &mut dst)
        .map(|report| report.bytes_fetched)
        .map_err(|e| error_chain(&e))
}
