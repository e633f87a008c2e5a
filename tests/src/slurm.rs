//! A real Slurm test cluster for the tests, started with the project's own
//! `slurm/cluster.sh` in a directory of its own (its own munged, slurmctld
//! and slurmd per node), stopped when dropped: the tests never talk to a
//! Slurm they did not start.

use crate::bounded::Bounded;
use crate::mpi::{repo_root, text};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

/// How a batch job ended.
pub struct BatchEnd {
    pub state: String,
    pub exit_code: String,
    pub output: String,
}

impl Cluster {
    /// Starts a cluster of `nodes` nodes (n1, n2, ...; 127.0.0.2, ...) whose
    /// slurmctld listens on `port` and node k on `port + k`.
    pub fn start(nodes: u32, port: u16) -> Cluster {
        Self::launch(nodes, port, None)
    }

    /// [`Cluster::start`] with a SPANK plugin in plugstack.conf
    /// (`required <plugin> <args>`), e.g. pmrun's `libpm_slurm.so`.
    pub fn start_with_plugin(nodes: u32, port: u16, plugin: &Path, args: &str) -> Cluster {
        Self::launch(nodes, port, Some((plugin, args)))
    }

    fn launch(nodes: u32, port: u16, plugin: Option<(&Path, &str)>) -> Cluster {
        for tool in ["slurmctld", "slurmd", "munged", "sbatch"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .bounded_output()
                    .unwrap()
                    .status
                    .success(),
                "{tool} is not installed: `make test` installs slurm-wlm and munge"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let mut start = Command::new(repo_root().join("slurm/cluster.sh"));
        start
            .arg("start")
            .arg(dir.path())
            .env("PM_SLURM_NODES", nodes.to_string())
            .env("PM_SLURM_PORT", port.to_string());
        if let Some((plugin, args)) = plugin {
            start
                .env("PM_SLURM_PLUGIN", plugin)
                .env("PM_SLURM_PLUGIN_ARGS", args);
        }
        let out = start.output_within(Duration::from_secs(120)).unwrap();
        let conf = dir.path().join("etc/slurm.conf");
        let cluster = Cluster { dir, conf };
        assert!(
            out.status.success(),
            "the test cluster did not start:\n{}",
            text(&out)
        );
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A Slurm client command (sbatch, squeue, scontrol, ...) of this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Submits `script` (a bash script body) with `args`; the job id.
    pub fn sbatch(&self, args: &[&str], script: &str) -> String {
        let path = self.dir().join(format!("job-{}.sh", script.len()));
        std::fs::write(&path, format!("#!/bin/bash\n{script}")).unwrap();
        let out = self
            .command("sbatch")
            .arg("--parsable")
            .arg(format!("--output={}/slurm-%j.out", self.dir().display()))
            .args(args)
            .arg(&path)
            .bounded_output()
            .unwrap();
        assert!(out.status.success(), "sbatch failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `scontrol show job -o ID` as key=value pairs, or None once forgotten.
    fn job_fields(&self, id: &str) -> Option<Vec<(String, String)>> {
        let out = self
            .command("scontrol")
            .args(["show", "job", "-o", id])
            .bounded_output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Job `id`'s state (`PENDING`, `RUNNING`, ...), empty once forgotten.
    pub fn job_state(&self, id: &str) -> String {
        self.job_fields(id)
            .unwrap_or_default()
            .into_iter()
            .find(|(k, _)| k == "JobState")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// Waits (up to `limit`) for batch job `id` to end.
    pub fn wait(&self, id: &str, limit: Duration) -> BatchEnd {
        let deadline = Instant::now() + limit;
        let output = || {
            std::fs::read_to_string(self.dir().join(format!("slurm-{id}.out"))).unwrap_or_default()
        };
        loop {
            let fields = self.job_fields(id).unwrap_or_default();
            let field = |k: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let state = field("JobState");
            if !state.is_empty()
                && !matches!(
                    state.as_str(),
                    "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
                )
            {
                return BatchEnd {
                    state,
                    exit_code: field("ExitCode"),
                    output: output(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "batch job {id} did not end within {} s (state {state:?}); its output:\n{}\n{}",
                limit.as_secs(),
                output(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (up to `secs`) for batch job `id`, which must complete with
    /// status 0; its output.
    pub fn completed(&self, id: &str, secs: u64) -> String {
        let end = self.wait(id, Duration::from_secs(secs));
        assert_eq!(
            (end.state.as_str(), end.exit_code.as_str()),
            ("COMPLETED", "0:0"),
            "{}\n{}",
            end.output,
            self.logs()
        );
        end.output
    }

    /// A power cut of node `name`: its slurmd, slurmstepds and tasks
    /// SIGKILLed (`slurm/cluster.sh kill-node`).
    pub fn kill_node(&self, name: &str) {
        let out = Command::new(repo_root().join("slurm/cluster.sh"))
            .args(["kill-node", name])
            .arg(self.dir())
            .bounded_output()
            .unwrap();
        assert!(out.status.success(), "kill-node {name}:\n{}", text(&out));
    }

    /// The ends of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir().join("log")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                all.push_str(&format!(
                    "== {}\n{}\n",
                    e.path().display(),
                    lines[lines.len().saturating_sub(10)..].join("\n")
                ));
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("slurm/cluster.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .output_within(Duration::from_secs(60));
    }
}
