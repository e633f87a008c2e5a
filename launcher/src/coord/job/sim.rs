//! A simulated cluster around the real coordinator core: agents that
//! heartbeat, apply placements, list their stores and kill their ranks, and
//! a run whose ranks reach their agents, checkpoint, replicate, stop and
//! finish — all as timed events of a discrete-event simulation, with
//! message latency, in one thread and on a fake clock. The unit tests and
//! `pmbench sim job` drive the very same [`Job`] that `pmrun` does.

use super::*;
use pm_core::proto::{Load, LoadRecord, RankLoad};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The simulated cluster's timings and size.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    /// The last `spares` nodes are spares.
    pub spares: usize,
    pub ranks: u32,
    pub replicas: usize,
    pub heartbeat: Duration,
    pub fail_after: Duration,
    /// One-way delay of every message.
    pub latency: Duration,
    /// From a launch until each rank reaches its agent.
    pub start_delay: Duration,
    /// Between two checkpoints of a run.
    pub checkpoint_every: Duration,
    /// From a snapshot's publish until a partner stores its replica.
    pub replicate_delay: Duration,
    /// From a rank's death until mpirun ends the run.
    pub abort_delay: Duration,
    /// Steps per checkpoint, and steps until the job is done.
    pub steps_per_checkpoint: u64,
    pub steps: u64,
    pub max_restarts: u32,
    /// Each node's capacity (CPUs), and each rank's work per step on one
    /// core (seconds). With work given, the run's speed follows the
    /// placement, and ranks report their loads every `load_every`.
    pub speeds: Vec<f64>,
    pub work: Vec<f64>,
    pub load_every: Duration,
    /// Relative noise on every reported compute time (0.05: ±5 %).
    pub noise: f64,
    /// Whether the ranks declare the job's total steps.
    pub declare_steps: bool,
    pub balance: BalanceSettings,
    /// A flush directory (always reachable) and what it holds at the start.
    pub flush: Option<FlushSettings>,
}

impl SimConfig {
    /// A small job with quick timings, as unit tests want it.
    pub fn small(nodes: usize, ranks: u32, replicas: usize) -> Self {
        Self {
            nodes,
            spares: 0,
            ranks,
            replicas,
            heartbeat: Duration::from_millis(200),
            fail_after: Duration::from_millis(1000),
            latency: Duration::from_millis(1),
            start_delay: Duration::from_millis(300),
            checkpoint_every: Duration::from_millis(500),
            replicate_delay: Duration::from_millis(50),
            abort_delay: Duration::from_millis(100),
            steps_per_checkpoint: 10,
            steps: 100,
            max_restarts: 3,
            speeds: Vec::new(),
            work: Vec::new(),
            load_every: Duration::from_secs(1),
            noise: 0.0,
            declare_steps: true,
            balance: BalanceSettings::default(),
            flush: None,
        }
    }

    /// `small`, with unequal node speeds and equal work: ranks report their
    /// loads, and the run goes as fast as its placement allows.
    pub fn balancing(speeds: &[f64], ranks: u32, work: f64) -> Self {
        let mut cfg = Self::small(speeds.len(), ranks, 1);
        cfg.speeds = speeds.to_vec();
        cfg.work = vec![work; ranks as usize];
        cfg.balance.every = Duration::from_secs(2);
        cfg
    }

    fn speed(&self, n: usize) -> f64 {
        self.speeds.get(n).copied().unwrap_or(1.0)
    }
}

/// How a simulated node fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Agent and ranks die; the agent's link closes at once.
    Crash,
    /// The agent stops (SIGSTOP, a hung link): no more messages, the link
    /// stays open, its ranks run on.
    Hang,
    /// The node loses power: agent and ranks are gone, but no connection
    /// closes (nothing is left to send the FIN).
    PowerOff,
}

#[derive(Clone, Debug)]
enum Ev {
    /// An event for the core.
    Core(Event),
    /// A message reaching an agent.
    ToAgent(NodeId, ToAgent),
    Heartbeat(NodeId),
    /// The run takes a checkpoint.
    Checkpoint {
        run: u64,
        kind: Kind,
    },
    Fail(NodeId, Failure),
    /// Someone signals the run directly (SIGUSR1 to mpirun), or one of its
    /// ranks dies on a live node.
    Outside(RunSignal),
    RankDies,
    /// Ranks report their loads, nodes their gossip records.
    Loads {
        run: u64,
    },
    /// A node's speed changes.
    Speed(NodeId, f64),
}

