//! The ranks' side of the agent: a Unix socket on which each rank of the
//! node introduces itself and reports its published snapshots.

use super::{Shared, lock, replicate};
use pm_core::wire::{Limits, Message, Role, Session};
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
    loop {
        let msg: Message = match receiver.recv(&mut stream) {
            Ok(m) => m,
            Err(e) => {
                return match e.kind {
                    pm_core::wire::WireErrorKind::Closed => Ok(()),
                    _ => Err(e.into()),
                };
            }
        };
        match msg {
            Message::RankHello { rank, pid } => {
                me = Some(rank);
                if let Some(cgroup) = &shared.opts.cgroup {
                    let procs = cgroup.join("cgroup.procs");
                    if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                        tracing::warn!(rank, pid, cgroup = %cgroup.display(), error = %e, "cannot move the rank into the node's CPU cgroup");
                    }
                }
                shared.tell_launcher(&msg);
                tracing::debug!(rank, pid, "rank connected");
            }
            Message::Published { rank, epoch, .. } if Some(rank) == me => {
                lock(&shared.state).published.insert(rank, epoch);
                shared.tell_launcher(&msg);
                replicate::enqueue(shared, rank, replicate::Work::Replicate { epoch });
            }
            Message::Finished { rank } | Message::Stopped { rank, .. } if Some(rank) == me => {
                shared.tell_launcher(&msg)
            }
            other => anyhow::bail!("unexpected message from a rank: {other:?}"),
        }
    }
}
