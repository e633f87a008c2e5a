//! The job's coordinator as a state machine, in the shape of `quinn-proto`:
//! events and time go in ([`Job::handle`], [`Job::handle_timeout`]),
//! actions come out ([`Job::poll_action`]), and [`Job::poll_timeout`] says
//! when to call again. No clocks, sockets, threads or processes inside, so
//! every rule of a job — health, placement generations, commits, partners,
//! recoveries, drains, restarts — can be driven by a fake clock in unit
//! tests, by `pmbench sim job` at 10⁴ nodes, and by `pmrun`'s event loop.
//!
//! The lifecycle is one explicit [`Phase`]; failure detection runs in every
//! phase, and each phase says what a lost node means to it.

mod balance;
#[cfg(test)]
mod balance_tests;
mod ctl;
mod flush;
mod lifecycle;
pub mod sim;
mod status;
#[cfg(test)]
mod tests;

use super::state::{Commit, Health, JobState, Node};
use balance::Balancer;
pub use balance::{BalanceMode, BalanceSettings};
pub use flush::FlushSettings;
use pm_core::proto::{
    CtlReply, CtlRequest, FromAgent, Inventory, NodeId, Recovery, RecoveryKind, ToAgent, Waiting,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// What the coordinator is told about the job at its start.
#[derive(Clone, Debug)]
pub struct Config {
    pub job: String,
    pub ranks: u32,
    pub nodes: Vec<NodeConfig>,
    /// Replicas wanted per snapshot (`--replicas`).
    pub replicas: usize,
    /// Silence after which a node is declared dead.
    pub fail_after: Duration,
    /// Keep the checkpoints when the job ends (`--keep`).
    pub keep: bool,
    /// Relaunches after rank failures before giving up.
    pub max_restarts: u32,
    pub verbose: bool,
    /// The store root, for messages.
    pub store: String,
    /// Whether ranks checkpoint asynchronously (`--async`), for messages.
    pub asynchronous: bool,
    /// Balancing: mode, period, starting weights, what is known of the steps.
    pub balance: BalanceSettings,
    /// The node of every rank, as the user gave it (`--placement`).
    pub placement: Option<Vec<NodeId>>,
    /// Whether the launcher waits for the tasks of a node it cannot reach
    /// before it ends the run (srun: its `KillWait` + 2 s), so that after
    /// a node loss it is killed soon instead of asked to terminate.
    pub launcher_lingers: bool,
    /// Inside a Slurm allocation (for what pmrun explains).
    pub slurm: bool,
    /// Flushing committed epochs to a shared directory (`--flush`).
    pub flush: Option<FlushSettings>,
}

/// One node of the job.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub slots: u32,
    /// Kept free of ranks: a replica holder and a place to recover to.
    pub spare: bool,
    /// The node's address, for people.
    pub addr: String,
    /// The node's store root, for people.
    pub store: String,
    /// The agent's log, for people.
    pub log: Option<String>,
    /// CPUs the node offers its ranks (its quota, or its cores).
    pub cpus: f64,
    /// Bytes of rank state the node may hold.
    pub memory_bytes: u64,
}

/// What happens to the job.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A message from a node's agent (`Ready` first).
    FromAgent { node: NodeId, msg: FromAgent },
    /// The link to a node's agent closed or broke (or the agent's process
    /// ended before it connected).
    LinkLost { node: NodeId, reason: String },
    /// The run asked for by [`Action::Launch`] started as process `pid`.
    RunStarted { run: u64, pid: u32 },
    /// The run could not be started.
    RunFailedToStart { run: u64, reason: String },
    /// The run (mpirun) ended with exit code `code` (128 + N for signal N).
    RunExited { run: u64, code: i32 },
    /// Whether the run's launcher has child processes on this host (its
    /// ranks, or its remote shells), each time that changes once it had
    /// some: `true` first. A launcher left alone for [`ORPHAN_AFTER`]
    /// without ending hangs.
    RunChildren { run: u64, any: bool },
    /// A `pmrun ctl` request; answered by [`Action::Reply`] with the same id.
    Ctl { id: u64, req: CtlRequest },
    /// pmrun was asked to stop (SIGINT/SIGTERM).
    Interrupted,
    /// pmrun was asked to stop the job at a checkpoint and keep it
    /// (SIGUSR1: Slurm's `--signal` before a time limit or preemption).
    StopRequested,
    /// Inside a Slurm allocation: the nodes Slurm wants emptied at its
    /// latest look, each with Slurm's state and reason.
    SlurmLeaving { nodes: Vec<(String, String)> },
    /// The flush directory's record of `epoch` was written (or not).
    FlushRecorded { epoch: u64, error: Option<String> },
}

