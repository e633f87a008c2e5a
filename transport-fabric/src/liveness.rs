//! Whether a `shm` peer's process still exists.
//!
//! libfabric 1.17's `shm` provider posts a request by taking a spinlock in
//! the *target's* shared region. A target SIGKILLed while holding it leaves
//! it held forever, and every later post to that peer spins in `fi_read`
//! without end: no deadline of ours can end a call that never returns. So
//! before each post to a `shm` peer the backend asks whether the process
//! behind its name (`fi_shm://<pid>:<n>`) has exited, and fails the transfer
//! instead. A peer that dies while a post already spins is not covered: that
//! is the provider's limitation, written in `docs/architecture.md`.

use crate::addr::FabricAddr;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::OwnedFd;
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use rustix::time::Timespec;

/// A handle on one peer process, taken while it was known to be alive
/// (when its address was first resolved). A pidfd names that very process,
/// so a recycled pid cannot pass for it.
pub(crate) struct PeerProcess(OwnedFd);

impl PeerProcess {
    /// A handle on the process behind a `shm` peer's address, or `None`
    /// when it cannot be watched: the address is not a `shm` one, the
    /// kernel lacks pidfds, or the process with the address's pid (in this
    /// pid namespace) does not map the peer's region `/dev/shm/<name>`, so
    /// it is not the peer. Without a handle, posts go ahead unchecked.
    pub fn watch(peer: &FabricAddr) -> Option<Self> {
        let region = peer.shm_region()?;
        let pid = peer.shm_pid()?;
        let fd = pidfd_open(
            Pid::from_raw(i32::try_from(pid).ok()?)?,
            PidfdFlags::empty(),
        )
        .ok()?;
        // Opened first, checked second: the maps then belong to the
        // process the pidfd names (or it has exited, and is not watched).
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let path = format!("/dev/shm/{region}");
        maps.lines().any(|l| l.ends_with(&path)).then_some(Self(fd))
    }

    /// Whether the process has exited (a zombie has: it holds no locks
    /// any more and will never release one).
    pub fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // An error leaves the answer to the provider, as without a handle.
        matches!(poll(&mut fds, Some(&now)), Ok(n) if n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FabricOptions, FabricTransport, providers};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const CHILD_ENV: &str = "PM_LIVENESS_CHILD";

    fn shm_name(pid: u32) -> FabricAddr {
        FabricAddr::from_bytes(format!("fi_shm://{pid}:0:0").into_bytes())
    }

    /// In the child only: a `shm` endpoint that prints its address.
    #[test]
    #[ignore = "the child of an_exited_peer_is_seen_even_before_it_is_reaped"]
    fn child_endpoint() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let t = FabricTransport::open(Some("shm"), FabricOptions::default()).unwrap();
        let name: String = t
            .address()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!("ADDR {name}");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn an_exited_peer_is_seen_even_before_it_is_reaped() {
        if !providers(None).is_ok_and(|p| p.iter().any(|p| p == "shm")) {
            eprintln!("skipped: libfabric offers no shm provider here");
            return;
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "liveness::tests::child_endpoint",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let addr = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.find("ADDR ").map(|i| l[i + 5..].to_owned()))
            .expect("the child endpoint did not start");
        let bytes = (0..addr.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&addr[i..i + 2], 16).unwrap())
            .collect();
        let peer = FabricAddr::from_bytes(bytes);
        assert_eq!(peer.shm_pid(), Some(child.id()), "{peer}");
        let watched = PeerProcess::watch(&peer).expect("a live shm peer is watched");
        assert!(!watched.has_exited());
        child.kill().unwrap();
        // A zombie until waited for, and already exited.
        let start = Instant::now();
        while !watched.has_exited() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "a killed peer never showed as exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(watched.has_exited());
    }

    #[test]
    fn a_process_that_does_not_map_the_region_is_not_watched() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(PeerProcess::watch(&shm_name(child.id())).is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn addresses_without_a_live_pid_are_not_watched() {
        assert!(PeerProcess::watch(&shm_name(u32::MAX)).is_none());
        assert!(PeerProcess::watch(&shm_name(0)).is_none());
        let mut sin = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
        sin.extend([0; 8]);
        assert!(PeerProcess::watch(&FabricAddr::from_bytes(sin)).is_none());
    }
}
