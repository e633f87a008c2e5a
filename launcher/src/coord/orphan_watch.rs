//! Notices a launcher that hangs after its ranks are gone. Open MPI's
//! mpirun can stay in its teardown forever once a rank died at the wrong
//! moment (in MPI_Init, or while mpirun aborts the job), and a program
//! without pm gives pmrun no other sign of its ranks. On this host the
//! launcher's ranks (or its remote shells) are its children: once it had
//! some and has had none for [`ORPHAN_AFTER`], the core is told
//! ([`Event::RunOrphaned`]). A launcher whose ranks run elsewhere (srun)
//! never has such children, so it is never reported.

use super::job::Event;
use std::time::{Duration, Instant};

/// How long a launcher may outlive its last child before it counts as hung:
/// mpirun ends within a second of its last rank when it does not hang.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_secs(1);

/// The number of child processes of `pid`, from each of its threads'
/// `/proc/<pid>/task/<tid>/children`; `None` once the process is gone or
/// when the kernel does not list children.
pub fn children(pid: u32) -> Option<usize> {
    let mut count = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let list = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        count += list.split_whitespace().count();
    }
    Some(count)
}

/// Watches run `run`'s launcher `pid` until it is gone or has been
/// childless for `after`; `report` gets the [`Event::RunOrphaned`] once.
pub fn watch(run: u64, pid: u32, after: Duration, report: impl Fn(Event)) {
    let mut had_children = false;
    let mut childless_since: Option<Instant> = None;
    loop {
        std::thread::sleep(POLL);
        let Some(n) = children(pid) else { return };
        let now = Instant::now();
        if n > 0 {
            had_children = true;
            childless_since = None;
            continue;
        }
        if !had_children {
            continue;
        }
        let since = *childless_since.get_or_insert(now);
        if now - since >= after {
            return report(Event::RunOrphaned {
                run,
                idle: now - since,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::sync::mpsc;

    /// `sh -c script` in a process group of its own, killed whole on drop.
    struct Group(Child);

    impl Group {
        fn start(script: &str) -> Group {
            let child = Command::new("sh")
                .args(["-c", script])
                .process_group(0)
                .spawn()
                .unwrap();
            Group(child)
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: kill has no memory-safety preconditions; the group
            // is this test's own.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }

    fn watched(pid: u32, within: Duration) -> Option<Event> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || watch(7, pid, Duration::from_secs(1), |e| tx.send(e).unwrap()));
        rx.recv_timeout(within).ok()
    }

    #[test]
    fn counts_the_children_of_a_live_process_and_none_of_a_gone_one() {
        let mut sh = Group::start("sleep 30 & sleep 30 & wait");
        let pid = sh.0.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while children(pid) != Some(2) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(children(pid), Some(2));
        sh.0.kill().unwrap();
        sh.0.wait().unwrap();
        assert_eq!(children(pid), None);
    }

    #[test]
    fn a_launcher_that_outlives_its_children_is_reported_once() {
        // Its child ends after a second; it goes on alone.
        let sh = Group::start("sleep 1 & wait; exec sleep 60");
        match watched(sh.0.id(), Duration::from_secs(20)) {
            Some(Event::RunOrphaned { run: 7, idle }) => assert!(idle >= Duration::from_secs(1)),
            other => panic!("expected RunOrphaned for run 7, got {other:?}"),
        }
    }

    #[test]
    fn a_launcher_that_never_had_children_or_keeps_them_is_not_reported() {
        let alone = Group::start("exec sleep 60");
        let busy = Group::start("sleep 60 & wait");
        assert_eq!(watched(alone.0.id(), Duration::from_secs(4)), None);
        assert_eq!(watched(busy.0.id(), Duration::from_secs(4)), None);
    }
}
