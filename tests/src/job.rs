//! A heat job under the real `pmrun` on virtual nodes, observed through
//! `pmrun ctl status --json` and disturbed the way nodes fail: the node's
//! agent and ranks SIGKILLed.

use crate::bounded::{Bounded, kill_group, processes_of_group};
use crate::mpi::{checksum, mpirun, sigkill, text, workspace_bin};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The plate every node test computes.
pub const GRID: [&str; 6] = ["--rows", "96", "--cols", "64", "--steps", "300"];

/// heat's arguments under pmrun: the plate, slowed to about 6 s.
pub fn heat_args(pause_ms: u32) -> Vec<String> {
    let mut args: Vec<String> = GRID.iter().map(|s| s.to_string()).collect();
    args.extend(["--pause-ms".into(), pause_ms.to_string()]);
    args
}

/// The checksum of an undisturbed heat run of [`GRID`] on `ranks` ranks.
pub fn reference(ranks: u32) -> String {
    let out = mpirun(ranks)
        .arg(workspace_bin("heat"))
        .args(GRID)
        .arg("--no-pm")
        .bounded_output()
        .unwrap();
    checksum(&text(&out)).expect("reference checksum")
}

/// `pmrun` as the tests run it (as root, on two cores).
pub fn pmrun() -> Command {
    let mut cmd = Command::new(workspace_bin("pmrun"));
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Each test starts without the history of earlier runs.
        .env("PM_HISTORY", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env_remove("PM_STORE");
    cmd
}

/// The `pmrun` command line of [`Job::start_app`] (the same again
/// resumes the job).
pub fn command(store: &Path, id: &str, args: &[&str], app: &Path, app_args: &[String]) -> Command {
    let mut cmd = pmrun();
    cmd.arg("--store")
        .arg(store)
        .args([
            "--job",
            id,
            "--heartbeat",
            "0.2",
            "--fail-after",
            "2.5",
            "-v",
        ])
        .args(args)
        .arg(app)
        .args(app_args);
    cmd
}

pub struct Job {
    store: Option<tempfile::TempDir>,
    pub id: String,
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// How a job ended.
pub struct Ended {
    pub status: ExitStatus,
    pub output: String,
}

impl Job {
    /// Starts `pmrun <args> heat <heat_args>` with fast heartbeats, in a
    /// fresh store under /dev/shm.
    pub fn start(id: &str, args: &[&str], heat_args: &[String], env: &[(&str, &str)]) -> Job {
        Self::start_app(id, args, &workspace_bin("heat"), heat_args, env)
    }

    /// Starts `pmrun <args> <app> <app_args>` like [`Job::start`].
    pub fn start_app(
        id: &str,
        args: &[&str],
        app: &Path,
        app_args: &[String],
        env: &[(&str, &str)],
    ) -> Job {
        let store = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut cmd = command(store.path(), id, args, app, app_args);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn_grouped().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut pipe in pipes {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Job {
            store: Some(store),
            id: id.to_owned(),
            child,
            output,
            readers,
        }
    }

    pub fn store_path(&self) -> &Path {
        self.store
            .as_ref()
            .expect("the store lives as long as the job")
            .path()
    }

    /// The process id of `pmrun` itself.
    pub fn pmrun_pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// `pmrun ctl <args>` for this job: exit status and output.
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = pmrun()
            .arg("ctl")
            .arg("--store")
            .arg(self.store_path())
            .args(["--job", &self.id])
            .args(args)
            .bounded_output()
            .unwrap();
        (out.status.success(), text(&out))
    }

    pub fn status(&self) -> Option<Value> {
        let (ok, out) = self.ctl(&["status", "--json"]);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    }

    /// Polls the job's status until `pred` holds (or fails the test after a minute).
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited a minute for {what}; output so far:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every one of `ranks` ranks has reached its agent.
    pub fn wait_for_ranks(&self, ranks: usize) -> Value {
        self.wait_for("every rank to start", |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["rank_pids"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                == ranks
        })
    }

    /// Waits until an epoch is committed; its number.
    pub fn wait_for_commit(&self, at_least: u64) -> u64 {
        let s = self.wait_for(&format!("epoch {at_least} to commit"), |s| {
            committed_epoch(s).is_some_and(|e| e >= at_least)
        });
        committed_epoch(&s).unwrap()
    }

    /// SIGKILLs a virtual node: its agent and its ranks (those still
    /// alive: once another node is lost, pmrun may have ended them).
    pub fn kill_node(&self, status: &Value, name: &str) {
        let node = node(status, name);
        sigkill(node["agent_pid"].as_u64().unwrap() as u32);
        for pid in node["rank_pids"].as_array().unwrap() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid.as_u64().unwrap() as i32, libc::SIGKILL) };
        }
    }

    /// Waits for pmrun to end.
    pub fn finish(mut self) -> (Ended, tempfile::TempDir) {
        let deadline = Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let left = processes_of_group(self.group());
                kill_group(self.group());
                panic!(
                    "the job did not end within 3 minutes; killed it and its process group.\n\
                     Its processes:\n{left}\nIts output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Agents notice their launcher is gone within a heartbeat or two.
        let outlive = Instant::now() + Duration::from_secs(20);
        while !self.readers.iter().all(JoinHandle::is_finished) {
            if Instant::now() > outlive {
                let left = processes_of_group(self.group());
                kill_group(self.group());
                panic!(
                    "pmrun ended ({status}) but processes it started still hold its output \
                     20 s later:\n{left}\nIts output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let output = self.output();
        let store = self.store.take().expect("finished once");
        (Ended { status, output }, store)
    }
}

impl Job {
    /// pmrun's process group: pmrun and whatever it started.
    fn group(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Job {
    /// Whatever the test's outcome, nothing the job started lives on.
    fn drop(&mut self) {
        if self.store.is_some() {
            kill_group(self.group());
            let _ = self.child.wait();
        }
    }
}

/// The committed epoch of job `job` under `store`, asked with `pmrun ctl`
/// (for jobs the test did not start itself: batch jobs).
pub fn committed_epoch_of(store: &Path, job: &str) -> Option<u64> {
    let out = pmrun()
        .args(["ctl", "status", "--json", "--job", job, "--store"])
        .arg(store)
        .bounded_output()
        .ok()?;
    let status: Value = serde_json::from_slice(&out.stdout).ok()?;
    committed_epoch(&status)
}

pub fn committed_epoch(status: &Value) -> Option<u64> {
    status["committed"]["epoch"].as_u64()
}

pub fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {status}"))
}

/// Names of the nodes ranks are placed on.
pub fn placement(status: &Value) -> Vec<String> {
    status["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The epoch pmrun said it relaunched from, for every relaunch.
pub fn relaunch_epochs(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| {
            l.split("relaunching from the committed checkpoint (epoch ")
                .nth(1)
        })
        .filter_map(|rest| rest.split(',').next()?.parse().ok())
        .collect()
}

/// Every file left under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
