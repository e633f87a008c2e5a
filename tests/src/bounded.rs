//! Running commands with a time limit. A test must fail, never hang: a
//! command that does not end in time, or leaves processes holding its
//! output open after it ended, is killed with its whole process group and
//! the test panics with the output so far and the processes left.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a command of a test may run unless it says otherwise.
pub const LIMIT: Duration = Duration::from_secs(300);
/// How long a command's children may hold its output open after it ended
/// (agents notice their launcher is gone within a heartbeat or two).
const OUTLIVE: Duration = Duration::from_secs(20);

pub trait Bounded {
    /// [`Command::output`] within [`LIMIT`].
    fn bounded_output(&mut self) -> std::io::Result<Output> {
        self.output_within(LIMIT)
    }
    /// [`Command::output`] within `limit`, in a process group of its own.
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
    /// [`Command::spawn`] in a process group of its own, so that
    /// [`wait_output`] can end everything it started.
    fn spawn_grouped(&mut self) -> std::io::Result<Child>;
}

impl Bounded for Command {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_grouped()?;
        Ok(wait_output(child, limit, &describe(self)))
    }

    fn spawn_grouped(&mut self) -> std::io::Result<Child> {
        self.process_group(0).spawn()
    }
}

/// What a command is, for a panic message.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// [`Child::wait_with_output`] within `limit` for a child started with
/// [`Bounded::spawn_grouped`] (its stdout and stderr piped, or not).
pub fn wait_output(mut child: Child, limit: Duration, what: &str) -> Output {
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let group = child.id() as i32;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let left = processes_of_group(group);
            kill_group(group);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{what}` did not end within {} s; killed it and its process group.\n\
                 Its processes:\n{left}\nIts output:\n{}",
                limit.as_secs(),
                joined(out, err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let outlive = Instant::now() + OUTLIVE;
    while !(out.is_finished() && err.is_finished()) {
        if Instant::now() > outlive {
            let left = processes_of_group(group);
            kill_group(group);
            panic!(
                "`{what}` ended ({status}) but processes it started still hold its output \
                 {} s later:\n{left}\nIts output:\n{}",
                OUTLIVE.as_secs(),
                joined(out, err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// [`Child::wait`] within `limit`; on time out the child (and its group,
/// if it was started with [`Bounded::spawn_grouped`]) is killed and the test
/// panics.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let group = child.id() as i32;
            let left = processes_of_group(group);
            kill_group(group);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{what}` did not end within {} s; killed it.\nIts processes:\n{left}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn joined(out: JoinHandle<Vec<u8>>, err: JoinHandle<Vec<u8>>) -> String {
    // The readers end once the group is killed.
    let text = |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap()).into_owned();
    format!("{}{}", text(out), text(err))
}

/// SIGKILLs every process of a process group.
pub fn kill_group(group: i32) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names
    // the group the test started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// `ps` lines of the processes of a group (for a panic message).
pub fn processes_of_group(group: i32) -> String {
    let ps = Command::new("ps")
        .args(["-eo", "pid,ppid,pgid,stat,etimes,wchan:24,args"])
        .output();
    match ps {
        Ok(ps) => {
            let text = String::from_utf8_lossy(&ps.stdout).into_owned();
            let mut lines = text.lines();
            let head = lines.next().unwrap_or_default().to_owned();
            let own: Vec<&str> = lines
                .filter(|l| l.split_whitespace().nth(2) == Some(&group.to_string()))
                .collect();
            format!("{head}\n{}", own.join("\n"))
        }
        Err(e) => format!("(ps failed: {e})"),
    }
}

/// Calls `f` every 100 ms until it gives a value, for at most `limit`;
/// past that, panics with `failure()` (say what was awaited, and why it
/// matters). Every wait of the tests is bounded this way.
pub fn poll_until<T>(
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    failure: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "after {} s: {}",
            limit.as_secs(),
            failure()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_ends_within_its_limit_with_its_output() {
        let out = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output_within(Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    #[should_panic(expected = "did not end within 1 s")]
    fn a_command_over_its_limit_is_killed_with_its_children() {
        let _ = Command::new("sh")
            .args(["-c", "sleep 60 & sleep 60"])
            .output_within(Duration::from_secs(1));
    }
}