/// Why a run checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Its schedule; the next one follows.
    Scheduled,
    /// `pmrun ctl checkpoint`.
    Requested,
    /// A stop (drain): every rank stops after it.
    Stop,
}

#[derive(Clone, Debug, Default)]
struct Agent {
    /// Its process runs and talks.
    alive: bool,
    /// Its ranks run (a hung agent's ranks do).
    ranks_alive: bool,
    /// The coordinator's link to it is open.
    linked: bool,
    inventory: Inventory,
    /// A placement it has not applied yet, and the bytes its imports still
    /// move (reported in heartbeats, less by `rate` each time).
    stalled: Option<(u64, u64)>,
    stall_rate: Option<u64>,
}

#[derive(Clone, Debug)]
struct Run {
    run: u64,
    placement: Vec<NodeId>,
    step: u64,
    /// Steps done, with their fraction, and seconds per step now.
    steps_done: f64,
    step_time: f64,
    next_epoch: u64,
    /// mpirun is ending it (a rank died, or it was signalled).
    ending: bool,
    /// Every rank is gone but mpirun hangs until it is killed.
    hung: bool,
}

/// Counts of what happened, for assertions and the benchmark.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Messages delivered to the coordinator, heartbeats among them.
    pub messages_in: u64,
    pub heartbeats: u64,
    pub launches: u64,
    /// Ranks placed on a dead node at a launch (must stay 0).
    pub placed_on_dead: u64,
    /// Ranks placed, with a committed epoch, on a node that does not hold it.
    pub placed_off_holders: u64,
    /// Real time of every core call that decided a relaunch after a loss.
    pub recovery_decisions: Vec<Duration>,
    /// Timeouts after which the core still asked to be called at once:
    /// its driver would spin (must stay 0).
    pub spins: u64,
    /// Calls into the core, and the real time they took.
    pub core_calls: u64,
    pub core_time: Duration,
}

/// The simulated cluster.
pub struct SimCluster {
    pub job: Job,
    pub now: Instant,
    pub cfg: SimConfig,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    agents: Vec<Agent>,
    /// Partners of every rank, as the agents learned them from placements.
    partners: Vec<Vec<NodeId>>,
    run: Option<Run>,
    pub said: Vec<String>,
    /// Epochs recorded in the flush directory, in order.
    pub flushed: Vec<u64>,
    pub replies: Vec<(u64, CtlReply)>,
    pub exit: Option<i32>,
    pub stats: SimStats,
    next_ctl: u64,
    /// A node to fail when the next relaunch's placement reaches agents,
    /// and one to fail when the next balancing move stops the run.
    fail_when_placing: Option<(NodeId, Failure)>,
    fail_when_moving: Option<(NodeId, Failure)>,
    /// Each node's speed now, and its gossip version.
    speeds: Vec<f64>,
    gossip_version: u32,
    noise_seed: u64,
    /// The next time the run would end by itself, mpirun hangs instead,
    /// with every rank gone (the driver reports it alone).
    pub launcher_hangs: bool,
}

