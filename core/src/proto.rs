//! The vocabulary of a job's links: one message type per direction of each
//! link, carried in [`wire`](crate::wire) frames.
//!
//! | link | one way | the other |
//! |---|---|---|
//! | launcher ↔ agent (TCP) | [`ToAgent`] | [`FromAgent`] |
//! | rank → agent (Unix socket) | [`FromRank`] | — |
//! | agent → partner agent (TCP) | [`ToPartner`] | [`FromPartner`] |
//! | operator (`pmrun ctl`) ↔ launcher (Unix socket) | [`CtlRequest`] | [`CtlReply`] |
//!
//! A receiver decodes only its link's type, so a message of another link
//! fails to decode instead of reaching an "unexpected message" arm. Nodes
//! are [`NodeId`]s (their index in the job's node list) everywhere; names
//! are for people. Postcard numbers variants by position: append new
//! variants, never reorder (the wire version changes otherwise).

use crate::transport::RegionKey;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of the job: its index in the list pmrun was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn from_index(i: usize) -> Self {
        Self(u32::try_from(i).expect("fewer than 2^32 nodes"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A node's load as its agent reports it in heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Ranks running on the node.
    pub ranks: u32,
    /// Sum of the ranks' expected seconds per step (weighted load).
    pub step_seconds: f64,
    /// CPUs the node may use (its cgroup quota or its core count).
    pub cpus: f64,
}

/// What an agent is still doing before it can apply a placement: imports
/// into ranks that now run on its node. Reported in heartbeats, so that
/// the launcher's patience follows the work left, not a fixed timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    pub generation: u64,
    pub imports: u32,
    /// Bytes those imports still have to move.
    pub bytes_left: u64,
}

/// A rank's measurements over the window since its previous report, sent
/// at a decision point (at most about once a second, never per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankLoad {
    pub rank: u32,
    /// Steps the job has completed (the rank's current step).
    pub step: u64,
    /// Steps in the window, and their compute seconds (wall minus time
    /// blocked in MPI) in all, and the sum of their squares.
    pub window_steps: u64,
    pub compute_s: f64,
    pub compute_sq_s2: f64,
    /// CPU seconds and block-I/O delay seconds of the process in the window.
    pub cpu_s: f64,
    pub io_wait_s: f64,
    /// Bytes of registered state.
    pub state_bytes: u64,
    /// Steps the application says the job has in all (`pm_set_total_steps`).
    pub total_steps: Option<u64>,
}

/// A node's load record as gossip carries it.
pub use crate::gossip::LoadRecord;

/// Where a node's agent takes replication requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: NodeId,
    /// TCP address of the agent's partner port (shared: a placement at 10⁴
    /// nodes names each one in many messages).
    pub control: std::sync::Arc<str>,
}

/// What a node's store holds of the job (the answer to
/// [`ToAgent::Inventory`]), so that `pmrun --job` resumes without reading
/// any node's files itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The job's commit record on this node: epoch, step, rank count.
    pub committed: Option<(u64, u64, u32)>,
    /// Per rank directory: the epochs whose manifest is published.
    pub ranks: Vec<(u32, Vec<u64>)>,
}

/// Launcher → agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The ranks the node runs from now on and, for each, the partner
    /// nodes that must hold its replicas; `peers` says where every live
    /// node's agent listens. Answered by [`FromAgent::PlacementApplied`].
    Placement {
        generation: u64,
        local: Vec<u32>,
        partners: Vec<(u32, Vec<NodeId>)>,
        peers: Vec<Peer>,
    },
    /// `epoch`, taken at `step` by a job of `ranks` ranks, is committed.
    Commit { epoch: u64, step: u64, ranks: u32 },
    /// Kill the node's ranks: the run is being stopped.
    KillRanks,
    /// Say what the store holds of the job ([`FromAgent::Inventory`]).
    Inventory,
    /// The job ended: delete its snapshots and replicas on the node, exit.
    DeleteJob,
    /// The job stops with its checkpoints kept: exit.
    Exit,
    /// Give the node's ranks `cpus` CPUs from now on (`pmrun ctl set-cpus`),
    /// answered by [`FromAgent::CpusSet`].
    SetCpus { cpus: f64 },
    /// Copy the node's snapshots of `epoch` for `ranks` between its store
    /// and the flush directory (the agent's `--flush`), answered by
    /// [`FromAgent::FlushCopied`].
    CopyFlush {
        way: FlushWay,
        epoch: u64,
        ranks: Vec<u32>,
    },
}

