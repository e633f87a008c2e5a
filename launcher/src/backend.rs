//! Launch backends: how the ranks of a plan are started. `mpirun` (Open MPI)
//! today; `srun` inside a Slurm allocation is the next one.

use crate::hosts::Host;
use std::path::PathBuf;
use std::process::Command;

/// Everything a backend needs to start the job once: which ranks run on
/// which host (any rank→host map the coordinator chose).
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub ranks: u32,
    /// Each host with its slots and the ranks it runs, in rank order.
    pub hosts: Vec<(Host, Vec<u32>)>,
    /// The application and its arguments, passed through untouched.
    pub app: Vec<String>,
    /// Variables every rank gets (`PM_*` and `-x`).
    pub env: Vec<(String, String)>,
}

impl LaunchPlan {
    /// A plan from the host of every rank.
    pub fn new(rank_hosts: &[&Host], app: Vec<String>, env: Vec<(String, String)>) -> LaunchPlan {
        let mut hosts: Vec<(Host, Vec<u32>)> = Vec::new();
        for (r, host) in rank_hosts.iter().enumerate() {
            match hosts.iter_mut().find(|(h, _)| h.name == host.name) {
                Some((_, ranks)) => ranks.push(r as u32),
                None => hosts.push(((*host).clone(), vec![r as u32])),
            }
        }
        LaunchPlan {
            ranks: rank_hosts.len() as u32,
            hosts,
            app,
            env,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "{backend} places ranks on hosts in blocks of consecutive ranks; host {host} gets ranks {ranks:?}"
    )]
    Unmappable {
        backend: &'static str,
        host: String,
        ranks: Vec<u32>,
    },
    #[error("cannot write the hostfile {path}: {source}")]
    Hostfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub trait LaunchBackend {
    fn name(&self) -> &'static str;
    /// The command that starts every rank of `plan` where the plan says.
    fn command(&self, plan: &LaunchPlan) -> Result<Command, LaunchError>;
    /// Whether, once a node is lost, the command waits for that node's
    /// ranks before it ends (srun does, for its KillWait + 2 s).
    fn lingers_after_node_loss(&self) -> bool {
        false
    }
}

/// The PMIx setting that chooses how mpirun's PMIx server stores job data.
pub const PMIX_GDS: &str = "PMIX_MCA_gds";

/// Open MPI's `mpirun`.
pub struct Mpirun {
    pub program: PathBuf,
}

impl LaunchBackend for Mpirun {
    fn name(&self) -> &'static str {
        "mpirun"
    }

    fn command(&self, plan: &LaunchPlan) -> Result<Command, LaunchError> {
        let mut cmd = Command::new(&self.program);
        let hosts: Vec<String> = match plan.hosts.as_slice() {
            // One host: offer its slots, so that mpirun oversubscribes
            // (and waiting ranks yield) when ranks outnumber them.
            [(host, _)] => vec![format!("{}:{}", host.name, host.slots)],
            // Several: mpirun fills hosts in order, so each host's ranks
            // must be the next block; it gets exactly that many slots.
            many => {
                let mut next = 0;
                for (host, ranks) in many {
                    if ranks.iter().enumerate().any(|(i, &r)| r != next + i as u32) {
                        return Err(LaunchError::Unmappable {
                            backend: "mpirun",
                            host: host.name.clone(),
                            ranks: ranks.clone(),
                        });
                    }
                    next += ranks.len() as u32;
                }
                many.iter()
                    .map(|(h, ranks)| format!("{}:{}", h.name, ranks.len()))
                    .collect()
            }
        };
        cmd.args(["-n", &plan.ranks.to_string(), "--host", &hosts.join(",")]);
        let slots: u64 = plan.hosts.iter().map(|(h, _)| u64::from(h.slots)).sum();
        if plan.hosts.len() == 1 && u64::from(plan.ranks) > slots {
            cmd.arg("--oversubscribe");
        }
        for (name, value) in &plan.env {
            cmd.env(name, value).args(["-x", name]);
        }
        // Open MPI 4.1's PMIx server keeps job data in shared memory behind
        // a lock its clients take; a rank killed while it holds that lock
        // (in MPI_Init, say) leaves mpirun hung in its finalize forever
        // (openpmix#1233; seen here in 1 run of 8 under load). The hash
        // store has no shared lock. A user's own choice wins.
        if std::env::var_os(PMIX_GDS).is_none() {
            cmd.env(PMIX_GDS, "hash");
        }
        cmd.args(&plan.app);
        Ok(cmd)
    }
}

/// Slurm's `srun`, inside an allocation: every rank on the node the plan
/// says (`--distribution=arbitrary` with a `SLURM_HOSTFILE` of one node
/// per rank, in rank order), MPI through PMIx. The step overlaps the
/// agents' steps and may put more ranks on a node than it has CPUs
/// allocated (`--overcommit`), as mpirun's `--oversubscribe` does;
/// `--kill-on-bad-exit` ends every rank when one dies, so the step ends
/// and pmrun recovers.
pub struct Srun {
    pub program: PathBuf,
    /// Where the hostfile of each launch is written (pmrun's run directory).
    pub hostfile: PathBuf,
}