impl SimCluster {
    pub fn new(cfg: SimConfig) -> Self {
        let now = Instant::now();
        let nodes = (0..cfg.nodes)
            .map(|i| NodeConfig {
                name: format!("node{}", i + 1),
                slots: 1,
                spare: i >= cfg.nodes - cfg.spares,
                addr: format!("sim:{i}"),
                store: format!("/sim/node{}", i + 1),
                log: None,
                cpus: cfg.speed(i),
                memory_bytes: u64::MAX,
            })
            .collect();
        let job = Job::new(
            Config {
                job: "sim".into(),
                ranks: cfg.ranks,
                nodes,
                replicas: cfg.replicas,
                fail_after: cfg.fail_after,
                keep: false,
                max_restarts: cfg.max_restarts,
                verbose: false,
                store: "/sim".into(),
                asynchronous: false,
                balance: cfg.balance.clone(),
                placement: None,
                launcher_lingers: false,
                slurm: false,
                flush: cfg.flush.clone(),
            },
            now,
        )
        .expect("the simulated job has nodes");
        let mut sim = Self {
            job,
            now,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            agents: vec![
                Agent {
                    alive: true,
                    ranks_alive: true,
                    linked: true,
                    inventory: Inventory::default(),
                    stalled: None,
                    stall_rate: None,
                };
                cfg.nodes
            ],
            partners: vec![Vec::new(); cfg.ranks as usize],
            run: None,
            said: Vec::new(),
            flushed: Vec::new(),
            replies: Vec::new(),
            exit: None,
            stats: SimStats::default(),
            next_ctl: 0,
            fail_when_placing: None,
            fail_when_moving: None,
            speeds: (0..cfg.nodes).map(|i| cfg.speed(i)).collect(),
            gossip_version: 0,
            noise_seed: 1,
            launcher_hangs: false,
            cfg,
        };
        for i in 0..sim.cfg.nodes {
            let node = NodeId::from_index(i);
            let ready = FromAgent::Ready {
                control: format!("sim:{i}"),
                transport: format!("sim:{i}"),
                provider: "tcp".into(),
                pid: 1000 + i as u32,
            };
            sim.at(
                sim.cfg.latency,
                Ev::Core(Event::FromAgent { node, msg: ready }),
            );
            sim.at(sim.cfg.heartbeat, Ev::Heartbeat(node));
        }
        sim
    }

