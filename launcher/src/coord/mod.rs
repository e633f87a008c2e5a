//! The job's coordinator, inside `pmrun`.
//!
//! It starts one agent per node, places the ranks, launches the MPI job,
//! and then follows it: it counts the snapshots ranks publish and the
//! replicas partners store, commits an epoch once every rank's snapshot is
//! on its node and on its partners, declares a node dead when its heartbeats
//! stop for `--fail-after`, and then stops the job, moves the dead node's
//! ranks to nodes that hold their committed snapshots, and relaunches. A
//! drain takes a checkpoint, waits for it to commit and moves the drained
//! node's ranks the same way. When the job ends, every node deletes its
//! snapshots and replicas (unless `--keep`).

pub mod agents;
pub mod cgroup;
mod console;
pub mod control;
mod events;
mod recover;
mod requests;
pub mod state;
pub mod status;

use crate::backend::{LaunchBackend, LaunchPlan};
use agents::{Agent, AgentLaunch, NodeSpec};
use anyhow::{Context, bail};
use console::Console;
use pm_core::proto::{
    CtlReply, CtlRequest, FromAgent, NodeId, Peer, Recovery, RecoveryKind, ToAgent,
};
use pm_core::store::commit::read_record;
use pm_core::wire::JobSecret;
use state::{Commit, Health, JobState, Node};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
}

/// Events the coordinator's loop reacts to.
pub enum Event {
    Agent { node: usize, msg: FromAgent },
    AgentLost { node: usize, reason: String },
    Exited { run: u64, status: ExitStatus },
    Control { req: CtlRequest, reply: Reply },
}

/// Where the answer to a control request goes.
pub type Reply = mpsc::Sender<CtlReply>;

/// A drain in progress: the nodes, since when, and who asked.
struct Drain {
    nodes: Vec<usize>,
    started: Instant,
    reply: Reply,
}

/// How long agents may take to start and connect.
const AGENT_START: Duration = Duration::from_secs(30);
/// How long agents may take to apply a placement.
const PLACEMENT_WAIT: Duration = Duration::from_secs(60);
/// How long a drain waits for its checkpoint to be replicated.
const DRAIN_COMMIT_WAIT: Duration = Duration::from_secs(120);
/// Failed replications in a row after which a node is no partner any more.
const REPLICA_FAILURES: u32 = 3;
/// Grace period between asking mpirun to stop and killing it.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The exit code of a job that stopped at a checkpoint before it finished,
/// without pmrun asking (SIGUSR1 to mpirun): `EX_TEMPFAIL`, try again later.
pub const STOPPED_EXIT: i32 = 75;
/// How long pmrun waits for a rank of a run to reach its agent before it
/// says that the application seems not to use pm.
const NO_PM_NOTICE: Duration = Duration::from_secs(15);

/// How one run of the MPI job ended.
enum Outcome {
    Finished,
    /// The application failed (a rank died or exited with an error).
    Failed(i32),
    /// The job stopped at a checkpoint for a drain.
    Drained,
    /// The ranks stopped at a checkpoint that no drain asked for.
    Stopped,
    /// pmrun was interrupted (SIGINT/SIGTERM).
    Interrupted(i32),
}

struct Coordinator {
    spec: JobSpec,
    state: JobState,
    agents: Vec<Agent>,
    events: mpsc::Receiver<Event>,
    backend: Box<dyn LaunchBackend>,
    run_dir: PathBuf,
    secret_file: PathBuf,
    /// Last time each node was heard from.
    last_seen: Vec<Instant>,
    /// Replications each node failed since it last stored one.
    replica_failures: Vec<u32>,
    /// Partners changed while the job runs: agents must learn it.
    pending_placement: bool,
    /// Placement generation and which agents applied it.
    generation: u64,
    applied: BTreeSet<usize>,
    /// Rank processes as agents reported them.
    pids: HashMap<u32, u32>,
    finished: BTreeSet<u32>,
    /// Ranks that stopped at a checkpoint (`PM_EXIT`) instead of finishing.
    stopped: BTreeSet<u32>,
    /// When the current run was launched.
    launched: Instant,
    /// Whether pmrun said that the ranks never reached their agents.
    said_no_pm: bool,
    /// The current mpirun: run number and pid, and how and when it ended.
    run: u64,
    mpirun_pid: Option<u32>,
    exited: Option<(ExitStatus, Instant)>,
    restarts: u32,
    interrupted: Arc<AtomicBool>,
    console: Console,
    recoveries: Vec<Recovery>,
    /// Times of the last commits (for steps/s and replication lag).
    commits: Vec<(Instant, Commit)>,
    /// The highest epoch any run of the job published.
    max_published: u64,
    /// When each epoch was first published.
    published_at: HashMap<u64, Instant>,
    pending_checkpoints: Vec<(u64, Reply)>,
    drain: Option<Drain>,
    /// A recovery in progress: its record so far and when it started.
    recovering: Option<(Recovery, Instant)>,
    job_started: Instant,
}

