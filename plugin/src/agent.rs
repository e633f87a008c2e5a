//! The rank's link to its node agent (`pmd`), when the job runs under
//! `pmrun`.
//!
//! `pmrun` tells every rank, through the environment, which node each rank
//! runs on, each node's store root and agent socket, the file holding the
//! job's secret, and the epoch to restore. The rank writes its snapshots
//! into its node's store as always, then reports each one to the agent,
//! which replicates it to partner nodes; `pmrun` commits an epoch once
//! every rank's snapshot is held by its partners. Ranks never wait for that.
//! About once a second each rank also reports its load (`FromRank::Load`,
//! see `load`), with [`AgentLink::try_send`], which never waits for a
//! slow agent.
//!
//! | variable | meaning |
//! |---|---|
//! | `PM_NODE_MAP` | node index of every rank, comma-separated |
//! | `PM_NODE_STORES` | store root of every node, `:`-separated |
//! | `PM_NODE_AGENTS` | agent socket of every node, `:`-separated |
//! | `PM_SECRET_FILE` | the job's 32-byte secret (readable by the user only): one file, or one per node, `:`-separated |
//! | `PM_RESTORE_EPOCH` | committed epoch to restore; 0 for a fresh start |
//! | `PM_FIRST_EPOCH` | lowest epoch number the run may write (default 1) |

use crate::PmError;
use pm_core::proto::FromRank;
use pm_core::wire::{JobSecret, Limits, Role, Session};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Where this rank runs, as `pmrun` arranged it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub store: PathBuf,
    pub socket: PathBuf,
    pub secret_file: PathBuf,
    pub restore_epoch: u64,
    /// The lowest epoch number this run may write: pmrun never lets a
    /// relaunched job reuse the number of an epoch an earlier run wrote.
    pub first_epoch: u64,
}

impl AgentConfig {
    /// The configuration of `rank`, or `None` when not run by `pmrun`.
    pub fn from_env(rank: u32) -> Result<Option<Self>, PmError> {
        Self::from_vars(|name| std::env::var(name).ok(), rank)
    }

    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        rank: u32,
    ) -> Result<Option<Self>, PmError> {
        let Some(map) = var("PM_NODE_MAP") else {
            return Ok(None);
        };
        let bad = |name: &'static str, value: &str, expected: &'static str| PmError::Config {
            var: name,
            value: value.to_owned(),
            expected,
        };
        let node: usize = map
            .split(',')
            .nth(rank as usize)
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| bad("PM_NODE_MAP", &map, "a node index for every rank"))?;
        let pick = |name: &'static str| -> Result<PathBuf, PmError> {
            let list = var(name).unwrap_or_default();
            list.split(':')
                .nth(node)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| bad(name, &list, "a path for every node of PM_NODE_MAP"))
        };
        let restore = var("PM_RESTORE_EPOCH").unwrap_or_else(|| "0".into());
        let first = var("PM_FIRST_EPOCH").unwrap_or_else(|| "1".into());
        Ok(Some(Self {
            store: pick("PM_NODE_STORES")?,
            socket: pick("PM_NODE_AGENTS")?,
            // One file for every node (agents on this machine), or one per
            // node (agents on other hosts write it where their ranks are).
            secret_file: {
                let list = var("PM_SECRET_FILE").unwrap_or_default();
                let files: Vec<&str> = list.split(':').collect();
                match files.as_slice() {
                    [one] if !one.is_empty() => PathBuf::from(one),
                    _ => pick("PM_SECRET_FILE")?,
                }
            },
            restore_epoch: restore
                .trim()
                .parse()
                .map_err(|_| bad("PM_RESTORE_EPOCH", &restore, "an epoch number"))?,
            first_epoch: first
                .trim()
                .parse()
                .map_err(|_| bad("PM_FIRST_EPOCH", &first, "an epoch number"))?,
        }))
    }
}

/// An authenticated connection to the node agent.
pub struct AgentLink {
    stream: UnixStream,
    session: Session,
}

