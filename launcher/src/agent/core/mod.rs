//! The agent's rules, without I/O ("sans-I/O", in the shape of
//! quinn-proto): [`AgentCore`] is fed [`Event`]s and the time, and queues
//! [`Action`]s for the event loop to carry out. It owns no clock, socket,
//! thread, process or file, so every rule can be tested with a fake clock
//! and scripted events.
//!
//! What it decides: which ranks are local, their partners and the peers'
//! addresses; the committed epoch and the newest published epoch of every
//! rank; which replication runs next and when a failed partner is asked
//! again ([`outgoing`]); whether an import is acceptable and when a
//! placement that waits for imports is applied ([`imports`]); heartbeats;
//! the node's capacity and the share of it each rank's load report is
//! given ([`load`]); gossip of node load among the agents ([`spread`]); the
//! node's CPUs, as a cgroup quota or a duty cycle ([`cpus`]); and how the
//! agent ends (`Exit`, `DeleteJob`, or the launcher lost).

mod cpus;
mod imports;
mod load;
#[cfg(test)]
mod load_tests;
mod outgoing;
mod placement;
mod spread;
#[cfg(test)]
mod tests;

pub use cpus::{DUTY_PERIOD, RankSignal};
use imports::Imports;
pub use load::MIN_AVAILABILITY;
use outgoing::Outgoing;
use pm_core::proto::{FlushWay, FromAgent, FromPartner, FromRank, Inventory, NodeId, ToAgent};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A connection (rank or partner) as the event loop numbers them.
pub type ConnId = u64;

/// How long the agent goes on after losing pmrun before it kills the
/// node's ranks and exits: long enough for a link that pmrun closes right
/// after its last word (`Exit`, `DeleteJob`) to deliver it, short enough
/// that a job whose launcher died stops at once.
pub const LAUNCHER_GRACE: Duration = Duration::from_secs(1);
/// How long the agent waits for its pending file writes (commit records,
/// the job's deletion) before it exits anyway.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);

/// What the core is told about this agent.
#[derive(Clone, Debug)]
pub struct Config {
    pub job: String,
    /// This node's id in the job.
    pub node: NodeId,
    /// Heartbeats, gossip rounds and availability measurements.
    pub heartbeat: Duration,
    /// CPUs the node offers (`--cpus`: its cgroup quota or its cores).
    pub cpus: f64,
    /// Whether the node's ranks run in a CPU cgroup: its quota is what they
    /// get (availability 1), and `SetCpus` rewrites it.
    pub cgroup: bool,
}

/// A partner's request to import a snapshot, as far as the rules need it
/// (the announced manifest itself stays with the connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRequest {
    pub job: String,
    pub rank: u32,
    pub epoch: u64,
    /// What the import moves at most: the snapshot's state size (a partner
    /// that holds an older snapshot of the rank moves only the changes;
    /// [`Event::ImportProgress`] then says what is left).
    pub bytes: u64,
}

/// A commit pmrun announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub epoch: u64,
    pub step: u64,
    pub ranks: u32,
}

/// Work on the node's files, done in order by one worker.
#[derive(Clone, Debug, PartialEq)]
pub enum FileJob {
    /// The job's commit record, and the rank record in every rank
    /// directory that holds the epoch.
    Commit(Commit),
    /// The rank record of one imported replica of the committed epoch.
    MarkCommitted { rank: u32, commit: Commit },
    /// What the store holds of the job.
    Inventory,
    /// Delete the job's directory on the node.
    DeleteJob,
    /// Set the node's cgroup CFS quota to `cpus` × its period.
    SetQuota { cpus: f64 },
}

/// A file job's result.
#[derive(Clone, Debug, PartialEq)]
pub enum FileDone {
    Written,
    Inventory(Inventory),
    Deleted,
    /// How the quota is enforced now, or why it could not be set.
    Quota(Result<String, String>),
}

