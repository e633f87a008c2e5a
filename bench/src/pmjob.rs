//! What the scenarios that run heat under `pmrun` share: the binaries next
//! to pmbench, the MPI environment, the undisturbed reference run, a job's
//! `ctl status`, and a pmrun under way whose output is collected.

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where pmbench's sibling binaries are: the same profile's target directory.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(
        path.exists(),
        "{} not found: build it next to pmbench with `cargo build --release -p heat -p pm-launcher` \
         (or the profile pmbench was built with)",
        path.display()
    );
    Ok(path)
}

/// pmrun, heat, and a check that pmd is there too.
pub struct Bins {
    pub pmrun: PathBuf,
    pub heat: PathBuf,
}

impl Bins {
    pub fn find() -> anyhow::Result<Bins> {
        sibling("pmd")?;
        Ok(Bins {
            pmrun: sibling("pmrun")?,
            heat: sibling("heat")?,
        })
    }
}

/// Root may run mpirun, ranks may outnumber cores, and every run starts
/// without the history of earlier runs.
pub fn mpi_env(cmd: &mut Command) -> &mut Command {
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("PM_HISTORY", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
}

/// heat's arguments: a `rows` × `cols` plate, `steps` steps, and a sleep
/// of `pause_ms` in each (0: none).
pub fn heat_args(rows: u64, cols: u64, steps: u64, pause_ms: u64) -> Vec<String> {
    let mut args = vec![
        "--rows".to_string(),
        rows.to_string(),
        "--cols".into(),
        cols.to_string(),
        "--steps".into(),
        steps.to_string(),
    ];
    if pause_ms > 0 {
        args.extend(["--pause-ms".into(), pause_ms.to_string()]);
    }
    args
}

/// The checksum heat prints at its end.
pub fn checksum(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        l.strip_prefix("heat: checksum ")
            .and_then(|r| r.split_whitespace().next())
            .map(String::from)
    })
}

/// heat under plain mpirun without pm; returns its output.
pub fn plain_heat(ranks: u32, heat: &Path, heat_args: &[String]) -> anyhow::Result<String> {
    let out = mpi_env(&mut Command::new("mpirun"))
        .args(["-n", &ranks.to_string()])
        .arg(heat)
        .args(heat_args)
        .arg("--no-pm")
        .output()
        .context("cannot run mpirun (is Open MPI installed?)")?;
    let text = crate::util::output_text(&out);
    ensure!(out.status.success(), "plain mpirun heat failed:\n{text}");
    Ok(text)
}

/// `pmrun ctl status --json` of a job, or None while it cannot be reached.
pub fn status(pmrun: &Path, store: &Path, job: &str) -> Option<Value> {
    let out = Command::new(pmrun)
        .args(["ctl", "--store"])
        .arg(store)
        .args(["--job", job, "status", "--json"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The 1-minute load average (Linux): on a shared machine, a high one
/// explains outliers.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn reader(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A pmrun under way, its output collected in the background; stopped
/// (SIGTERM, then SIGKILL) if dropped before it ended.
pub struct Job {
    pub child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Job {
    /// Starts `cmd` with its output collected.
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Job> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start pmrun")?;
        let out = child.stdout.take().map(reader);
        let err = child.stderr.take().map(reader);
        Ok(Job { child, out, err })
    }

    /// Waits for pmrun to exit (at most until `deadline`); returns whether it
    /// succeeded and everything it and the ranks printed.
    pub fn finish(&mut self, deadline: Instant) -> anyhow::Result<(bool, String)> {
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let text = self.output_after_stop();
                bail!("pmrun did not finish in time; stopped it:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok((status.success(), self.output()))
    }

    /// SIGTERM (pmrun then stops its job and agents), SIGKILL if that does not do.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Everything printed so far, once pmrun was stopped.
    pub fn output_after_stop(&mut self) -> String {
        self.stop();
        self.output()
    }

    /// Everything printed (pmrun must have ended).
    pub fn output(&mut self) -> String {
        let out = self.out.take().map(|h| h.join().unwrap_or_default());
        let err = self.err.take().map(|h| h.join().unwrap_or_default());
        format!("{}{}", out.unwrap_or_default(), err.unwrap_or_default())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.stop();
    }
}