/// Which way a [`ToAgent::CopyFlush`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlushWay {
    /// From the node's store to the flush directory (a flush).
    Out,
    /// From the flush directory into the node's store (a resume from it),
    /// where the copy is then recorded as committed.
    In,
}

/// Agent → launcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    /// First message: where partner agents and transfers reach the agent.
    Ready {
        control: String,
        transport: String,
        /// The bulk transport it opened: `tcp` or `fabric:<provider>`.
        provider: String,
        pid: u32,
    },
    /// Periodically, from the agent's event loop: it is alive and making
    /// progress; its load, and what a placement still waits for.
    Heartbeat {
        seq: u64,
        load: Load,
        waiting: Option<Waiting>,
    },
    /// A rank reached the agent (it initialised pm), from process `pid`.
    RankHello { rank: u32, pid: u32 },
    /// A rank's snapshot of `epoch` is published in the node's store.
    Published {
        rank: u32,
        epoch: u64,
        step: u64,
        state_bytes: u64,
        written_bytes: u64,
    },
    /// A rank stopped at its snapshot of `epoch` (`PM_EXIT`) instead of
    /// finishing the job.
    Stopped { rank: u32, epoch: u64, step: u64 },
    /// A rank completed the job.
    Finished { rank: u32 },
    /// `holder` published its replica of `rank`'s snapshot of `epoch`.
    ReplicaStored {
        rank: u32,
        epoch: u64,
        holder: NodeId,
    },
    /// `partner` did not store `rank`'s snapshot of `epoch`.
    ReplicaFailed {
        rank: u32,
        epoch: u64,
        partner: NodeId,
        reason: String,
    },
    /// The placement of `generation` is in force.
    PlacementApplied { generation: u64 },
    /// The answer to [`ToAgent::Inventory`].
    Inventory(Inventory),
    /// The answer to [`ToAgent::KillRanks`]: the ranks it killed.
    RanksKilled { ranks: Vec<u32> },
    /// A local rank's measurements; `share` is the fraction of one core
    /// the agent reckons the rank had over the window (the node's capacity
    /// shared among its busy ranks), so that the coordinator can tell the
    /// rank's work from its node's speed.
    RankLoad { load: RankLoad, share: f64 },
    /// The load records the agent's gossip holds (its own among them), once
    /// a gossip round: the coordinator's view of the nodes' load and
    /// capacity comes from gossip, while heartbeats stay the liveness signal.
    Gossip { records: Vec<LoadRecord> },
    /// The answer to [`ToAgent::SetCpus`]: the CPUs now in force and how
    /// they are enforced (a cgroup quota, a duty cycle), or why not.
    CpusSet {
        cpus: f64,
        enforced: Result<String, String>,
    },
    /// The answer to [`ToAgent::CopyFlush`]: the ranks whose copy is
    /// published, those that failed and why, the bytes written.
    FlushCopied {
        way: FlushWay,
        epoch: u64,
        copied: Vec<u32>,
        failed: Vec<(u32, String)>,
        bytes_written: u64,
    },
}

/// Rank → its node's agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromRank {
    /// First message: which rank connected, from which process.
    Hello { rank: u32, pid: u32 },
    /// The rank's snapshot of `epoch` is published in the node's store.
    Published {
        rank: u32,
        epoch: u64,
        step: u64,
        state_bytes: u64,
        written_bytes: u64,
    },
    /// The rank stopped at its snapshot of `epoch` (`PM_EXIT`).
    Stopped { rank: u32, epoch: u64, step: u64 },
    /// The rank completed the job (`pm_finalize`).
    Finished { rank: u32 },
    /// The rank's measurements since its previous report.
    Load(RankLoad),
}