/// Everything the agent reacts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A message from pmrun.
    Launcher(ToAgent),
    /// The link to pmrun closed, broke or stalled.
    LauncherLost {
        reason: String,
    },
    /// A process authenticated on the rank socket; `peer_pid` is its
    /// process id as the kernel gives it (SO_PEERCRED).
    RankConnected {
        conn: ConnId,
        peer_pid: u32,
    },
    Rank {
        conn: ConnId,
        msg: FromRank,
    },
    RankClosed {
        conn: ConnId,
    },
    /// A partner asks this node to import a snapshot; `Err` when its
    /// announcement does not hold together.
    ImportRequested {
        conn: ConnId,
        request: Result<ImportRequest, String>,
    },
    /// A running import knows what it still has to move.
    ImportProgress {
        conn: ConnId,
        bytes_left: u64,
    },
    /// The import started by [`Action::StartImport`] ended.
    ImportFinished {
        conn: ConnId,
        result: Result<(), String>,
    },
    PartnerClosed {
        conn: ConnId,
    },
    /// One partner's answer within an [`Action::Replicate`].
    Replicated {
        rank: u32,
        epoch: u64,
        partner: NodeId,
        result: Result<(), String>,
    },
    /// An [`Action::Replicate`] is over (`error`: the snapshot could not be
    /// exposed at all).
    ReplicationFinished {
        rank: u32,
        epoch: u64,
        error: Option<String>,
    },
    /// The oldest pending [`Action::Files`] job is done.
    Files(FileDone),
    /// The flush worker's answer to a [`ToAgent::CopyFlush`]
    /// ([`FromAgent::FlushCopied`]), sent on to pmrun as it is.
    FlushCopied(FromAgent),
    /// A peer agent's gossip message (`pm_core::gossip::Message`, encoded).
    Gossip {
        message: Vec<u8>,
    },
    /// The fraction of the node's CPUs its ranks could have over the last
    /// heartbeat period, as measured after [`Action::MeasureAvailability`].
    Availability {
        value: f64,
    },
}

/// A replication target: the partner and where its agent listens (`None`:
/// pmrun named no address for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    pub addr: Option<String>,
}

/// What the event loop is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Queue a message to pmrun.
    Send(FromAgent),
    /// Close a rank connection that broke the protocol.
    CloseRank {
        conn: ConnId,
    },
    /// SIGKILL the processes behind these rank connections.
    Kill {
        conns: Vec<ConnId>,
    },
    /// Run the import the partner connection asked for.
    StartImport {
        conn: ConnId,
    },
    /// Answer the partner connection's pending request.
    Answer {
        conn: ConnId,
        reply: FromPartner,
    },
    /// Send `rank`'s snapshot of `epoch` to these partners, one after the
    /// other, reporting each ([`Event::Replicated`]) and the end
    /// ([`Event::ReplicationFinished`]). One at a time per rank.
    Replicate {
        rank: u32,
        epoch: u64,
        to: Vec<Target>,
    },
    /// `rank` no longer runs here: its replication worker may end.
    StopReplicating {
        rank: u32,
    },
    /// These ranks run here now: forget the stores opened to import
    /// replicas of them (their directories are the ranks' own).
    ForgetImportStores {
        ranks: Vec<u32>,
    },
    Files(FileJob),
    /// Copy snapshots between the node's store and the flush directory.
    CopyFlush {
        way: FlushWay,
        epoch: u64,
        ranks: Vec<u32>,
    },
    /// Send one gossip round's message to these peers, fire-and-forget.
    Gossip {
        to: Vec<Target>,
        message: Vec<u8>,
    },
    /// Measure what the node's CPUs leave its ranks (these processes)
    /// since the last measurement ([`Event::Availability`]).
    MeasureAvailability {
        pids: Vec<u32>,
    },
    /// Send the processes behind these rank connections SIGSTOP or SIGCONT.
    Signal {
        conns: Vec<ConnId>,
        signal: RankSignal,
    },
    /// Stop the agent (its files stay unless a `DeleteJob` ran).
    Exit,
}

/// A rank connection.
#[derive(Debug)]
struct RankConn {
    peer_pid: u32,
    /// The rank it introduced itself as.
    rank: Option<u32>,
}