impl LaunchBackend for Srun {
    fn name(&self) -> &'static str {
        "srun"
    }

    fn lingers_after_node_loss(&self) -> bool {
        true
    }

    fn command(&self, plan: &LaunchPlan) -> Result<Command, LaunchError> {
        let mut by_rank: Vec<&str> = vec![""; plan.ranks as usize];
        for (host, ranks) in &plan.hosts {
            for &r in ranks {
                by_rank[r as usize] = &host.name;
            }
        }
        let mut text = by_rank.join("\n");
        text.push('\n');
        std::fs::write(&self.hostfile, text).map_err(|e| LaunchError::Hostfile {
            path: self.hostfile.clone(),
            source: e,
        })?;
        let mut cmd = Command::new(&self.program);
        cmd.args([
            "--overlap",
            "--overcommit",
            "--kill-on-bad-exit=1",
            "--distribution=arbitrary",
            "--ntasks",
            &plan.ranks.to_string(),
        ]);
        // A user's own choice (SLURM_MPI_TYPE, or MpiDefault) would not
        // reach the ranks' PMIx otherwise.
        if std::env::var_os("SLURM_MPI_TYPE").is_none() {
            cmd.arg("--mpi=pmix");
        }
        cmd.env("SLURM_HOSTFILE", &self.hostfile);
        // srun passes its whole environment to the ranks.
        for (name, value) in &plan.env {
            cmd.env(name, value);
        }
        cmd.args(&plan.app);
        Ok(cmd)
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

    fn host(name: &str, slots: u32) -> Host {
        Host {
            name: name.into(),
            slots,
        }
    }

    #[test]
    fn one_host_is_offered_its_slots_and_oversubscribed_when_needed() {
        let here = host("a", 2);
        let plan = LaunchPlan::new(
            &[&here; 6],
            vec!["./heat".into(), "--steps".into(), "-1 weird arg".into()],
            vec![("PM_JOB".into(), "j".into())],
        );
        let mpirun = Mpirun {
            program: "mpirun".into(),
        };
        let cmd = mpirun.command(&plan).unwrap();
        assert_eq!(
            args(&cmd),
            [
                "-n",
                "6",
                "--host",
                "a:2",
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
        // The PMIx store that a killed rank cannot leave locked, unless
        // the user chose one.
        if std::env::var_os(PMIX_GDS).is_none() {
            assert!(
                cmd.get_envs()
                    .any(|(k, v)| k == PMIX_GDS && v == Some("hash".as_ref()))
            );
        }
        let fits = LaunchPlan::new(&[&here; 2], vec!["./a".into()], vec![]);
        assert!(!args(&mpirun.command(&fits).unwrap()).contains(&"--oversubscribe".to_string()));
    }

    #[test]
    fn srun_places_every_rank_through_its_hostfile() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host("n1", 2), host("n2", 2));
        let srun = Srun {
            program: "srun".into(),
            hostfile: dir.path().join("hosts"),
        };
        let plan = LaunchPlan::new(
            &[&a, &b, &a],
            vec!["./x".into(), "-v".into()],
            vec![("PM_JOB".into(), "j".into())],
        );
        let cmd = srun.command(&plan).unwrap();
        let args = args(&cmd);
        assert!(args.contains(&"--distribution=arbitrary".to_string()));
        assert!(args.ends_with(&["./x".to_string(), "-v".to_string()]));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hosts")).unwrap(),
            "n1\nn2\nn1\n"
        );
        assert!(
            cmd.get_envs()
                .any(|(k, v)| k == "PM_JOB" && v == Some("j".as_ref()))
        );
        let bad = Srun {
            program: "srun".into(),
            hostfile: dir.path().join("no/such/dir/hosts"),
        };
        let err = bad.command(&plan).unwrap_err().to_string();
        assert!(err.contains("cannot write the hostfile"), "{err}");
    }

    #[test]
    fn several_hosts_get_their_blocks_of_ranks() {
        let (a, b) = (host("a", 4), host("b", 4));
        let mpirun = Mpirun {
            program: "mpirun".into(),
        };
        let plan = LaunchPlan::new(&[&a, &a, &a, &b], vec!["./x".into()], vec![]);
        assert_eq!(
            args(&mpirun.command(&plan).unwrap())[..4],
            ["-n", "4", "--host", "a:3,b:1"]
        );
        let scattered = LaunchPlan::new(&[&a, &b, &a], vec!["./x".into()], vec![]);
        let err = mpirun.command(&scattered).unwrap_err().to_string();
        assert!(err.contains("host a gets ranks [0, 2]"), "{err}");
    }
}