/// Runs the job to its end; the application's exit code.
pub fn run(spec: JobSpec, backend: Box<dyn LaunchBackend>) -> anyhow::Result<i32> {
    let run_dir = control::run_dir(&spec.store, &spec.job);
    if run_dir.join("ctl.sock").exists()
        && std::os::unix::net::UnixStream::connect(run_dir.join("ctl.sock")).is_ok()
    {
        bail!(
            "job {} is already running (its control socket {} answers)",
            spec.job,
            run_dir.join("ctl.sock").display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| {
            format!(
                "cannot create the job's run directory {} (is --store writable?)",
                run_dir.display()
            )
        })?;
    for node in &spec.nodes {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&node.store)
            .with_context(|| {
                format!(
                    "cannot create the store {} of node {} (is --store writable?)",
                    node.store.display(),
                    node.name
                )
            })?;
    }
    let secret = JobSecret::generate().context("no random bytes for the job's secret")?;
    let secret_file = run_dir.join("secret");
    {
        use std::io::Write;
        let _ = std::fs::remove_file(&secret_file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret_file)
            .with_context(|| format!("cannot write the job's secret {}", secret_file.display()))?;
        f.write_all(secret.as_bytes())?;
    }

    let (tx, rx) = mpsc::channel();
    // Agents run on this machine only (for now): loopback is enough.
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("cannot listen for agents")?;
    let started = Instant::now();
    let agents = agents::start(
        &AgentLaunch {
            job: &spec.job,
            run_dir: &run_dir,
            secret_file: &secret_file,
            secret: &secret,
            heartbeat: spec.heartbeat,
            listener: &listener,
        },
        &spec.nodes,
        &tx,
        AGENT_START,
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&run_dir);
    })?;
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "agents connected"
    );

    let ctl_path = run_dir.join("ctl.sock");
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = std::os::unix::net::UnixListener::bind(&ctl_path)
        .with_context(|| format!("cannot create the control socket {}", ctl_path.display()))?;
    {
        let tx = tx.clone();
        let secret = secret.clone();
        std::thread::Builder::new()
            .name("pmrun-ctl-accept".into())
            .spawn(move || control::serve(ctl, secret, tx))?;
    }

    let nodes: Vec<Node> = spec
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
    let state = JobState::new(nodes, spec.ranks, spec.replicas)?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let node_count = spec.nodes.len();
    let mut c = Coordinator {
        spec,
        state,
        agents,
        events: rx,
        backend,
        run_dir,
        secret_file,
        last_seen: vec![Instant::now(); node_count],
        replica_failures: vec![0; node_count],
        pending_placement: false,
        generation: 0,
        applied: BTreeSet::new(),
        pids: HashMap::new(),
        finished: BTreeSet::new(),
        stopped: BTreeSet::new(),
        launched: Instant::now(),
        said_no_pm: false,
        run: 0,
        mpirun_pid: None,
        exited: None,
        restarts: 0,
        interrupted,
        console: Console::new(),
        recoveries: Vec::new(),
        commits: Vec::new(),
        max_published: 0,
        published_at: HashMap::new(),
        pending_checkpoints: Vec::new(),
        drain: None,
        recovering: None,
        job_started: Instant::now(),
    };
    let result = c.run_job(tx);
    if result.is_err() {
        c.shut_down(false);
    }
    result
}

impl Coordinator {
    fn say(&mut self, msg: &str) {
        self.console.say(msg);
        // Already on stderr: a log line at info would repeat it there.
        tracing::debug!("{msg}");
    }