/// How the agent is ending.
#[derive(Debug)]
enum Ending {
    Running,
    /// pmrun is gone: the ranks are killed at `kill_at`.
    LauncherLost {
        kill_at: Instant,
    },
    /// Exit once the pending file jobs are done, or at `deadline`.
    Exiting {
        deadline: Instant,
    },
    Exited,
}

/// The agent's state and rules.
pub struct AgentCore {
    cfg: Config,
    /// Ranks that run on this node.
    local: BTreeSet<u32>,
    /// Partner nodes of each local rank.
    partners: HashMap<u32, Vec<NodeId>>,
    /// Where each node's agent takes replication requests.
    peers: HashMap<NodeId, String>,
    committed: Option<Commit>,
    /// Newest epoch each rank published on this node.
    published: HashMap<u32, u64>,
    ranks: BTreeMap<ConnId, RankConn>,
    outgoing: HashMap<u32, Outgoing>,
    imports: Imports,
    /// File jobs queued and not yet done, oldest first.
    files: VecDeque<FileJob>,
    next_heartbeat: Instant,
    heartbeat_seq: u64,
    /// The node's capacity and its ranks' work.
    load: load::NodeLoad,
    spread: spread::Spread,
    /// The duty cycle that enforces `SetCpus` without a cgroup.
    duty: Option<cpus::DutyCycle>,
    ending: Ending,
    actions: VecDeque<Action>,
}