    /// What node `node`'s store holds, for resume tests.
    pub fn set_inventory(&mut self, node: NodeId, inventory: Inventory) {
        self.agents[node.index()].inventory = inventory;
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// Fails `node` after `after`.
    pub fn fail(&mut self, node: NodeId, failure: Failure, after: Duration) {
        self.at(after, Ev::Fail(node, failure));
    }

    /// Fails `node` as soon as a relaunch's placement reaches the agents.
    pub fn fail_during_next_relaunch(&mut self, node: NodeId, failure: Failure) {
        self.fail_when_placing = Some((node, failure));
    }

    /// Fails `node` as soon as a balancing move stops the run.
    pub fn fail_during_next_move(&mut self, node: NodeId, failure: Failure) {
        self.fail_when_moving = Some((node, failure));
    }

    /// `node` applies placements only after imports of `bytes`, which move
    /// `rate` bytes per heartbeat (0: they never move).
    pub fn stall_placements(&mut self, node: NodeId, bytes: u64, rate: u64) {
        let a = &mut self.agents[node.index()];
        a.stall_rate = Some(rate);
        a.stalled = Some((0, bytes));
    }

    /// An event for the core from outside the simulation, after `after`.
    pub fn inject(&mut self, event: Event, after: Duration) {
        self.at(after, Ev::Core(event));
    }

    /// A signal to the run from outside pmrun (SIGUSR1 to mpirun), after `after`.
    pub fn outside_signal(&mut self, signal: RunSignal, after: Duration) {
        self.at(after, Ev::Outside(signal));
    }

    /// One rank of the current run dies on its (live) node, after `after`.
    pub fn rank_dies(&mut self, after: Duration) {
        self.at(after, Ev::RankDies);
    }

    /// `node`'s speed becomes `speed` after `after` (it slows down).
    pub fn slow_down(&mut self, node: NodeId, speed: f64, after: Duration) {
        self.at(after, Ev::Speed(node, speed));
    }

    fn set_speed(&mut self, node: NodeId, speed: f64) {
        self.speeds[node.index()] = speed;
        if let Some(run) = &mut self.run {
            run.step_time = step_time(&self.cfg, &self.speeds, &run.placement);
        }
    }

    /// A deterministic factor within ±`noise`.
    fn noise(&mut self) -> f64 {
        self.noise_seed = self
            .noise_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (self.noise_seed >> 11) as f64 / (1u64 << 53) as f64;
        1.0 + self.cfg.noise * (2.0 * u - 1.0)
    }

    /// Every rank reports its window; every node its gossip record.
    fn report_loads(&mut self, run_id: u64) {
        let Some(run) = self.run.as_ref().filter(|r| r.run == run_id && !r.ending) else {
            return;
        };
        let placement = run.placement.clone();
        let (step, step_time) = (run.step, run.step_time);
        let window = (self.cfg.load_every.as_secs_f64() / step_time).max(1.0) as u64;
        let mut count = vec![0u32; self.cfg.nodes];
        for n in &placement {
            count[n.index()] += 1;
        }
        for (r, &n) in placement.iter().enumerate() {
            if !self.agents[n.index()].ranks_alive {
                continue;
            }
            let share = (self.speeds[n.index()] / f64::from(count[n.index()])).min(1.0);
            let per_step = self.cfg.work[r] / share * self.noise();
            let load = RankLoad {
                rank: r as u32,
                step,
                window_steps: window,
                compute_s: per_step * window as f64,
                compute_sq_s2: per_step * per_step * window as f64,
                cpu_s: per_step * window as f64,
                io_wait_s: 0.0,
                state_bytes: 1 << 20,
                total_steps: self.cfg.declare_steps.then_some(self.cfg.steps),
            };
            self.reply_from(n, FromAgent::RankLoad { load, share });
        }
        self.gossip_version += 1;
        for i in 0..self.cfg.nodes {
            let node = NodeId::from_index(i);
            let work: f64 = (0..placement.len())
                .filter(|&r| placement[r] == node)
                .map(|r| self.cfg.work[r])
                .sum();
            let record = LoadRecord {
                node: i as u32,
                version: self.gossip_version,
                version_age: 0,
                age: 0,
                load: (work / self.speeds[i]) as f32,
                capacity: self.speeds[i] as f32,
            };
            self.reply_from(
                node,
                FromAgent::Gossip {
                    records: vec![record],
                },
            );
        }
        self.at(self.cfg.load_every, Ev::Loads { run: run_id });
    }

    /// Sends a `pmrun ctl` request after `after`; its id.
    pub fn ctl(&mut self, req: CtlRequest, after: Duration) -> u64 {
        self.next_ctl += 1;
        let id = self.next_ctl;
        self.at(after, Ev::Core(Event::Ctl { id, req }));
        id
    }

    /// Runs until the job ends or `limit` of simulated time has passed;
    /// the exit code, if it ended.
    pub fn run_until_done(&mut self, limit: Duration) -> Option<i32> {
        let end = self.now + limit;
        while self.exit.is_none() {
            let next_event = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_timeout = self.job.poll_timeout();
            let next = match (next_event, next_timeout) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > end {
                self.now = end;
                break;
            }
            self.now = self.now.max(next);
            if next_event == Some(next) {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    break;
                };
                let ev = self
                    .events
                    .remove(&seq)
                    .expect("every queued event is stored");
                self.deliver(ev);
            } else {
                self.timed(|job, now| job.handle_timeout(now));
                if self.job.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.stats.spins += 1;
                    // Step past it, as a real clock would.
                    self.now += Duration::from_millis(1);
                }
            }
            self.carry_out();
        }
        self.exit
    }

    /// Runs for `d` of simulated time.
    pub fn advance(&mut self, d: Duration) {
        let _ = self.run_until_done(d);
    }

    fn deliver(&mut self, ev: Ev) {
        match ev {
            Ev::Core(event) => {
                if let Event::FromAgent { node, .. } = &event
                    && !self.agents[node.index()].alive
                {
                    return;
                }
                self.stats.messages_in += 1;
                self.timed(|job, now| job.handle(event, now));
            }
            Ev::ToAgent(node, msg) => self.agent_receives(node, msg),
            Ev::Heartbeat(node) => {
                let a = &self.agents[node.index()];
                if a.alive {
                    let load = Load {
                        ranks: 0,
                        step_seconds: 0.0,
                        cpus: 1.0,
                    };
                    let waiting = self.stalled_progress(node);
                    self.stats.heartbeats += 1;
                    let msg = FromAgent::Heartbeat {
                        seq: 0,
                        load,
                        waiting,
                    };
                    self.at(self.cfg.latency, Ev::Core(Event::FromAgent { node, msg }));
                    self.at(self.cfg.heartbeat, Ev::Heartbeat(node));
                }
            }
            Ev::Checkpoint { run, kind } => self.checkpoint(run, kind),
            Ev::Fail(node, failure) => self.fail_now(node, failure),
            Ev::Outside(signal) => {
                if let Some(run) = self.run.as_ref().map(|r| r.run) {
                    self.signal(run, signal);
                }
            }
            Ev::Loads { run } => self.report_loads(run),
            Ev::Speed(node, speed) => self.set_speed(node, speed),
            Ev::RankDies => {
                if let Some(run) = self.run.as_mut().filter(|r| !r.ending) {
                    run.ending = true;
                    let r = run.run;
                    self.run_ends(r, 137, self.cfg.abort_delay);
                }
            }
        }
    }

    /// A stalled placement's imports move on; applied once they are done.
    fn stalled_progress(&mut self, node: NodeId) -> Option<Waiting> {
        let a = &mut self.agents[node.index()];
        let (generation, bytes_left) = a.stalled?;
        if generation == 0 {
            return None;
        }
        let left = bytes_left.saturating_sub(a.stall_rate.unwrap_or(0));
        if left == 0 {
            a.stalled = None;
            a.stall_rate = None;
            self.reply_from(node, FromAgent::PlacementApplied { generation });
            return None;
        }
        a.stalled = Some((generation, left));
        Some(Waiting {
            generation,
            imports: 1,
            bytes_left: left,
        })
    }

    fn fail_now(&mut self, node: NodeId, failure: Failure) {
        let a = &mut self.agents[node.index()];
        if !a.alive {
            return;
        }
        a.alive = false;
        if failure != Failure::Hang {
            a.ranks_alive = false;
            if a.linked && failure == Failure::Crash {
                let reason = "it closed its connection".to_owned();
                self.at(self.cfg.latency, Ev::Core(Event::LinkLost { node, reason }));
            }
            // mpirun sees the node's ranks die and ends the run.
            if let Some(run) = &mut self.run
                && !run.ending
                && run.placement.contains(&node)
            {
                run.ending = true;
                let r = run.run;
                self.at(
                    self.cfg.abort_delay,
                    Ev::Core(Event::RunExited { run: r, code: 137 }),
                );
            }
        }
    }

    /// Calls the core, counting the call and its real time.
    /// A call that placed the job again while a node failure is being
    /// handled decided that recovery; its time is kept.
    fn timed(&mut self, call: impl FnOnce(&mut Job, Instant)) {
        let generation = self.job.generation;
        let started = std::time::Instant::now();
        call(&mut self.job, self.now);
        let took = started.elapsed();
        self.stats.core_calls += 1;
        self.stats.core_time += took;
        let recovering = self
            .job
            .recovering
            .as_ref()
            .is_some_and(|o| o.record.kind == pm_core::proto::RecoveryKind::NodeFailure);
        if self.job.generation != generation && self.job.run > 0 && recovering {
            self.stats.recovery_decisions.push(took);
        }
    }

    fn reply_from(&mut self, node: NodeId, msg: FromAgent) {
        self.at(self.cfg.latency, Ev::Core(Event::FromAgent { node, msg }));
    }

    fn agent_receives(&mut self, node: NodeId, msg: ToAgent) {
        let a = &self.agents[node.index()];
        if !a.alive || !a.linked {
            return;
        }
        match msg {
            ToAgent::Placement {
                generation,
                partners,
                ..
            } => {
                for (r, p) in partners {
                    self.partners[r as usize] = p;
                }
                if self.job.run > 0
                    && matches!(self.job.phase, Phase::Placing { .. })
                    && let Some((victim, failure)) = self.fail_when_placing.take()
                {
                    self.fail_now(victim, failure);
                    if !self.agents[node.index()].alive {
                        return;
                    }
                }
                if let Some((_, bytes)) = self.agents[node.index()].stalled {
                    self.agents[node.index()].stalled = Some((generation, bytes));
                    return;
                }
                self.reply_from(node, FromAgent::PlacementApplied { generation });
            }
            ToAgent::Inventory => {
                let inv = self.agents[node.index()].inventory.clone();
                self.reply_from(node, FromAgent::Inventory(inv));
            }
            ToAgent::KillRanks => {
                let mut killed = Vec::new();
                if let Some(run) = &mut self.run {
                    killed = (0..run.placement.len() as u32)
                        .filter(|&r| run.placement[r as usize] == node)
                        .collect();
                    if !killed.is_empty() && !run.ending {
                        run.ending = true;
                        let r = run.run;
                        self.at(
                            self.cfg.abort_delay,
                            Ev::Core(Event::RunExited { run: r, code: 137 }),
                        );
                    }
                }
                self.reply_from(node, FromAgent::RanksKilled { ranks: killed });
            }
            ToAgent::Commit { .. } => {}
            ToAgent::SetCpus { cpus } => {
                self.set_speed(node, cpus);
                let enforced = Ok("simulated".to_owned());
                self.reply_from(node, FromAgent::CpusSet { cpus, enforced });
            }
            ToAgent::Exit | ToAgent::DeleteJob => self.agents[node.index()].alive = false,
            // The flush directory is always reachable and fast.
            ToAgent::CopyFlush { way, epoch, ranks } => {
                let answer = FromAgent::FlushCopied {
                    way,
                    epoch,
                    copied: ranks,
                    failed: Vec::new(),
                    bytes_written: 0,
                };
                self.reply_from(node, answer);
            }
        }
    }

    /// Every rank writes its snapshot of the run's next epoch; partners
    /// store replicas; the job finishes after its last steps.
    fn checkpoint(&mut self, run_id: u64, kind: Kind) {
        let stop = kind == Kind::Stop;
        let cfg = self.cfg.clone();
        let Some(run) = self.run.as_mut().filter(|r| r.run == run_id && !r.ending) else {
            return;
        };
        if kind == Kind::Scheduled && run.step >= cfg.steps {
            // Done: every rank finishes, then mpirun ends successfully.
            run.ending = true;
            let placement = run.placement.clone();
            for (r, &n) in placement.iter().enumerate() {
                self.reply_from(n, FromAgent::Finished { rank: r as u32 });
            }
            self.run_ends(run_id, 0, cfg.latency * 2);
            return;
        }
        if kind == Kind::Scheduled {
            run.steps_done += cfg.checkpoint_every.as_secs_f64() / run.step_time;
            run.step = (run.steps_done as u64).min(cfg.steps);
        }
        let (epoch, step) = (run.next_epoch, run.step);
        run.next_epoch += 1;
        if stop {
            run.ending = true;
        }
        let placement = run.placement.clone();
        for (r, &n) in placement.iter().enumerate() {
            let rank = r as u32;
            if !self.agents[n.index()].ranks_alive {
                continue;
            }
            let published = FromAgent::Published {
                rank,
                epoch,
                step,
                state_bytes: 1 << 20,
                written_bytes: 1 << 16,
            };
            self.reply_from(n, published);
            for p in self.partners[r].clone() {
                if self.agents[p.index()].alive {
                    let stored = FromAgent::ReplicaStored {
                        rank,
                        epoch,
                        holder: p,
                    };
                    self.at(
                        cfg.replicate_delay,
                        Ev::Core(Event::FromAgent {
                            node: n,
                            msg: stored,
                        }),
                    );
                }
            }
            if stop {
                self.at(
                    cfg.replicate_delay,
                    Ev::Core(Event::FromAgent {
                        node: n,
                        msg: FromAgent::Stopped { rank, epoch, step },
                    }),
                );
            }
        }
        if stop {
            self.at(
                cfg.replicate_delay + cfg.latency,
                Ev::Core(Event::RunExited {
                    run: run_id,
                    code: 0,
                }),
            );
        } else if kind == Kind::Scheduled {
            self.at(
                cfg.checkpoint_every,
                Ev::Checkpoint {
                    run: run_id,
                    kind: Kind::Scheduled,
                },
            );
        }
    }

    fn carry_out(&mut self) {
        while let Some(action) = self.job.poll_action() {
            match action {
                Action::Send { node, msg } => self.at(self.cfg.latency, Ev::ToAgent(node, msg)),
                Action::Disconnect { node } => self.agents[node.index()].linked = false,
                Action::Launch { run, plan } => self.launch(run, plan),
                Action::Signal { run, signal } => self.signal(run, signal),
                Action::Reply { id, reply } => self.replies.push((id, reply)),
                Action::Say(text) => self.said.push(text),
                Action::Exit { code, .. } => self.exit = Some(code),
                Action::RecordFlush { epoch, .. } => {
                    self.flushed.push(epoch);
                    let recorded = Event::FlushRecorded { epoch, error: None };
                    self.at(self.cfg.latency, Ev::Core(recorded));
                }
            }
        }
    }

    fn launch(&mut self, run: u64, plan: RunPlan) {
        self.stats.launches += 1;
        let state = self.job.state();
        for (r, &n) in plan.placement.iter().enumerate() {
            if !self.agents[n.index()].alive || state.node(n).health != Health::Alive {
                self.stats.placed_on_dead += 1;
            }
            if state.committed.is_some() && !state.holders_of_committed(r as u32).contains(&n) {
                self.stats.placed_off_holders += 1;
            }
        }
        let step = state.committed.map_or(0, |c| c.step);
        self.timed(|job, now| job.handle(Event::RunStarted { run, pid: 1 }, now));
        self.timed(|job, now| job.handle(Event::RunChildren { run, any: true }, now));
        for (r, &n) in plan.placement.iter().enumerate() {
            let hello = FromAgent::RankHello {
                rank: r as u32,
                pid: 10_000 + r as u32,
            };
            self.at(
                self.cfg.start_delay,
                Ev::Core(Event::FromAgent {
                    node: n,
                    msg: hello,
                }),
            );
        }
        self.at(
            self.cfg.start_delay + self.cfg.checkpoint_every,
            Ev::Checkpoint {
                run,
                kind: Kind::Scheduled,
            },
        );
        if !self.cfg.work.is_empty() {
            self.at(self.cfg.start_delay, Ev::Loads { run });
        }
        self.run = Some(Run {
            run,
            step_time: step_time(&self.cfg, &self.speeds, &plan.placement),
            placement: plan.placement,
            step,
            steps_done: step as f64,
            next_epoch: plan.first_epoch,
            ending: false,
            hung: false,
        });
    }

    /// mpirun ends run `run_id` with `code` after `after` — or hangs, when
    /// [`Self::launcher_hangs`], until the kill its orphan report brings.
    fn run_ends(&mut self, run_id: u64, code: i32, after: Duration) {
        if !std::mem::take(&mut self.launcher_hangs) {
            return self.at(after, Ev::Core(Event::RunExited { run: run_id, code }));
        }
        if let Some(run) = self.run.as_mut() {
            run.hung = true;
        }
        // Its ranks are gone; it stays.
        self.at(
            after,
            Ev::Core(Event::RunChildren {
                run: run_id,
                any: false,
            }),
        );
    }

    fn signal(&mut self, run_id: u64, signal: RunSignal) {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.run == run_id && (!r.ending || r.hung))
        else {
            return;
        };
        if run.hung {
            run.hung = false;
            if signal == RunSignal::Kill {
                let at = self.cfg.latency;
                self.at(
                    at,
                    Ev::Core(Event::RunExited {
                        run: run_id,
                        code: 137,
                    }),
                );
            }
            return;
        }
        match signal {
            RunSignal::Checkpoint => self.at(
                self.cfg.latency,
                Ev::Checkpoint {
                    run: run_id,
                    kind: Kind::Requested,
                },
            ),
            RunSignal::Stop => {
                if self.job.balancer.moving.is_some()
                    && let Some((victim, failure)) = self.fail_when_moving.take()
                {
                    self.at(Duration::ZERO, Ev::Fail(victim, failure));
                }
                self.at(
                    self.cfg.latency,
                    Ev::Checkpoint {
                        run: run_id,
                        kind: Kind::Stop,
                    },
                )
            }
            RunSignal::Terminate | RunSignal::Kill => {
                run.ending = true;
                let code = if signal == RunSignal::Kill { 137 } else { 143 };
                self.at(
                    self.cfg.latency,
                    Ev::Core(Event::RunExited { run: run_id, code }),
                );
            }
        }
    }
}

/// Seconds per step of a placement: the slowest node's work over its
/// speed; without work given, the configured steps per checkpoint.
fn step_time(cfg: &SimConfig, speeds: &[f64], placement: &[NodeId]) -> f64 {
    if cfg.work.is_empty() {
        return cfg.checkpoint_every.as_secs_f64() / cfg.steps_per_checkpoint as f64;
    }
    let mut load = vec![0.0; speeds.len()];
    for (r, n) in placement.iter().enumerate() {
        load[n.index()] += cfg.work[r];
    }
    load.iter()
        .zip(speeds)
        .map(|(l, s)| l / s)
        .fold(0.0, f64::max)
        .max(1e-9)
}
