//! The job's coordinator, inside `pmrun`.
//!
//! [`job`] is the coordinator itself, a pure state machine: it places the
//! ranks, counts the snapshots ranks publish and the replicas partners
//! store, commits an epoch once every rank's snapshot is on its node and on
//! its partners, declares a node dead when it falls silent, loses its link
//! or stops making progress, and then moves its ranks to nodes that hold
//! their committed snapshots and relaunches; it drains nodes, answers
//! `pmrun ctl` and ends the job. [`driver`] is `pmrun`'s one event loop
//! around it: agent links ([`links`]), the launch backend's process, ctl
//! connections ([`control`]) and the timer become events, and its actions
//! become messages, processes and signals. Agents are started by an
//! [`agents::AgentStarter`].

pub mod agents;
pub mod cgroup;
mod console;
pub mod control;
pub mod driver;
pub mod history;
pub mod job;
mod links;
mod orphan_watch;
pub mod render;
mod slurm_watch;
pub mod state;

use agents::NodeSpec;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub use driver::run;

/// The exit code a shell would report for `status`.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// What `pmrun` was asked to run.
pub struct JobSpec {
    pub job: String,
    pub ranks: u32,
    pub app: Vec<String>,
    /// Variables every rank gets besides the placement (`PM_EVERY`, `-x`, …).
    pub env: Vec<(String, String)>,
    pub nodes: Vec<NodeSpec>,
    pub replicas: usize,
    pub heartbeat: Duration,
    pub fail_after: Duration,
    pub keep: bool,
    pub max_restarts: u32,
    /// Root under which the job's run directory lives.
    pub store: PathBuf,
    pub verbose: bool,
    /// Balancing: mode, period, starting weights, what is known of the steps.
    pub balance: job::BalanceSettings,
    /// The node of every rank, as the user gave it (`--placement`).
    pub placement: Option<Vec<pm_core::proto::NodeId>>,
    /// Where the history of earlier runs is kept, and this application's
    /// signature in it: the run's weights are recorded there at its end.
    pub history: Option<(PathBuf, pm_core::history::AppSignature)>,
    /// Inside a Slurm allocation: how often to look for nodes Slurm wants
    /// emptied (drained, failing), which are then drained.
    pub slurm_watch: Option<Duration>,
    /// `--flush DIR` and `--flush-every N`.
    pub flush: Option<(PathBuf, u64)>,
    /// The bulk transport the agents replicate over (`--transport`).
    pub transport: crate::transport::TransportChoice,
}