    fn run_job(&mut self, tx: mpsc::Sender<Event>) -> anyhow::Result<i32> {
        let resumed = self.resume_from_disk()?;
        let start = self.start_line();
        self.say(&start);
        self.apply_placement()?;
        if let Some(c) = resumed {
            self.say(&format!(
                "resuming job {} from its committed checkpoint (epoch {}, step {})",
                self.spec.job, c.epoch, c.step
            ));
        }
        loop {
            self.launch(&tx)?;
            let outcome = self.supervise()?;
            match outcome {
                Outcome::Finished => {
                    self.console.clear();
                    self.answer_pending("the job finished first");
                    self.shut_down(!self.spec.keep);
                    if self.spec.keep {
                        self.say(&format!(
                            "job finished; its checkpoints are kept (--keep) under {}",
                            self.spec.store.display()
                        ));
                    }
                    return Ok(0);
                }
                Outcome::Interrupted(code) => {
                    self.say(&format!(
                        "interrupted; the job's checkpoints are kept: run pmrun again with --job {} to resume",
                        self.spec.job
                    ));
                    self.shut_down(false);
                    return Ok(code);
                }
                Outcome::Drained => self.finish_drain()?,
                Outcome::Stopped => return self.stopped_unasked(),
                Outcome::Failed(code) => {
                    if let Some(Drain { reply, .. }) = self.drain.take() {
                        let _ = reply.send(requests::refused("the job failed during the drain"));
                    }
                    if let Some(code) = self.after_failure(code)? {
                        return Ok(code);
                    }
                }
            }
        }
    }

    /// A job started again with `--job`: its committed epoch and where each
    /// rank's snapshot of it is, read from the node stores on this machine.
    fn resume_from_disk(&mut self) -> anyhow::Result<Option<Commit>> {
        let records: Vec<_> = self
            .spec
            .nodes
            .iter()
            .filter_map(|n| {
                read_record(&n.store.join(&self.spec.job).join("committed"))
                    .ok()
                    .flatten()
            })
            .collect();
        let Some(newest) = records.iter().max_by_key(|r| r.epoch).copied() else {
            return Ok(None);
        };
        if newest.ranks != 0 && newest.ranks != self.spec.ranks {
            bail!(
                "job {} was checkpointed with {} ranks; run it with -n {} to resume, or choose another --job",
                self.spec.job,
                newest.ranks,
                newest.ranks
            );
        }
        let holders: Vec<BTreeSet<usize>> = (0..self.spec.ranks)
            .map(|r| {
                (0..self.spec.nodes.len())
                    .filter(|&i| {
                        self.spec.nodes[i]
                            .store
                            .join(&self.spec.job)
                            .join(format!("rank-{r}"))
                            .join(format!("epoch-{:020}.manifest", newest.epoch))
                            .exists()
                    })
                    .collect()
            })
            .collect();
        let commit = Commit {
            epoch: newest.epoch,
            step: newest.step,
        };
        self.state.resume(commit, holders)?;
        self.broadcast(&ToAgent::Commit {
            epoch: commit.epoch,
            step: commit.step,
            ranks: self.spec.ranks,
        });
        Ok(Some(commit))
    }

    /// What pmrun says as the job starts: its id (`pmrun ctl --job` needs
    /// it), where it runs, and what protects its checkpoints.
    fn start_line(&self) -> String {
        let s = &self.spec;
        let names: Vec<String> = s
            .nodes
            .iter()
            .map(|n| match s.verbose {
                true => format!("{}@{}", n.name, n.addr),
                false => n.name.clone(),
            })
            .collect();
        let effective = self.state.effective_replicas();
        let protection = match (s.nodes.len(), effective) {
            (1, _) => "no replicas on a single node: a node loss cannot be recovered from".into(),
            (n, r) if r < s.replicas => {
                format!(
                    "{r} replica(s) each (--replicas {} needs more than {n} nodes)",
                    s.replicas
                )
            }
            (_, r) => format!("{r} replica(s) each"),
        };
        format!(
            "job {}: {} rank(s) on {}; checkpoints in {}, {protection} (pmrun ctl --job {} status)",
            s.job,
            s.ranks,
            names.join(" "),
            s.store.display(),
            s.job
        )
    }

    fn broadcast(&mut self, msg: &ToAgent) {
        for (i, agent) in self.agents.iter_mut().enumerate() {
            if self.state.nodes[i].health != Health::Dead {
                agent.send(msg);
            }
        }
    }