/// What the coordinator asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Send {
        node: NodeId,
        msg: ToAgent,
    },
    /// Close the link to a node declared dead: nothing it says counts any more.
    Disconnect {
        node: NodeId,
    },
    /// Start run `run` of the job.
    Launch {
        run: u64,
        plan: RunPlan,
    },
    /// Signal the current run (its launcher process, which forwards it).
    Signal {
        run: u64,
        signal: RunSignal,
    },
    Reply {
        id: u64,
        reply: CtlReply,
    },
    /// A line for the user.
    Say(String),
    /// Every rank's snapshot of `epoch` (taken at `step`) is in the flush
    /// directory: write its commit record there, then report
    /// [`Event::FlushRecorded`].
    RecordFlush {
        epoch: u64,
        step: u64,
    },
    /// The job is over: end with `code` once the agents are gone. With
    /// `delete`, the files of nodes whose agents are dead go too.
    Exit {
        code: i32,
        delete: bool,
    },
}

/// How a run is signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunSignal {
    /// Take a checkpoint (SIGUSR2 to the ranks).
    Checkpoint,
    /// Checkpoint and stop (SIGUSR1 to the ranks).
    Stop,
    /// End the run (SIGTERM).
    Terminate,
    /// End it now (SIGKILL).
    Kill,
}

/// What a run needs from the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// The node of every rank.
    pub placement: Vec<NodeId>,
    /// The committed epoch the ranks restore (0: a fresh start).
    pub restore_epoch: u64,
    /// The lowest epoch number the run may write.
    pub first_epoch: u64,
}

/// The exit code of a job that stopped at a checkpoint before it finished,
/// without pmrun asking (SIGUSR1 to mpirun): `EX_TEMPFAIL`, try again later.
pub const STOPPED_EXIT: i32 = 75;
/// The exit code after an interruption (SIGINT/SIGTERM to pmrun).
pub const INTERRUPTED_EXIT: i32 = 130;

/// How long agents may take to start and connect.
pub const AGENT_START: Duration = Duration::from_secs(30);
/// How long agents may take to list their stores.
const INVENTORY_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to apply a placement with no work reported
/// left; imports it reports extend it by their bytes at [`IMPORT_RATE`].
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(30);
/// The slowest import rate, in bytes per second, that still counts as progress.
const IMPORT_RATE: f64 = 50e6;
/// How long a drain (or a stop) waits for its checkpoint to be replicated.
const STOP_COMMIT_WAIT: Duration = Duration::from_secs(120);
/// Failed replications in a row after which a node is no partner any more.
pub const REPLICA_FAILURES: u32 = 3;
/// Grace period between stopping a run and killing it.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// After a node loss, how long a lingering launcher (srun) is given before
/// it is killed: the agents' `KillRanks` takes milliseconds.
const LINGER_GRACE: Duration = Duration::from_secs(1);
/// How long pmrun waits for a rank of a run to reach its agent before it
/// says that the application seems not to use pm.
const NO_PM_NOTICE: Duration = Duration::from_secs(15);
/// How long a launcher may outlive its last child process before it counts
/// as hung and is killed: mpirun ends within a second of its last rank
/// when it does not hang.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// What the job is doing.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Waiting for every agent to connect.
    Starting { deadline: Instant },
    /// Waiting for every agent's inventory of its store.
    Inventory { deadline: Instant },
    /// Resuming from the flushed copy: the nodes copy their ranks'
    /// snapshots in.
    Fetching { deadline: Instant },
    /// Waiting for the live agents to apply placement `generation`; then
    /// the job is launched.
    Placing { generation: u64 },
    /// A run is in progress.
    Running,
    /// The run is being ended; waiting for it to exit.
    Stopping {
        why: StopWhy,
        since: Instant,
        /// The next escalation, if the run has not ended by then.
        next: Option<(Instant, RunSignal)>,
    },
    /// The run failed at `exited_at`: waiting until every node with ranks
    /// has either been heard from since, or been declared dead.
    Settling { code: i32, exited_at: Instant },
    /// The ranks stopped at a checkpoint: waiting for epoch `target` to commit.
    AwaitingCommit {
        target: u64,
        deadline: Instant,
        then: AfterCommit,
    },
    /// The job ends with `code` once its newest commit is flushed.
    Flushing { code: i32, deadline: Instant },
    /// The job is over.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopWhy {
    NodeLost,
    Interrupted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterCommit {
    Drain,
    /// A balancing move.
    Rebalance,
    /// A stop nobody asked pmrun for (SIGUSR1 to mpirun).
    Unasked,
    /// A stop pmrun was asked for (`ctl stop`, SIGUSR1 to pmrun): the job
    /// ends with its checkpoints kept.
    Stop,
}

