//! The ranks' side of the agent: a Unix socket on which each rank of the
//! node introduces itself and reports its published snapshots.

use super::{Shared, lock, replicate};
use pm_core::proto::{FromAgent, FromRank};
use pm_core::wire::{Limits, Role, Session};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

pub(super) fn serve(shared: Arc<Shared>, listener: UnixListener) {
    super::serve_each(listener.incoming(), "pmd-rank", move |stream| {
        if let Err(e) = serve_rank(&shared, stream) {
            tracing::warn!(error = %e, "rank connection rejected or broken");
        }
    });
}

fn serve_rank(shared: &Arc<Shared>, mut stream: UnixStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(super::HANDSHAKE_TIMEOUT))?;
    let session = Session::accept(
        &mut stream,
        &shared.opts.secret,
        "rank socket",
        &shared.opts.node,
        Limits { max_body: 4096 },
    )?;
    if session.remote_role() != Role::Rank {
        anyhow::bail!("a {:?} connected to the rank socket", session.remote_role());
    }
    stream.set_read_timeout(None)?;
    let (_, mut receiver) = session.split();
    let mut me = None;
    let served = serve_messages(shared, &mut stream, &mut receiver, &mut me);
    // A rank whose connection is gone is no process of this node's any more.
    if let Some(rank) = me {
        lock(&shared.state).rank_pids.remove(&rank);
    }
    served
}

fn serve_messages(
    shared: &Arc<Shared>,
    stream: &mut UnixStream,
    receiver: &mut pm_core::wire::SessionReceiver,
    me: &mut Option<u32>,
) -> anyhow::Result<()> {
    loop {
        let msg: FromRank = match receiver.recv(stream) {
            Ok(m) => m,
            Err(e) => {
                return match e.kind {
                    pm_core::wire::WireErrorKind::Closed => Ok(()),
                    _ => Err(e.into()),
                };
            }
        };
        match msg {
            FromRank::Hello { rank, pid } => {
                *me = Some(rank);
                lock(&shared.state).rank_pids.insert(rank, pid);
                if let Some(cgroup) = &shared.opts.cgroup {
                    let procs = cgroup.join("cgroup.procs");
                    if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                        tracing::warn!(rank, pid, cgroup = %cgroup.display(), error = %e, "cannot move the rank into the node's CPU cgroup");
                    }
                }
                shared.tell_launcher(&FromAgent::RankHello { rank, pid });
                tracing::debug!(rank, pid, "rank connected");
            }
            FromRank::Published {
                rank,
                epoch,
                step,
                state_bytes,
                written_bytes,
            } if Some(rank) == *me => {
                lock(&shared.state).published.insert(rank, epoch);
                shared.tell_launcher(&FromAgent::Published {
                    rank,
                    epoch,
                    step,
                    state_bytes,
                    written_bytes,
                });
                replicate::enqueue(shared, rank, replicate::Work::Replicate { epoch });
            }
            FromRank::Stopped { rank, epoch, step } if Some(rank) == *me => {
                shared.tell_launcher(&FromAgent::Stopped { rank, epoch, step })
            }
            FromRank::Finished { rank } if Some(rank) == *me => {
                shared.tell_launcher(&FromAgent::Finished { rank })
            }
            other => anyhow::bail!("a message for another rank, or before Hello: {other:?}"),
        }
    }
}