    /// Tells every live agent the current placement and waits until all
    /// have applied it.
    fn apply_placement(&mut self) -> anyhow::Result<()> {
        self.generation += 1;
        self.applied.clear();
        let peers: Vec<Peer> = (0..self.agents.len())
            .filter(|&i| self.state.nodes[i].health != Health::Dead)
            .map(|i| Peer {
                node: NodeId::from_index(i),
                control: self.agents[i].control.clone(),
            })
            .collect();
        let mut waiting = BTreeSet::new();
        for i in 0..self.agents.len() {
            if self.state.nodes[i].health == Health::Dead {
                continue;
            }
            let local = self.state.ranks_on(i);
            let partners = local
                .iter()
                .map(|&r| {
                    let p = self.state.partners[r as usize]
                        .iter()
                        .map(|&n| NodeId::from_index(n))
                        .collect();
                    (r, p)
                })
                .collect();
            let msg = ToAgent::Placement {
                generation: self.generation,
                local,
                partners,
                peers: peers.clone(),
            };
            if self.agents[i].send(&msg) {
                waiting.insert(i);
            }
        }
        let deadline = Instant::now() + PLACEMENT_WAIT;
        while !waiting.is_subset(&self.applied) {
            if Instant::now() > deadline {
                bail!(
                    "agents did not apply the new placement within {} s",
                    PLACEMENT_WAIT.as_secs()
                );
            }
            match self.events.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost every agent"),
            }
            self.check_heartbeats();
            waiting.retain(|&i| self.state.nodes[i].health != Health::Dead);
        }
        Ok(())
    }

    /// Starts mpirun for the current placement.
    fn launch(&mut self, tx: &mpsc::Sender<Event>) -> anyhow::Result<()> {
        self.run += 1;
        self.exited = None;
        self.finished.clear();
        self.stopped.clear();
        self.pids.clear();
        self.launched = Instant::now();
        // Steps per second are measured within one run.
        self.commits.clear();
        let join = |f: &dyn Fn(&NodeSpec) -> String| {
            self.spec.nodes.iter().map(f).collect::<Vec<_>>().join(":")
        };
        let mut env = self.spec.env.clone();
        env.push(("PM_JOB".into(), self.spec.job.clone()));
        env.push((
            "PM_NODE_MAP".into(),
            self.state
                .placement
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ));
        env.push((
            "PM_NODE_STORES".into(),
            join(&|n| n.store.display().to_string()),
        ));
        let sockets: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.socket.display().to_string())
            .collect();
        env.push(("PM_NODE_AGENTS".into(), sockets.join(":")));
        env.push((
            "PM_SECRET_FILE".into(),
            self.secret_file.display().to_string(),
        ));
        let committed = self.state.committed.map_or(0, |c| c.epoch);
        env.push(("PM_RESTORE_EPOCH".into(), committed.to_string()));
        // A relaunch never reuses an epoch number: a replica of an epoch of
        // the earlier run can then never count for a new snapshot.
        env.push((
            "PM_FIRST_EPOCH".into(),
            (committed.max(self.max_published) + 1).to_string(),
        ));
        // Every rank runs on this machine (its node is logical): offer
        // mpirun the real core count, so that it oversubscribes (and ranks
        // yield while they wait) rather than spin on shared cores.
        let plan = LaunchPlan {
            ranks: self.spec.ranks,
            hosts: crate::hosts::this_machine(),
            app: self.spec.app.clone(),
            env,
        };
        if self.spec.verbose {
            let map: Vec<String> = (0..self.spec.nodes.len())
                .filter(|&i| self.state.nodes[i].health == Health::Alive)
                .map(|i| {
                    let ranks: Vec<String> =
                        self.state.ranks_on(i).iter().map(u32::to_string).collect();
                    format!("{}[{}]", self.spec.nodes[i].name, ranks.join(","))
                })
                .collect();
            self.say(&format!(
                "launching {} ranks: {}",
                self.spec.ranks,
                map.join(" ")
            ));
        }
        let mut child = self.backend.command(&plan).spawn().map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e} (is it installed and on PATH?)",
                self.backend.name()
            )
        })?;
        self.mpirun_pid = Some(child.id());
        let run = self.run;
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("pmrun-mpirun".into())
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = tx.send(Event::Exited { run, status });
                }
            })?;
        Ok(())
    }

    /// Follows one run of the job until it ends and its end is understood.
    fn supervise(&mut self) -> anyhow::Result<Outcome> {
        let mut stopping: Option<Instant> = None;
        let mut sent_term = false;
        let mut last_status = Instant::now();
        loop {
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the coordinator lost its event sources")
                }
            }
            let exited = self.exited;
            if self.interrupted.load(Ordering::Relaxed) && !sent_term {
                self.console.clear();
                self.signal_job(libc::SIGTERM);
                sent_term = true;
                stopping.get_or_insert_with(Instant::now);
            }
            let lost = self.check_heartbeats();
            if !lost.is_empty() && exited.is_none() && stopping.is_none() {
                // A node with ranks is gone: the job cannot go on as it is.
                if lost.iter().any(|&n| !self.state.ranks_on(n).is_empty()) {
                    // Nothing may depend on a dead node: its ranks are
                    // killed if they still run, and mpirun then ends the job.
                    for &n in &lost {
                        self.kill_ranks(&self.state.ranks_on(n));
                    }
                    stopping = Some(Instant::now());
                } else {
                    self.state.choose_partners();
                    self.apply_placement()?;
                    if let Some((r, _)) = self.recovering.take() {
                        self.say(&format!(
                            "{} ran no ranks; its replicas are being made again on other nodes",
                            r.nodes.join(", ")
                        ));
                    }
                }
            }
            if self.pending_placement && exited.is_none() && stopping.is_none() {
                self.pending_placement = false;
                self.apply_placement()?;
            }
            if let Some(t) = stopping
                && exited.is_none()
            {
                // mpirun usually ends the job by itself once a rank is gone;
                // interrupting it while it aborts can crash it.
                if t.elapsed() > STOP_GRACE {
                    self.signal_job(libc::SIGKILL);
                    self.kill_ranks(&(0..self.spec.ranks).collect::<Vec<_>>());
                } else if t.elapsed() > STOP_GRACE / 3 && !sent_term {
                    self.signal_job(libc::SIGTERM);
                    sent_term = true;
                }
            }
            if !self.said_no_pm
                && self.pids.is_empty()
                && (exited.is_some_and(|(st, _)| !st.success())
                    || self.launched.elapsed() > NO_PM_NOTICE)
            {
                self.said_no_pm = true;
                self.say(&format!(
                    "no rank reached its agent {}: if the application does not use pm \
                     (pm_init), it runs without checkpoints, and a failure restarts it from the beginning",
                    if exited.is_some() {
                        "before the run ended".to_owned()
                    } else {
                        format!("within {} s", NO_PM_NOTICE.as_secs())
                    }
                ));
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let line = status::line(self);
                self.console.status(&line);
            }
            let Some((status, at)) = exited else { continue };
            if self.interrupted.load(Ordering::Relaxed) {
                return Ok(Outcome::Interrupted(130));
            }
            if status.success() {
                // A run that stopped at a checkpoint is never the job's end.
                let all_finished = self.finished.len() == self.spec.ranks as usize;
                return Ok(match &self.drain {
                    Some(_) if !all_finished => Outcome::Drained,
                    None if !self.stopped.is_empty() => Outcome::Stopped,
                    _ => Outcome::Finished,
                });
            }
            // A failure: wait until every node with ranks has either been
            // heard from since the exit or been declared dead.
            let undecided = (0..self.agents.len()).any(|i| {
                self.state.nodes[i].health == Health::Alive
                    && !self.state.ranks_on(i).is_empty()
                    && self.last_seen[i] < at
            });
            if !undecided {
                return Ok(Outcome::Failed(exit_code(status)));
            }
        }
    }

    /// Ends the agents; with `delete`, every node deletes the job's
    /// snapshots and replicas first (and pmrun cleans up after dead nodes
    /// whose stores are on this machine).
    fn shut_down(&mut self, delete: bool) {
        self.console.clear();
        if delete {
            self.broadcast(&ToAgent::DeleteJob);
        } else {
            self.broadcast(&ToAgent::Exit);
        }
        for agent in &mut self.agents {
            let _ = agent.stream.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for agent in &mut self.agents {
            let child = &mut agent.child;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Every node's store is on this machine, so pmrun also cleans up
        // after nodes that died.
        if delete {
            for node in &self.spec.nodes {
                let dir = node.store.join(&self.spec.job);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the job's checkpoints");
                }
                if node.store != self.spec.store {
                    // A virtual node's root, made by pmrun: remove it once empty.
                    let _ = std::fs::remove_dir(&node.store);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir(self.run_dir.parent().unwrap_or(Path::new("/nonexistent")));
        cgroup::remove(&self.spec.job);
    }
}
