//! The ranks' side of the agent: a Unix socket on which each rank of the
//! node introduces itself and reports its published snapshots and its load. One reader
//! thread per connection authenticates it and posts its messages to the
//! event loop.
//!
//! The connecting process is known from the kernel (SO_PEERCRED), not
//! from what it says: the core rejects a `Hello` whose pid disagrees, and
//! a kill goes through a pidfd opened for that process while its connection
//! was open, so a pid that was reused meanwhile is never signalled (nor
//! stopped or resumed by the duty cycle).

use super::core::{ConnId, Event};
use super::event_loop::Input;
use super::{ConnError, HANDSHAKE_TIMEOUT, Resources};
use pm_core::proto::FromRank;
use pm_core::wire::{Limits, Role, Session, WireErrorKind};
use rustix::fd::OwnedFd;
use rustix::process::{Pid, PidfdFlags, Signal};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::mpsc::Sender;

/// What the event loop keeps of a rank connection.
pub(super) struct RankHandle {
    /// The connecting process, from the kernel.
    pub(super) pid: u32,
    pidfd: Option<OwnedFd>,
    stream: UnixStream,
}

impl RankHandle {
    /// Ends the connection (its reader then reports it closed).
    pub(super) fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// SIGKILLs the process behind the connection.
    pub(super) fn kill(&self) {
        self.signal(Signal::KILL);
    }

    /// Sends `sig` to the process behind the connection.
    pub(super) fn signal(&self, sig: Signal) {
        let sent = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
            // No pidfds (an old kernel): the connection is still open, so
            // the pid is still the rank's.
            None => match Pid::from_raw(self.pid as i32) {
                Some(pid) => rustix::process::kill_process(pid, sig),
                None => Ok(()),
            },
        };
        if let Err(e) = sent {
            tracing::warn!(pid = self.pid, signal = ?sig, error = %e, "cannot signal the rank");
        }
    }
}

pub(super) fn listen(
    listener: UnixListener,
    res: Arc<Resources>,
    tx: Sender<Input>,
) -> std::io::Result<()> {
    super::serve_each(
        "pmd-ranks",
        std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s))),
        move |conn, stream| {
            let result = serve(conn, &res, stream, &tx);
            let _ = tx.send(Event::RankClosed { conn }.into());
            if let Err(e) = result {
                tracing::warn!(conn, error = %e, "rank connection rejected or broken");
            }
        },
    )
}

fn serve(
    conn: ConnId,
    res: &Resources,
    mut stream: UnixStream,
    tx: &Sender<Input>,
) -> Result<(), ConnError> {
    let cred = rustix::net::sockopt::socket_peercred(&stream).map_err(std::io::Error::from)?;
    let pid = cred.pid.as_raw_nonzero().get() as u32;
    // Opened before the handshake: the peer that completes it was alive
    // after this, so the pidfd is its process's.
    let pidfd = rustix::process::pidfd_open(cred.pid, PidfdFlags::empty()).ok();
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let session = Session::accept(
        &mut stream,
        &res.opts.secret,
        "rank socket",
        &res.opts.node,
        Limits { max_body: 4096 },
    )?;
    if session.remote_role() != Role::Rank {
        return Err(ConnError::Role {
            role: session.remote_role(),
            socket: "rank socket",
        });
    }
    stream.set_read_timeout(None)?;
    if let Some(cgroup) = &res.opts.cgroup {
        // Before the rank's Hello reaches pmrun, so that a rank pmrun
        // knows is in its node's group.
        let procs = cgroup.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, pid.to_string()) {
            tracing::warn!(pid, cgroup = %cgroup.display(), error = %e, "cannot move the rank into the node's CPU cgroup");
        }
    }
    let handle = RankHandle {
        pid,
        pidfd,
        stream: stream.try_clone()?,
    };
    if tx.send(Input::RankConnected { conn, handle }).is_err() {
        return Ok(());
    }
    let (_, mut receiver) = session.split();
    loop {
        let msg: FromRank = match receiver.recv(&mut stream) {
            Ok(m) => m,
            Err(e) if matches!(e.kind, WireErrorKind::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if tx.send(Event::Rank { conn, msg }.into()).is_err() {
            return Ok(());
        }
    }
}