/// A source agent → the partner agent that is to hold a replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToPartner {
    /// First message: who is calling, and where its transport listens.
    Hello { node: NodeId, transport: String },
    /// Rank `rank`'s snapshot of `epoch` is published at the source: pull
    /// it. `manifest_bytes` is the encoded manifest (format.md);
    /// `data_keys` gives, for each data file the manifest references (by
    /// its epoch), the transport key it is registered under (unchanged
    /// chunks stay in older files, which a partner that missed an epoch
    /// needs); `changed` lists the (offset, length) ranges of the epoch's
    /// own data file that were written.
    SnapshotReady {
        job: String,
        rank: u32,
        epoch: u64,
        manifest_bytes: Vec<u8>,
        data_keys: Vec<(u64, RegionKey)>,
        changed: Vec<(u64, u64)>,
    },
    /// One gossip round's message (`pm_core::gossip::Message`, encoded, at
    /// most 512 bytes); not answered.
    Gossip { message: Vec<u8> },
}

/// Partner → source, one answer per [`ToPartner::SnapshotReady`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromPartner {
    /// The replica is published in the partner's store.
    Stored { rank: u32, epoch: u64 },
    /// It was not stored; why, for the log and the user.
    Refused { reason: String },
}

/// Operator (`pmrun ctl`) → launcher.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CtlRequest {
    /// Nodes, ranks, epochs, replicas, recoveries.
    Status,
    /// Take a checkpoint now; answered once it is committed.
    Checkpoint,
    /// Checkpoint, move every rank off `node`, continue without it.
    Drain { node: String },
    /// Decide about balancing now (and move, if it pays and balancing is on).
    Balance,
    /// Give `node` `cpus` CPUs (virtual nodes: its cgroup quota).
    SetCpus { node: String, cpus: f64 },
    /// Stop the job at a checkpoint and keep it, to resume later with
    /// `pmrun --job ID`; answered once the checkpoint is committed.
    Stop,
}

/// Launcher → operator; rendered for people (or as JSON) by `pmrun ctl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CtlReply {
    Status(Box<JobStatus>),
    /// The checkpoint asked for is committed.
    Committed {
        epoch: u64,
        step: u64,
    },
    /// The drain is done and the job runs again without the node.
    Drained(Recovery),
    /// The request cannot be carried out; why.
    Refused {
        reason: String,
    },
    /// A balancing decision, and what it led to.
    Balanced(Decision),
    /// A node's CPUs were changed; how they are enforced.
    CpusSet {
        node: String,
        cpus: f64,
        how: String,
    },
}

/// One balancing decision, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Seconds since the job started.
    pub at_s: f64,
    /// The job's step when it was taken.
    pub step: u64,
    /// Predicted step time now, after the moves, and the lower bound (s).
    pub step_s: f64,
    pub predicted_s: f64,
    pub lower_bound_s: f64,
    /// Seconds the moves would save over the remaining steps (times the
    /// estimates' confidence), and their predicted freeze.
    pub gain_s: f64,
    pub freeze_s: f64,
    pub remaining_steps: u64,
    /// Where the remaining steps come from: "declared", "history", "assumed".
    pub remaining_from: String,
    pub confidence: f64,
    /// Ranks to move: (rank, from, to).
    pub moves: Vec<(u32, String, String)>,
    /// What was done: "balanced", "not worth it", "moving", "dry run", ….
    pub outcome: String,
}

/// A node's condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Alive,
    /// Taken out of service by `pmrun ctl drain`: runs no ranks, holds no replicas.
    Drained,
    /// Missed heartbeats for longer than `--fail-after`, lost its link, or
    /// stopped making progress.
    Dead,
}

/// One node as `pmrun ctl status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub addr: String,
    pub health: Health,
    pub spare: bool,
    pub holds_replicas: bool,
    pub ranks: Vec<u32>,
    /// Processes of the node's ranks, as its agent reported them.
    pub rank_pids: Vec<u32>,
    pub agent_pid: Option<u32>,
    pub control: Option<String>,
    /// The bulk transport its agent opened: `tcp` or `fabric:<provider>`.
    #[serde(default)]
    pub transport: Option<String>,
    pub store: String,
    pub log: Option<String>,
    pub last_heard_s: f64,
    /// CPUs the node offers, its capacity (CPUs × availability) and its
    /// finish time per step, from gossip, with the record's age.
    pub cpus: f64,
    pub capacity: f64,
    pub load_s: f64,
    pub gossip_age_s: Option<f64>,
}

