//! Watches the run's launcher for a hang after its ranks are gone. Open
//! MPI's mpirun can stay in its teardown forever once a rank died at the
//! wrong moment (in MPI_Init, or while mpirun aborts the job), and a
//! program without pm gives pmrun no other sign of its ranks. On this host
//! the launcher's ranks (or its remote shells) are its children: once it
//! had some, each change between having children and having none is
//! reported ([`Event::RunChildren`]); the core decides when a launcher left
//! alone hangs. A launcher whose ranks run elsewhere (srun) never has such
//! children, so it is never reported.

use super::job::Event;
use std::time::Duration;

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

/// Polls run `run`'s launcher `pid` every second until it is gone; `report`
/// gets an [`Event::RunChildren`] at its first child and at each change
/// after.
pub fn watch(run: u64, pid: u32, report: impl Fn(Event)) {
    let mut reported: Option<bool> = None;
    loop {
        std::thread::sleep(POLL);
        let Some(n) = children(pid) else { return };
        let any = n > 0;
        if reported != Some(any) && (any || reported.is_some()) {
            reported = Some(any);
            report(Event::RunChildren { run, any });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};
    use std::sync::mpsc;
    use std::time::Instant;

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

    /// What the watcher of `pid` reports within `within`.
    fn watched(pid: u32, within: Duration) -> Vec<bool> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            watch(7, pid, |e| {
                let _ = tx.send(e);
            })
        });
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Ok(e) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            match e {
                Event::RunChildren { run: 7, any } => seen.push(any),
                other => panic!("expected RunChildren for run 7, got {other:?}"),
            }
        }
        seen
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
    fn a_launcher_that_outlives_its_children_is_reported_with_them_then_alone() {
        // Its child ends after two seconds; it goes on alone.
        let sh = Group::start("sleep 2 & wait; exec sleep 60");
        assert_eq!(watched(sh.0.id(), Duration::from_secs(6)), [true, false]);
    }

    #[test]
    fn a_launcher_that_never_had_children_is_not_reported_and_one_that_keeps_them_once() {
        let alone = Group::start("exec sleep 60");
        let busy = Group::start("sleep 60 & wait");
        assert_eq!(
            watched(alone.0.id(), Duration::from_secs(4)),
            [] as [bool; 0]
        );
        assert_eq!(watched(busy.0.id(), Duration::from_secs(4)), [true]);
    }
}