impl AgentCore {
    /// A core that starts at `now` (its first heartbeat is due at once).
    pub fn new(cfg: Config, now: Instant) -> Self {
        Self {
            load: load::NodeLoad::new(&cfg),
            spread: spread::Spread::new(cfg.node),
            duty: None,
            cfg,
            local: BTreeSet::new(),
            partners: HashMap::new(),
            peers: HashMap::new(),
            committed: None,
            published: HashMap::new(),
            ranks: BTreeMap::new(),
            outgoing: HashMap::new(),
            imports: Imports::default(),
            files: VecDeque::new(),
            next_heartbeat: now,
            heartbeat_seq: 0,
            ending: Ending::Running,
            actions: VecDeque::new(),
        }
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`AgentCore::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ending = match self.ending {
            Ending::Running => {
                let duty = self.duty.as_ref().map(cpus::DutyCycle::switch_at);
                Some(duty.map_or(self.next_heartbeat, |d| d.min(self.next_heartbeat)))
            }
            Ending::LauncherLost { kill_at } => Some(kill_at),
            Ending::Exiting { deadline } => Some(deadline),
            Ending::Exited => return None,
        };
        let retries = self
            .outgoing
            .values()
            .filter(|_| !self.stopping())
            .filter_map(Outgoing::retry_due);
        ending.into_iter().chain(retries).min()
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.ending, Ending::Exited)
    }

    /// Heartbeats (with gossip rounds), the duty cycle, retries and the
    /// end of a lost launcher's grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.ending, Ending::Running) {
            self.duty_timeout(now);
        }
        match self.ending {
            Ending::Running if now >= self.next_heartbeat => {
                self.heartbeat();
                self.gossip_round();
                self.measure_availability();
                // A loop that fell behind sends one heartbeat, not a burst.
                let next = self.next_heartbeat + self.cfg.heartbeat;
                self.next_heartbeat = if next > now {
                    next
                } else {
                    now + self.cfg.heartbeat
                };
            }
            Ending::LauncherLost { kill_at } if now >= kill_at => {
                let (conns, ranks) = self.open_ranks();
                tracing::warn!(
                    ?ranks,
                    "pmrun is gone: killing the node's ranks and exiting; the job's checkpoints are kept"
                );
                self.actions.push_back(Action::Kill { conns });
                self.start_exit(now);
            }
            Ending::Exiting { deadline } if now >= deadline => {
                tracing::warn!(
                    pending = self.files.len(),
                    "exiting before every file job is done"
                );
                self.exit();
            }
            _ => {}
        }
        let due: Vec<u32> = self
            .outgoing
            .iter()
            .filter(|(_, o)| o.retry_due().is_some_and(|t| t <= now))
            .map(|(&r, _)| r)
            .collect();
        for rank in due {
            self.pump(rank, now);
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        if self.has_exited() {
            return;
        }
        match event {
            Event::Launcher(msg) => self.launcher_message(msg, now),
            Event::LauncherLost { reason } => {
                if matches!(self.ending, Ending::Running) {
                    tracing::warn!(%reason, "lost pmrun");
                    self.end_duty_cycle();
                    self.ending = Ending::LauncherLost {
                        kill_at: now + LAUNCHER_GRACE,
                    };
                }
            }
            Event::RankConnected { conn, peer_pid } => {
                self.ranks.insert(
                    conn,
                    RankConn {
                        peer_pid,
                        rank: None,
                    },
                );
            }
            Event::Rank { conn, msg } => self.rank_message(conn, msg, now),
            Event::RankClosed { conn } => {
                self.ranks.remove(&conn);
            }
            Event::ImportRequested { conn, request } => self.import_requested(conn, request),
            Event::ImportProgress { conn, bytes_left } => {
                self.imports.progress(conn, bytes_left);
            }
            Event::ImportFinished { conn, result } => self.import_finished(conn, result, now),
            Event::PartnerClosed { conn } => self.partner_closed(conn, now),
            Event::Replicated {
                rank,
                epoch,
                partner,
                result,
            } => self.replicated(rank, epoch, partner, result),
            Event::ReplicationFinished { rank, epoch, error } => {
                if let Some(e) = error {
                    tracing::warn!(rank, epoch, error = %e, "cannot expose the snapshot to partners");
                }
                let newest = self.published.get(&rank).copied();
                if let Some(o) = self.outgoing.get_mut(&rank) {
                    o.finished(epoch, newest, now);
                }
                self.pump(rank, now);
            }
            Event::Files(done) => self.file_done(done),
            Event::FlushCopied(answer) => self.send(answer),
            Event::Gossip { message } => self.gossip_received(&message),
            Event::Availability { value } => self.availability_measured(value),
        }
    }

    fn launcher_message(&mut self, msg: ToAgent, now: Instant) {
        match msg {
            ToAgent::Placement {
                generation,
                local,
                partners,
                peers,
            } => {
                self.peers = peers
                    .into_iter()
                    .map(|p| (p.node, p.control.to_string()))
                    .collect();
                self.spread.set_members(self.peers.keys().copied());
                self.placement(generation, local, partners, now);
            }
            ToAgent::Commit { epoch, step, ranks } => {
                let commit = Commit { epoch, step, ranks };
                self.committed = Some(commit);
                self.file_job(FileJob::Commit(commit));
                tracing::debug!(epoch, "epoch committed");
            }
            ToAgent::KillRanks => {
                self.resume_ranks(now);
                let (conns, ranks) = self.open_ranks();
                tracing::info!(?ranks, "killing the node's ranks");
                self.actions.push_back(Action::Kill { conns });
                self.send(FromAgent::RanksKilled { ranks });
            }
            ToAgent::Inventory => self.file_job(FileJob::Inventory),
            ToAgent::DeleteJob => {
                self.file_job(FileJob::DeleteJob);
                self.start_exit(now);
            }
            ToAgent::Exit => {
                tracing::info!("job stopped; its checkpoints on this node are kept");
                self.start_exit(now);
            }
            ToAgent::SetCpus { cpus } => self.set_cpus(cpus, now),
            ToAgent::CopyFlush { way, epoch, ranks } => {
                self.actions
                    .push_back(Action::CopyFlush { way, epoch, ranks });
            }
        }
    }

    /// The connections of ranks that introduced themselves, and the ranks.
    fn open_ranks(&self) -> (Vec<ConnId>, Vec<u32>) {
        let open: Vec<(ConnId, u32)> = self
            .ranks
            .iter()
            .filter_map(|(&c, r)| Some((c, r.rank?)))
            .collect();
        let mut ranks: Vec<u32> = open.iter().map(|&(_, r)| r).collect();
        ranks.sort_unstable();
        ranks.dedup();
        (open.into_iter().map(|(c, _)| c).collect(), ranks)
    }

    fn rank_message(&mut self, conn: ConnId, msg: FromRank, now: Instant) {
        let Some(rc) = self.ranks.get_mut(&conn) else {
            return;
        };
        match (msg, rc.rank) {
            (FromRank::Hello { rank, pid }, None) => {
                if pid != rc.peer_pid {
                    let peer = rc.peer_pid;
                    return self.reject_rank(
                        conn,
                        &format!(
                            "rank {rank} says it is process {pid}, but process {peer} connected"
                        ),
                    );
                }
                rc.rank = Some(rank);
                tracing::debug!(rank, pid, "rank connected");
                self.send(FromAgent::RankHello { rank, pid });
            }
            (
                FromRank::Published {
                    rank,
                    epoch,
                    step,
                    state_bytes,
                    written_bytes,
                },
                Some(me),
            ) if rank == me => {
                self.published.insert(rank, epoch);
                self.send(FromAgent::Published {
                    rank,
                    epoch,
                    step,
                    state_bytes,
                    written_bytes,
                });
                if self.local.contains(&rank) {
                    self.outgoing.entry(rank).or_default().published(epoch);
                    self.pump(rank, now);
                }
            }
            (FromRank::Stopped { rank, epoch, step }, Some(me)) if rank == me => {
                self.send(FromAgent::Stopped { rank, epoch, step });
            }
            (FromRank::Finished { rank }, Some(me)) if rank == me => {
                self.send(FromAgent::Finished { rank });
            }
            (FromRank::Load(load), Some(me)) if load.rank == me => self.rank_load(load),
            (other, _) => {
                self.reject_rank(
                    conn,
                    &format!(
                        "a message for another rank, a second Hello, or one before Hello: {other:?}"
                    ),
                );
            }
        }
    }

    fn reject_rank(&mut self, conn: ConnId, why: &str) {
        tracing::warn!(conn, error = why, "rank connection rejected");
        self.ranks.remove(&conn);
        self.actions.push_back(Action::CloseRank { conn });
    }

    fn heartbeat(&mut self) {
        let seq = self.heartbeat_seq;
        self.heartbeat_seq += 1;
        let waiting = self.imports.waiting();
        let load = self.heartbeat_load();
        self.send(FromAgent::Heartbeat { seq, load, waiting });
    }

    /// Messages to pmrun go out only while there is a pmrun to read them.
    fn send(&mut self, msg: FromAgent) {
        if !matches!(self.ending, Ending::LauncherLost { .. }) {
            self.actions.push_back(Action::Send(msg));
        }
    }

    fn file_job(&mut self, job: FileJob) {
        self.files.push_back(job.clone());
        self.actions.push_back(Action::Files(job));
    }

    fn file_done(&mut self, done: FileDone) {
        let job = self.files.pop_front();
        match (job, done) {
            (Some(FileJob::Inventory), FileDone::Inventory(inv)) => {
                self.send(FromAgent::Inventory(inv));
            }
            (Some(FileJob::DeleteJob), FileDone::Deleted) => {
                tracing::info!("job ended; its checkpoints on this node are deleted");
            }
            (Some(FileJob::SetQuota { cpus }), FileDone::Quota(result)) => {
                self.quota_set(cpus, result);
            }
            (Some(_), FileDone::Written) => {}
            (job, done) => tracing::error!(?job, ?done, "a file job's result does not match it"),
        }
        if matches!(self.ending, Ending::Exiting { .. }) {
            self.try_exit();
        }
    }

    fn start_exit(&mut self, now: Instant) {
        self.end_duty_cycle();
        self.ending = Ending::Exiting {
            deadline: now + EXIT_WAIT,
        };
        self.try_exit();
    }

    fn try_exit(&mut self) {
        if self.files.is_empty() {
            self.exit();
        }
    }

    fn exit(&mut self) {
        self.ending = Ending::Exited;
        self.actions.push_back(Action::Exit);
    }

    fn stopping(&self) -> bool {
        !matches!(self.ending, Ending::Running | Ending::LauncherLost { .. })
    }
}