impl AgentLink {
    /// Connects to the agent and introduces this rank.
    pub fn connect(cfg: &AgentConfig, rank: u32) -> Result<Self, PmError> {
        let unreachable = |what: String| PmError::Agent(what);
        let secret = std::fs::read(&cfg.secret_file).map_err(|e| {
            unreachable(format!(
                "cannot read the job's secret {}: {e}",
                cfg.secret_file.display()
            ))
        })?;
        let secret: [u8; 32] = secret.try_into().map_err(|_| {
            unreachable(format!(
                "the job's secret {} is not 32 bytes long",
                cfg.secret_file.display()
            ))
        })?;
        let mut stream = UnixStream::connect(&cfg.socket).map_err(|e| {
            unreachable(format!(
                "cannot connect to the node agent at {}: {e}",
                cfg.socket.display()
            ))
        })?;
        let peer = cfg.socket.display().to_string();
        let session = Session::connect(
            &mut stream,
            &JobSecret::from_bytes(secret),
            &peer,
            &format!("rank-{rank}"),
            Role::Rank,
            Limits::default(),
        )
        .map_err(|e| unreachable(e.to_string()))?;
        let mut link = Self { stream, session };
        link.send(&FromRank::Hello {
            rank,
            pid: std::process::id(),
        })?;
        Ok(link)
    }

    pub fn send(&mut self, msg: &FromRank) -> Result<(), PmError> {
        self.session
            .send(&mut NoSigpipe(&self.stream), msg)
            .map_err(|e| PmError::Agent(e.to_string()))
    }

    /// Sends `msg` only if the socket takes it now without waiting;
    /// `Ok(false)`: the agent is behind and nothing was sent. For reports
    /// that must never hold up a step (load), unlike `send`, whose
    /// messages the job cannot go on without.
    pub fn try_send(&mut self, msg: &FromRank) -> Result<bool, PmError> {
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout only looks.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            return Err(PmError::Agent(format!(
                "cannot poll the agent's socket: {e}"
            )));
        }
        // A Unix socket is writable while at most a quarter of its send
        // buffer is in use, far more room than one small frame needs, so
        // the write below does not wait. (An error or hang-up shows in
        // `revents` too: the write then reports it.)
        if fd.revents == 0 {
            return Ok(false);
        }
        self.send(msg).map(|()| true)
    }
}

/// Writes to the agent's socket with `MSG_NOSIGNAL`: a C or Fortran
/// program (which, unlike a Rust one, does not ignore SIGPIPE) whose agent
/// died gets an error to report instead of being killed by the signal.
struct NoSigpipe<'a>(&'a UnixStream);

impl Write for NoSigpipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is valid for `len` bytes; the fd is the stream's.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)], rank: u32) -> Result<Option<AgentConfig>, PmError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AgentConfig::from_vars(|k| map.get(k).cloned(), rank)
    }

    #[test]
    fn picks_the_ranks_node() {
        let vars = [
            ("PM_NODE_MAP", "0,0,1"),
            ("PM_NODE_STORES", "/s/a:/s/b"),
            ("PM_NODE_AGENTS", "/r/a.sock:/r/b.sock"),
            ("PM_SECRET_FILE", "/r/secret"),
            ("PM_RESTORE_EPOCH", "4"),
            ("PM_FIRST_EPOCH", "9"),
        ];
        assert_eq!(parse(&[], 0).unwrap(), None);
        let c = parse(&vars, 2).unwrap().unwrap();
        assert_eq!(c.store, PathBuf::from("/s/b"));
        assert_eq!(c.socket, PathBuf::from("/r/b.sock"));
        assert_eq!((c.restore_epoch, c.first_epoch), (4, 9));
        assert_eq!(c.secret_file, PathBuf::from("/r/secret"));
        // One secret file per node (agents on other hosts).
        let mut per_node = vars;
        per_node[3] = ("PM_SECRET_FILE", "/a/secret:/b/secret");
        let c = parse(&per_node, 2).unwrap().unwrap();
        assert_eq!(c.secret_file, PathBuf::from("/b/secret"));
        let err = parse(&vars, 3).unwrap_err().to_string();
        assert!(err.contains("PM_NODE_MAP"), "{err}");
        let short = [vars[0], ("PM_NODE_STORES", "/s/a"), vars[2], vars[3]];
        let err = parse(&short, 2).unwrap_err().to_string();
        assert!(err.contains("PM_NODE_STORES"), "{err}");
    }
}