/// What the coordinator knows of one node besides its placement.
#[derive(Clone, Debug)]
struct NodeRt {
    last_heard: Instant,
    ready: bool,
    pid: Option<u32>,
    control: Option<std::sync::Arc<str>>,
    /// The bulk transport the agent opened (`tcp`, `fabric:<provider>`).
    transport: Option<std::sync::Arc<str>>,
    /// Replications the node failed since it last stored one.
    replica_failures: u32,
    /// While a placement waits for the node: its deadline, and the work it
    /// last reported left.
    placement_deadline: Option<Instant>,
    waiting: Option<Waiting>,
    inventory: Option<Inventory>,
    /// CPUs the node offers now (changed by `pmrun ctl set-cpus`).
    cpus: f64,
}

/// A drain in progress: the nodes, since when, and who asked.
#[derive(Clone, Debug)]
struct Drain {
    nodes: Vec<NodeId>,
    started: Instant,
    /// Who asked: a `ctl drain`, or none (Slurm drained the node).
    ctl: Option<u64>,
}

/// A recovery in progress: its record so far and when it started.
#[derive(Clone, Debug)]
struct Ongoing {
    record: Recovery,
    started: Instant,
    /// The drain's requester, answered once the job runs again.
    ctl: Option<u64>,
}

impl Ongoing {
    /// A planned stop (a drain or a rebalance) that stopped the job in
    /// `stop_s` at `commit` and is now resuming with `moved`.
    fn planned(
        kind: RecoveryKind,
        nodes: Vec<String>,
        stop_s: f64,
        commit: Commit,
        moved: Vec<(u32, String, String)>,
        started: Instant,
        ctl: Option<u64>,
    ) -> Ongoing {
        Ongoing {
            record: Recovery {
                kind,
                nodes,
                detect_s: 0.0,
                stop_s,
                place_s: 0.0,
                resume_s: 0.0,
                total_s: 0.0,
                epoch: commit.epoch,
                step: commit.step,
                moved,
            },
            started,
            ctl,
        }
    }
}