/// Bytes of an epoch over all ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBytes {
    pub state: u64,
    pub written: u64,
}

/// A committed epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub epoch: u64,
    pub step: u64,
}

/// One recovery or drain, with its timings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub kind: RecoveryKind,
    pub nodes: Vec<String>,
    /// From the node's last heartbeat to its declaration as dead.
    pub detect_s: f64,
    /// From the declaration (or the drain request) until the job stopped.
    pub stop_s: f64,
    /// Placing ranks and waiting for agents to apply it.
    pub place_s: f64,
    /// From relaunch until every rank had restored and reached its agent.
    pub resume_s: f64,
    pub total_s: f64,
    /// The epoch the job resumed from (0: afresh), and its step.
    pub epoch: u64,
    pub step: u64,
    /// Ranks moved: (rank, from node, to node).
    pub moved: Vec<(u32, String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryKind {
    #[serde(rename = "node failure")]
    NodeFailure,
    #[serde(rename = "drain")]
    Drain,
    #[serde(rename = "rebalance")]
    Rebalance,
}

impl fmt::Display for RecoveryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NodeFailure => "node failure",
            Self::Drain => "drain",
            Self::Rebalance => "rebalance",
        })
    }
}

/// Everything `pmrun ctl status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: String,
    pub ranks: u32,
    pub replicas: usize,
    /// Replicas every snapshot actually gets with the usable nodes left.
    pub effective_replicas: usize,
    /// Whether a run of the job (mpirun) is running.
    pub running: bool,
    /// What the job is doing: starting, placing, running, stopping, …
    pub phase: String,
    pub launcher_pid: Option<u32>,
    pub restarts: u32,
    pub nodes: Vec<NodeStatus>,
    /// The node of every rank.
    pub placement: Vec<String>,
    /// The partner nodes of every rank.
    pub partners: Vec<Vec<String>>,
    pub committed: Option<Committed>,
    pub committed_bytes: Option<EpochBytes>,
    /// Nodes holding each rank's committed snapshot.
    pub committed_holders: Vec<Vec<String>>,
    pub newest_published: Option<u64>,
    pub newest_bytes: Option<EpochBytes>,
    pub last_commit_age_s: Option<f64>,
    pub steps_per_s: Option<f64>,
    pub replication_lag_s: f64,
    pub recoveries: Vec<Recovery>,
    /// Each rank's estimated compute seconds per step on one core, and
    /// the estimate's confidence.
    pub estimates: Vec<(f64, f64)>,
    /// The balancing mode and the last decision.
    pub balance: String,
    pub last_decision: Option<Decision>,
    /// With `--flush`: the directory and the newest epoch recorded there.
    pub flush_dir: Option<String>,
    pub flushed: Option<Committed>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let msg = ToAgent::Placement {
            generation: 3,
            local: vec![0, 1],
            partners: vec![(0, vec![NodeId(2)]), (1, vec![NodeId(2), NodeId(3)])],
            peers: vec![Peer {
                node: NodeId(2),
                control: "127.0.0.4:4000".into(),
            }],
        };
        let bytes = postcard::to_stdvec(&msg).unwrap();
        assert_eq!(postcard::from_bytes::<ToAgent>(&bytes).unwrap(), msg);
        let hello = postcard::to_stdvec(&FromRank::Hello { rank: 1, pid: 42 }).unwrap();
        assert_eq!(
            postcard::from_bytes::<FromRank>(&hello).unwrap(),
            FromRank::Hello { rank: 1, pid: 42 }
        );
    }

    #[test]
    fn recovery_kinds_keep_their_names_in_json() {
        let s = serde_json::to_string(&RecoveryKind::NodeFailure).unwrap();
        assert_eq!(s, "\"node failure\"");
        assert_eq!(RecoveryKind::Drain.to_string(), "drain");
    }
}
