//! Launch backends: how the ranks of a plan are started. `mpirun` (Open MPI)
//! today; `srun` inside a Slurm allocation is the next one.

use crate::hosts::Host;
use std::path::PathBuf;
use std::process::Command;

/// Everything a backend needs to start the job once.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub ranks: u32,
    pub hosts: Vec<Host>,
    /// The application and its arguments, passed through untouched.
    pub app: Vec<String>,
    /// Variables every rank gets (`PM_*` and `-x`).
    pub env: Vec<(String, String)>,
}

impl LaunchPlan {
    pub fn slots(&self) -> u64 {
        self.hosts.iter().map(|h| u64::from(h.slots)).sum()
    }
}

pub trait LaunchBackend {
    fn name(&self) -> &'static str;
    /// The command that starts every rank of `plan`.
    fn command(&self, plan: &LaunchPlan) -> Command;
}

/// Open MPI's `mpirun`.
pub struct Mpirun {
    pub program: PathBuf,
}

impl LaunchBackend for Mpirun {
    fn name(&self) -> &'static str {
        "mpirun"
    }

    fn command(&self, plan: &LaunchPlan) -> Command {
        let mut cmd = Command::new(&self.program);
        let hosts: Vec<String> = plan
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.name, h.slots))
            .collect();
        cmd.args(["-n", &plan.ranks.to_string(), "--host", &hosts.join(",")]);
        if u64::from(plan.ranks) > plan.slots() {
            cmd.arg("--oversubscribe");
        }
        for (name, value) in &plan.env {
            cmd.env(name, value).args(["-x", name]);
        }
        cmd.args(&plan.app);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mpirun_command_carries_ranks_hosts_env_and_app_untouched() {
        let plan = LaunchPlan {
            ranks: 6,
            hosts: vec![
                Host {
                    name: "a".into(),
                    slots: 2,
                },
                Host {
                    name: "b".into(),
                    slots: 2,
                },
            ],
            app: vec!["./heat".into(), "--steps".into(), "-1 weird arg".into()],
            env: vec![("PM_JOB".into(), "j".into())],
        };
        let cmd = Mpirun {
            program: "mpirun".into(),
        }
        .command(&plan);
        assert_eq!(
            args(&cmd),
            [
                "-n",
                "6",
                "--host",
                "a:2,b:2",
                "--oversubscribe",
                "-x",
                "PM_JOB",
                "./heat",
                "--steps",
                "-1 weird arg"
            ]
        );
        assert!(
            cmd.get_envs()
                .any(|(k, v)| k == "PM_JOB" && v == Some("j".as_ref()))
        );
        let fits = LaunchPlan { ranks: 4, ..plan };
        assert!(
            !args(
                &Mpirun {
                    program: "mpirun".into()
                }
                .command(&fits)
            )
            .contains(&"--oversubscribe".to_string())
        );
    }
}