/// The job's coordinator.
pub struct Job {
    cfg: Config,
    state: JobState,
    nodes: Vec<NodeRt>,
    phase: Phase,
    actions: VecDeque<Action>,
    generation: u64,
    run: u64,
    run_pid: Option<u32>,
    /// Since when the current run's launcher has had no child process
    /// ([`Event::RunChildren`]).
    launcher_alone_since: Option<Instant>,
    /// The current run's launcher was killed because it hung with every
    /// rank gone.
    run_orphaned: bool,
    run_started: Instant,
    restarts: u32,
    /// Rank processes of the current run, as their agents reported them.
    pids: BTreeMap<u32, u32>,
    finished: BTreeSet<u32>,
    stopped: BTreeSet<u32>,
    said_no_pm: bool,
    /// When to check that a rank of the run reached its agent.
    notice_at: Option<Instant>,
    interrupted: bool,
    recoveries: Vec<Recovery>,
    recovering: Option<Ongoing>,
    /// Times of the last commits (for steps/s).
    commits: VecDeque<(Instant, Commit)>,
    /// The highest epoch any run of the job published.
    max_published: u64,
    /// When each epoch in flight was first published.
    published_at: BTreeMap<u64, Instant>,
    /// Checkpoint requests: the newest epoch when asked, and the requester.
    pending_checkpoints: Vec<(u64, u64)>,
    drain: Option<Drain>,
    /// A stop-and-keep under way: who asked (a ctl request, or a signal)
    /// and why.
    stop_asked: Option<(Option<u64>, String)>,
    /// Per node Slurm wants emptied, the last reason its drain had to
    /// wait (said once per reason).
    slurm_refused: BTreeMap<String, String>,
    /// Live nodes the phase still waits for (to connect, list their store,
    /// apply a placement): a count, so that 10⁴ answers cost 10⁴ steps.
    waiting_on: usize,
    next_health_check: Instant,
    started: Instant,
    balancer: Balancer,
    /// `pmrun ctl set-cpus` requests waiting for their node's answer.
    pending_cpus: Vec<(NodeId, u64)>,
    flushes: flush::Flushes,
    /// Counters for the simulator and `ctl status`.
    pub stats: Stats,
}

/// What the coordinator did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub messages_out: u64,
    pub commits: u64,
    pub declared_dead: u64,
}

impl Job {
    /// A job about to start its agents at `now`.
    pub fn new(cfg: Config, now: Instant) -> Result<Self, super::state::PlacementError> {
        let nodes: Vec<Node> = cfg
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                slots: n.slots,
                spare: n.spare,
                health: Health::Alive,
                holds_replicas: true,
            })
            .collect();
        let mut state = JobState::new(nodes, cfg.ranks, cfg.replicas)?;
        state.capacity = cfg.nodes.iter().map(|n| n.cpus).collect();
        let rt = NodeRt {
            last_heard: now,
            ready: false,
            pid: None,
            control: None,
            transport: None,
            replica_failures: 0,
            placement_deadline: None,
            waiting: None,
            inventory: None,
            cpus: 0.0,
        };
        let mut nodes = vec![rt; cfg.nodes.len()];
        for (rt, n) in nodes.iter_mut().zip(&cfg.nodes) {
            rt.cpus = n.cpus;
        }
        let balancer = Balancer::new(cfg.ranks, cfg.nodes.len(), cfg.balance.initial.clone());
        let placement = cfg.placement.clone();
        let mut job = Self {
            nodes,
            state,
            phase: Phase::Starting {
                deadline: now + AGENT_START,
            },
            actions: VecDeque::new(),
            generation: 0,
            run: 0,
            run_pid: None,
            launcher_alone_since: None,
            run_orphaned: false,
            run_started: now,
            restarts: 0,
            pids: BTreeMap::new(),
            finished: BTreeSet::new(),
            stopped: BTreeSet::new(),
            said_no_pm: false,
            notice_at: None,
            interrupted: false,
            recoveries: Vec::new(),
            recovering: None,
            commits: VecDeque::new(),
            max_published: 0,
            published_at: BTreeMap::new(),
            pending_checkpoints: Vec::new(),
            drain: None,
            stop_asked: None,
            slurm_refused: BTreeMap::new(),
            waiting_on: cfg.nodes.len(),
            next_health_check: now + health_tick(cfg.fail_after),
            started: now,
            balancer,
            pending_cpus: Vec::new(),
            flushes: flush::Flushes::new(cfg.flush.as_ref()),
            stats: Stats::default(),
            cfg,
        };
        job.initial_placement(placement);
        Ok(job)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The recoveries and drains completed so far.
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// Placement, partners and commits, read-only.
    pub fn state(&self) -> &JobState {
        &self.state
    }

    /// Whether the job is over (its [`Action::Exit`] was queued).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The current run, while one runs.
    pub fn current_run(&self) -> Option<u64> {
        matches!(self.phase, Phase::Running | Phase::Stopping { .. }).then_some(self.run)
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Job::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let mut t = self.next_health_check;
        let mut at = |d: Option<Instant>| {
            if let Some(d) = d {
                t = t.min(d);
            }
        };
        match &self.phase {
            Phase::Starting { deadline }
            | Phase::Inventory { deadline }
            | Phase::Fetching { deadline }
            | Phase::Flushing { deadline, .. }
            | Phase::AwaitingCommit { deadline, .. } => at(Some(*deadline)),
            Phase::Stopping { next, .. } => at(next.map(|(t, _)| t)),
            Phase::Running => {
                at(self.notice_at);
                at(self.balancer.next_decision);
                at(self.orphaned_at());
            }
            _ => {}
        }
        t.into()
    }

    /// Handles one event at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.stats.events += 1;
        match event {
            Event::FromAgent { node, msg } => self.agent_said(node, msg, now),
            Event::LinkLost { node, reason } => {
                if self.node_known(node) {
                    self.link_lost(node, &reason, now);
                }
            }
            Event::RunStarted { run, pid } if run == self.run => self.run_pid = Some(pid),
            Event::RunFailedToStart { run, reason } if run == self.run => {
                self.say(format!("cannot start the job: {reason}"));
                self.finish_keeping(1, now);
            }
            Event::RunExited { run, code } if run == self.run => self.run_exited(code, now),
            Event::RunChildren { run, any } if run == self.run => {
                self.launcher_alone_since = (!any).then_some(now);
            }
            Event::RunStarted { .. }
            | Event::RunFailedToStart { .. }
            | Event::RunExited { .. }
            | Event::RunChildren { .. } => {}
            Event::Ctl { id, req } => self.ctl(id, req, now),
            Event::Interrupted => {
                self.explain_slurm_end();
                self.interrupt(now)
            }
            Event::StopRequested => self.request_stop(None, "pmrun got SIGUSR1", now),
            Event::SlurmLeaving { nodes } => self.slurm_leaving(nodes, now),
            Event::FlushRecorded { epoch, error } => self.flush_recorded(epoch, error, now),
        }
    }

    /// Handles whatever is due at `now`: silent nodes, deadlines, grace periods.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_health_check {
            self.next_health_check = now + health_tick(self.cfg.fail_after);
            self.check_health(now);
        }
        self.phase_timeout(now);
    }

    fn node_known(&self, node: NodeId) -> bool {
        node.index() < self.nodes.len()
    }

    fn say(&mut self, msg: impl Into<String>) {
        self.actions.push_back(Action::Say(msg.into()));
    }

    fn send(&mut self, node: NodeId, msg: ToAgent) {
        self.stats.messages_out += 1;
        self.actions.push_back(Action::Send { node, msg });
    }

    fn reply(&mut self, id: u64, reply: CtlReply) {
        self.actions.push_back(Action::Reply { id, reply });
    }

    fn refuse(&mut self, id: u64, reason: impl Into<String>) {
        self.reply(
            id,
            CtlReply::Refused {
                reason: reason.into(),
            },
        );
    }

    /// Live nodes, in order.
    fn alive(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len())
            .map(NodeId::from_index)
            .filter(|&n| self.state.node(n).health != Health::Dead)
    }

    /// Sends `msg` to every live agent.
    fn broadcast(&mut self, msg: &ToAgent) {
        let alive: Vec<NodeId> = self.alive().collect();
        for n in alive {
            self.send(n, msg.clone());
        }
    }

    fn name(&self, node: NodeId) -> &str {
        &self.cfg.nodes[node.index()].name
    }

    fn agent_said(&mut self, node: NodeId, msg: FromAgent, now: Instant) {
        if !self.node_known(node) || self.state.node(node).health == Health::Dead {
            return;
        }
        self.nodes[node.index()].last_heard = now;
        match msg {
            FromAgent::Ready {
                control,
                provider,
                pid,
                ..
            } => {
                let rt = &mut self.nodes[node.index()];
                let first = !rt.ready;
                rt.ready = true;
                rt.control = Some(control.into());
                rt.transport = Some(provider.into());
                rt.pid = Some(pid);
                if first && matches!(self.phase, Phase::Starting { .. }) {
                    self.waiting_on -= 1;
                    if self.waiting_on == 0 {
                        self.ask_inventories(now);
                    }
                }
            }
            FromAgent::Heartbeat { waiting, .. } => self.progress(node, waiting, now),
            FromAgent::Inventory(inventory) => {
                let rt = &mut self.nodes[node.index()];
                let first = rt.inventory.is_none();
                rt.inventory = Some(inventory);
                if first && matches!(self.phase, Phase::Inventory { .. }) {
                    self.waiting_on -= 1;
                    self.inventory_arrived(now);
                }
            }
            FromAgent::RankHello { rank, pid } => self.rank_ready(rank, pid, now),
            FromAgent::Published {
                rank,
                epoch,
                step,
                state_bytes,
                written_bytes,
            } => {
                self.published_at.entry(epoch).or_insert(now);
                self.max_published = self.max_published.max(epoch);
                self.state
                    .published(rank, epoch, step, state_bytes, written_bytes);
                self.try_commit(now);
            }
            FromAgent::ReplicaStored {
                rank,
                epoch,
                holder,
            } => {
                if self.node_known(holder) {
                    self.nodes[holder.index()].replica_failures = 0;
                    self.state.replica_stored(rank, epoch, holder);
                    self.try_commit(now);
                    // A move waits for its targets to hold the stop's epoch.
                    if let Phase::AwaitingCommit {
                        then: AfterCommit::Rebalance,
                        ..
                    } = self.phase
                    {
                        self.commit_arrived(now);
                    }
                }
            }
            FromAgent::ReplicaFailed {
                rank,
                epoch,
                partner,
                reason,
            } => self.replica_failed(rank, epoch, partner, &reason, now),
            FromAgent::Finished { rank } => {
                self.finished.insert(rank);
            }
            FromAgent::Stopped { rank, .. } => {
                self.stopped.insert(rank);
            }
            FromAgent::PlacementApplied { generation } => {
                let rt = &mut self.nodes[node.index()];
                if generation == self.generation && rt.placement_deadline.is_some() {
                    rt.placement_deadline = None;
                    rt.waiting = None;
                    self.waiting_on -= 1;
                    self.placement_progress(now);
                }
            }
            FromAgent::RanksKilled { ranks } => {
                tracing::debug!(node = %self.name(node), ?ranks, "ranks killed");
            }
            FromAgent::RankLoad { load, share } => self.rank_load(load, share, now),
            FromAgent::Gossip { records } => self.gossip_records(records, now),
            FromAgent::CpusSet { cpus, enforced } => self.cpus_set(node, cpus, enforced),
            FromAgent::FlushCopied {
                way,
                epoch,
                failed,
                bytes_written,
                ..
            } => self.flush_copied(node, way, epoch, failed, bytes_written, now),
        }
    }

    /// A heartbeat: what a placement still waits for on the node. Its
    /// deadline moves only when the work left changes, so a stuck import
    /// runs out of time while a slow one that progresses does not.
    fn progress(&mut self, node: NodeId, waiting: Option<Waiting>, now: Instant) {
        let generation = self.generation;
        let rt = &mut self.nodes[node.index()];
        let Some(w) = waiting.filter(|w| w.generation == generation) else {
            return;
        };
        if rt.placement_deadline.is_some() && rt.waiting != Some(w) {
            let work = Duration::from_secs_f64(w.bytes_left as f64 / IMPORT_RATE);
            rt.placement_deadline = Some(now + PLACEMENT_PATIENCE + work);
            rt.waiting = Some(w);
        }
    }

    fn rank_ready(&mut self, rank: u32, pid: u32, now: Instant) {
        if rank >= self.cfg.ranks {
            return;
        }
        self.pids.insert(rank, pid);
        if self.pids.len() == self.cfg.ranks as usize
            && let Some(mut ongoing) = self.recovering.take()
        {
            let r = &mut ongoing.record;
            let elapsed = now.duration_since(ongoing.started).as_secs_f64();
            r.resume_s = (elapsed - r.stop_s - r.place_s).max(0.0);
            r.total_s = r.detect_s + elapsed;
            let what = if r.nodes.is_empty() {
                // A rebalance: nothing was lost, so nothing was detected.
                format!("{} done:", r.kind)
            } else {
                format!(
                    "{} of {} handled: detected in {:.2} s,",
                    r.kind,
                    r.nodes.join(", "),
                    r.detect_s
                )
            };
            let text = format!(
                "{what} job stopped in {:.2} s, placed in {:.2} s, \
                 ranks resumed from epoch {} {:.2} s after the relaunch; {:.2} s in all",
                r.stop_s, r.place_s, r.epoch, r.resume_s, r.total_s
            );
            self.say(text);
            self.learn_freeze(&ongoing.record);
            self.recoveries.push(ongoing.record);
        }
    }

    /// A partner failed to store a replica. After [`REPLICA_FAILURES`]
    /// failures in a row it is no partner any more: its ranks stay, but
    /// replicas go elsewhere (and are filled there).
    fn replica_failed(
        &mut self,
        rank: u32,
        epoch: u64,
        partner: NodeId,
        reason: &str,
        now: Instant,
    ) {
        if !self.node_known(partner) {
            return;
        }
        tracing::warn!(rank, epoch, partner = %self.name(partner), %reason, "replica not stored");
        let rt = &mut self.nodes[partner.index()];
        rt.replica_failures += 1;
        let node = self.state.node(partner);
        if rt.replica_failures < REPLICA_FAILURES
            || !node.holds_replicas
            || node.health != Health::Alive
        {
            return;
        }
        let name = node.name.clone();
        self.say(format!(
            "node {name} failed to store {REPLICA_FAILURES} replicas in a row ({reason}); \
             choosing other partners for the ranks it served"
        ));
        self.state.stop_holding_replicas(partner);
        self.partners_changed(now);
    }

    fn try_commit(&mut self, now: Instant) {
        let Some(commit) = self.state.try_commit() else {
            return;
        };
        self.stats.commits += 1;
        self.broadcast(&ToAgent::Commit {
            epoch: commit.epoch,
            step: commit.step,
            ranks: self.cfg.ranks,
        });
        let lag = self
            .published_at
            .get(&commit.epoch)
            .map_or(0.0, |t| now.duration_since(*t).as_secs_f64());
        self.published_at = self.published_at.split_off(&(commit.epoch + 1));
        tracing::info!(
            epoch = commit.epoch,
            step = commit.step,
            replication_s = lag,
            "epoch committed"
        );
        if self.cfg.verbose {
            self.say(format!(
                "epoch {} committed (step {}, replicated {:.2} s after it was written)",
                commit.epoch, commit.step, lag
            ));
        }
        self.commits.push_back((now, commit));
        if self.commits.len() > 8 {
            self.commits.pop_front();
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_checkpoints)
            .into_iter()
            .partition(|&(after, _)| commit.epoch > after);
        self.pending_checkpoints = waiting;
        for (_, id) in done {
            self.reply(
                id,
                CtlReply::Committed {
                    epoch: commit.epoch,
                    step: commit.step,
                },
            );
        }
        self.flush_after_commit(commit, now);
        if let Phase::AwaitingCommit { target, .. } = self.phase
            && commit.epoch >= target
        {
            self.commit_arrived(now);
        }
    }
}

/// How often node health is checked: often enough that detection comes
/// within a tenth of `--fail-after` of the deadline.
fn health_tick(fail_after: Duration) -> Duration {
    (fail_after / 10).max(Duration::from_millis(10))
}
