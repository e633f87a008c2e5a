//! Live balancing: per-rank estimates from the ranks' measurements, node
//! capacities from gossip, a decision every `--balance-every` seconds (or
//! on `pmrun ctl balance`) by the balancer's `rebalance`, and the move.
//!
//! A move is the path drain and recovery take: the targets that lack a
//! rank's committed snapshot become its partners first (so the stop's
//! checkpoint is replicated to them), the ranks stop at a checkpoint, the
//! epoch commits, the ranks move, and the job is placed and launched again;
//! each rank restores on its new node from the replica there.

use super::*;
use pm_core::balance::{
    self, BalanceConfig, MoveCostModel, NodeInfo, NodeState, RankClass, RankInfo, Verdict,
};
use pm_core::estimate::{Estimate, EstimatorConfig};
use pm_core::proto::{Decision, LoadRecord, RankLoad, RecoveryKind};

/// Whether pmrun moves ranks for load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceMode {
    /// Decide, and move when it pays.
    Auto,
    /// Never decide (except on `pmrun ctl balance`, which then only reports).
    Off,
    /// Decide and log the plan, but never move.
    DryRun,
}

impl BalanceMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Off => "off",
            Self::DryRun => "dry-run",
        }
    }
}

/// What the balancer is told about the job besides the measurements.
#[derive(Clone, Debug)]
pub struct BalanceSettings {
    pub mode: BalanceMode,
    /// Between two decisions.
    pub every: Duration,
    /// Starting estimates per rank (from the history of earlier runs, or
    /// `--weights`): the initial placement is weighted when there are some.
    pub initial: Option<Vec<Estimate>>,
    /// Steps the job has in all, as the user said (`--steps`), or as the
    /// history remembers them.
    pub total_steps_hint: Option<u64>,
    pub total_steps_history: Option<u64>,
    /// At most this share of a node's ranks may be I/O-bound (`--io-mix`).
    pub io_mix: Option<f64>,
    /// Where `initial` comes from, for the log ("the history of earlier runs", "--weights").
    pub initial_source: String,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        Self {
            mode: BalanceMode::Auto,
            every: Duration::from_secs(10),
            initial: None,
            total_steps_hint: None,
            total_steps_history: None,
            io_mix: None,
            initial_source: String::new(),
        }
    }
}

/// The balancer's live state inside the coordinator.
#[derive(Clone, Debug)]
pub(super) struct Balancer {
    pub estimates: Vec<Estimate>,
    pub est_cfg: EstimatorConfig,
    /// Per rank: bytes of state, and block-I/O seconds per step.
    pub state_bytes: Vec<u64>,
    pub io_wait: Vec<f64>,
    /// The job's step, and the total the application declared.
    pub step: u64,
    pub declared_total: Option<u64>,
    pub cost: MoveCostModel,
    pub round: u64,
    pub last_moved_round: Vec<Option<u64>>,
    pub left_node: Vec<Option<NodeId>>,
    pub next_decision: Option<Instant>,
    pub last: Option<Decision>,
    /// Per node: the newest gossip record and when it arrived.
    pub gossip: Vec<Option<(LoadRecord, Instant)>>,
    /// A move in progress.
    pub moving: Option<Moving>,
    /// Bytes of the last move, until its freeze is known.
    pub move_bytes: u64,
    /// Ranks that reported measurements in this job (not only history).
    pub reported: Vec<bool>,
    /// The job's measured seconds per step (from rank 0's reports: steps
    /// done between two of them over the time between), and the last report.
    pub measured_step_s: Option<f64>,
    pub last_report: Option<(Instant, u64)>,
}

/// A move decided and under way.
#[derive(Clone, Debug)]
pub(super) struct Moving {
    pub moves: Vec<(u32, NodeId)>,
    pub bytes: u64,
    pub started: Instant,
}

/// Longest a move waits for its targets to hold the stop's checkpoint.
const FILL_WAIT: Duration = Duration::from_secs(120);

impl Balancer {
    pub fn new(ranks: u32, nodes: usize, initial: Option<Vec<Estimate>>) -> Self {
        let n = ranks as usize;
        Self {
            estimates: initial.unwrap_or_else(|| vec![Estimate::new(); n]),
            est_cfg: EstimatorConfig::default(),
            state_bytes: vec![0; n],
            io_wait: vec![0.0; n],
            step: 0,
            declared_total: None,
            cost: MoveCostModel::default(),
            round: 0,
            last_moved_round: vec![None; n],
            left_node: vec![None; n],
            next_decision: None,
            last: None,
            gossip: vec![None; nodes],
            moving: None,
            move_bytes: 0,
            reported: vec![false; n],
            measured_step_s: None,
            last_report: None,
        }
    }
}

/// Whether gossip version `a` is newer than `b` (versions wrap).
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Job {
    /// The capacity the balancer counts for a node: gossip's word for it
    /// when there is one, else the CPUs it was started with.
    pub(super) fn capacity_of(&self, n: NodeId) -> f64 {
        match &self.balancer.gossip[n.index()] {
            Some((r, _)) if r.capacity > 0.0 => f64::from(r.capacity),
            _ => self.nodes[n.index()].cpus,
        }
    }

    /// A weighted first placement when weights are known (history,
    /// `--weights`), by slots otherwise; or the user's own.
    pub(super) fn initial_placement(&mut self, given: Option<Vec<NodeId>>) {
        self.sync_weights();
        if let Some(map) = given {
            self.state.set_placement(map);
            return;
        }
        if !self.balancer.estimates.iter().any(|e| e.samples() > 0) {
            return;
        }
        let ranks: Vec<RankInfo> = (0..self.cfg.ranks)
            .map(|r| RankInfo::with_weight(self.state.weights[r as usize]))
            .collect();
        let nodes: Vec<NodeInfo> = (0..self.nodes.len())
            .map(|i| {
                let spare = self.cfg.nodes[i].spare;
                NodeInfo {
                    // Spares stay empty, as without weights.
                    state: if spare {
                        NodeState::Draining
                    } else {
                        NodeState::Up
                    },
                    ..self.node_info(NodeId::from_index(i))
                }
            })
            .collect();
        match balance::place(&ranks, &nodes) {
            Ok(map) => {
                let weights = self.state.weights.clone();
                let by_slots: Vec<u32> = self.state.placement.iter().map(|n| n.0).collect();
                let before = balance::step_time(weights.iter().copied(), &by_slots, &nodes);
                let after = balance::step_time(weights.iter().copied(), &map, &nodes);
                // Contiguous blocks keep neighbours together: give them up
                // only for a clear gain.
                if after > before * 0.95 {
                    return;
                }
                let map: Vec<NodeId> = map.into_iter().map(NodeId).collect();
                self.state.set_placement(map);
                let source = self.cfg.balance.initial_source.clone();
                self.say(format!(
                    "placing the ranks by their weights (from {source})"
                ));
            }
            Err(e) => tracing::warn!(error = %e, "no weighted placement; placing by slots"),
        }
    }

    fn node_info(&self, n: NodeId) -> NodeInfo {
        let node = self.state.node(n);
        let io_slots = self.cfg.balance.io_mix.map_or(u32::MAX, |mix| {
            ((f64::from(node.slots) * mix).round() as u32).max(1)
        });
        NodeInfo {
            capacity: self.capacity_of(n),
            state: match node.health {
                Health::Alive => NodeState::Up,
                Health::Drained => NodeState::Draining,
                Health::Dead => NodeState::Dead,
            },
            memory_bytes: self.cfg.nodes[n.index()].memory_bytes,
            io_slots,
        }
    }

    /// The weights and capacities re-placement uses follow the estimates.
    pub(super) fn sync_weights(&mut self) {
        let known = self.balancer.estimates.iter().any(|e| e.samples() > 0);
        for (w, e) in self.state.weights.iter_mut().zip(&self.balancer.estimates) {
            *w = if known { e.weight().max(1e-9) } else { 1.0 };
        }
        let caps: Vec<f64> = (0..self.nodes.len())
            .map(|i| self.capacity_of(NodeId::from_index(i)))
            .collect();
        self.state.capacity = caps;
    }

    /// A rank's measurements: its work per step is its compute time per
    /// step times the share of a core it had, so that a weight does not
    /// change just because the rank moved to a faster node.
    pub(super) fn rank_load(&mut self, load: RankLoad, share: f64, now: Instant) {
        let r = load.rank as usize;
        if r >= self.cfg.ranks as usize {
            return;
        }
        let b = &mut self.balancer;
        if r == 0 {
            if let Some((t, s)) = b.last_report
                && load.step > s
            {
                let x = now.saturating_duration_since(t).as_secs_f64() / (load.step - s) as f64;
                b.measured_step_s = Some(b.measured_step_s.map_or(x, |m| 0.7 * m + 0.3 * x));
            }
            b.last_report = Some((now, load.step));
        }
        b.step = b.step.max(load.step);
        if load.total_steps.is_some() {
            b.declared_total = load.total_steps;
        }
        b.state_bytes[r] = load.state_bytes;
        if load.window_steps > 0 {
            b.reported[r] = true;
            let steps = load.window_steps as f64;
            let work = load.compute_s / steps * share.clamp(1e-6, 1.0);
            b.estimates[r].observe(work, &b.est_cfg);
            b.io_wait[r] = load.io_wait_s / steps;
        }
    }

    pub(super) fn gossip_records(&mut self, records: Vec<LoadRecord>, now: Instant) {
        for rec in records {
            let Some(slot) = self.balancer.gossip.get_mut(rec.node as usize) else {
                continue;
            };
            let fresher = match slot {
                Some((old, _)) => newer(rec.version, old.version) || rec.age < old.age,
                None => true,
            };
            if fresher {
                *slot = Some((rec, now));
            }
        }
    }

    /// How much slower the job really steps than its weights and
    /// capacities predict (MPI progress, throttling and contention the
    /// model does not see): the weights are scaled by it, so that the
    /// predicted step time now is the measured one and a move's gain is
    /// counted in real seconds. 1 until the step time is measured.
    fn calibration(&self) -> f64 {
        let Some(measured) = self.balancer.measured_step_s else {
            return 1.0;
        };
        let placement: Vec<u32> = self.state.placement.iter().map(|n| n.0).collect();
        let nodes: Vec<NodeInfo> = (0..self.nodes.len())
            .map(|i| self.node_info(NodeId::from_index(i)))
            .collect();
        let predicted = balance::step_time(self.state.weights.iter().copied(), &placement, &nodes);
        if predicted > 0.0 && predicted.is_finite() {
            (measured / predicted).clamp(0.1, 100.0)
        } else {
            1.0
        }
    }

    /// Steps still to run, and where that figure comes from.
    fn remaining(&self) -> (u64, &'static str) {
        let step = self.balancer.step;
        let declared = self
            .balancer
            .declared_total
            .or(self.cfg.balance.total_steps_hint);
        if let Some(total) = declared {
            return (total.saturating_sub(step), "declared");
        }
        if let Some(total) = self.cfg.balance.total_steps_history {
            return (total.saturating_sub(step), "history");
        }
        // As many again as so far: a job is as likely to be early as late.
        (step, "assumed equal to the steps run so far")
    }

    /// Why no decision can be taken now, if none can.
    fn cannot_decide(&self) -> Option<String> {
        if self.phase != Phase::Running {
            return Some("the job is not running right now".into());
        }
        if self.pids.len() < self.cfg.ranks as usize {
            return Some("the job's ranks are still starting".into());
        }
        if self.drain.is_some() || self.recovering.is_some() || self.balancer.moving.is_some() {
            return Some("another drain, recovery or move is in progress".into());
        }
        if self.state.committed.is_none() {
            return Some("no checkpoint is committed yet (a move restores from one)".into());
        }
        let missing = self
            .balancer
            .estimates
            .iter()
            .filter(|e| e.samples() == 0)
            .count();
        if missing > 0 {
            return Some(format!(
                "{missing} rank(s) have not reported their load yet"
            ));
        }
        None
    }

    /// Decides about balancing: the balancer's plan on the current map, and
    /// a move if it pays and the mode allows; every decision is logged with
    /// its numbers. `ctl` is the requester of `pmrun ctl balance`.
    pub(super) fn decide_balance(&mut self, ctl: Option<u64>, now: Instant) {
        self.balancer.next_decision = Some(now + self.cfg.balance.every);
        if let Some(why) = self.cannot_decide() {
            if let Some(id) = ctl {
                self.refuse(id, why);
            }
            return;
        }
        self.sync_weights();
        let calibration = self.calibration();
        let cfg = &self.balancer.est_cfg;
        let ranks: Vec<RankInfo> = (0..self.cfg.ranks)
            .map(|r| {
                let i = r as usize;
                let e = &self.balancer.estimates[i];
                let home = self.state.placement[i];
                let dirty = self
                    .state
                    .committed_bytes
                    .map_or(0, |(_, w)| w / u64::from(self.cfg.ranks.max(1)));
                RankInfo {
                    weight: e.weight() * calibration,
                    confidence: e.confidence(cfg),
                    state_bytes: self.balancer.state_bytes[i],
                    dirty_bytes: dirty,
                    class: RankClass::classify(e.weight(), self.balancer.io_wait[i]),
                    node: Some(home.0),
                    replicas: self
                        .state
                        .holders_of_committed(r)
                        .iter()
                        .filter(|&&n| n != home && self.state.node(n).usable())
                        .map(|n| n.0)
                        .collect(),
                    last_moved_round: self.balancer.last_moved_round[i],
                    left_node: self.balancer.left_node[i].map(|n| n.0),
                    needs_replica: false,
                }
            })
            .collect();
        let nodes: Vec<NodeInfo> = (0..self.nodes.len())
            .map(|i| self.node_info(NodeId::from_index(i)))
            .collect();
        let (remaining, from) = self.remaining();
        let round = self.balancer.round;
        self.balancer.round += 1;
        let plan = match balance::rebalance(
            &ranks,
            &nodes,
            &self.balancer.cost,
            remaining,
            round,
            &BalanceConfig::default(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no balancing plan");
                if let Some(id) = ctl {
                    self.refuse(id, e.to_string());
                }
                return;
            }
        };
        let mode = self.cfg.balance.mode;
        let outcome = match (plan.verdict, mode) {
            (Verdict::Balanced, _) => "balanced: no move improves the step time clearly",
            (Verdict::Rejected, _) => "not worth it: the gain does not pay for the freeze",
            (Verdict::Execute, BalanceMode::Auto) => "moving",
            (Verdict::Execute, BalanceMode::DryRun) => "dry run: would move",
            (Verdict::Execute, BalanceMode::Off) => "balancing is off: would move",
        };
        let confidence = if plan.moves.is_empty() {
            0.0
        } else {
            plan.moves
                .iter()
                .map(|m| ranks[m.rank as usize].confidence)
                .sum::<f64>()
                / plan.moves.len() as f64
        };
        let decision = Decision {
            at_s: now.saturating_duration_since(self.started).as_secs_f64(),
            step: self.balancer.step,
            step_s: plan.step_before,
            predicted_s: plan.step_after,
            lower_bound_s: plan.lower_bound,
            gain_s: plan.gain_s,
            freeze_s: plan.cost_s,
            remaining_steps: remaining,
            remaining_from: from.into(),
            confidence,
            moves: plan
                .moves
                .iter()
                .map(|m| {
                    let from = m
                        .from
                        .map_or("-".to_owned(), |f| self.name(NodeId(f)).to_owned());
                    (m.rank, from, self.name(NodeId(m.to)).to_owned())
                })
                .collect(),
            outcome: outcome.into(),
        };
        let text = super::super::render::decision(&decision);
        tracing::info!("{text}");
        // Every plan that would move is said; the others only logged.
        let moving = plan.verdict == Verdict::Execute && mode == BalanceMode::Auto;
        if plan.verdict == Verdict::Execute || self.cfg.verbose {
            self.say(text);
        }
        self.balancer.last = Some(decision.clone());
        if let Some(id) = ctl {
            self.reply(id, CtlReply::Balanced(decision));
        }
        if moving {
            let moves: Vec<(u32, NodeId)> =
                plan.moves.iter().map(|m| (m.rank, NodeId(m.to))).collect();
            let bytes = plan.moves.iter().map(|m| m.bytes).sum();
            self.start_move(moves, bytes, now);
        }
    }

    /// Targets that lack a moving rank's committed snapshot become its
    /// partners (agents fill them), then the ranks stop at a checkpoint.
    fn start_move(&mut self, moves: Vec<(u32, NodeId)>, bytes: u64, now: Instant) {
        for &(r, to) in &moves {
            if !self.state.holders_of_committed(r).contains(&to) {
                self.state.pin_partner(r, to);
            }
        }
        self.partners_changed(now);
        self.balancer.moving = Some(Moving {
            moves,
            bytes,
            started: now,
        });
        self.actions.push_back(Action::Signal {
            run: self.run,
            signal: RunSignal::Stop,
        });
    }

    /// The stop's epoch is committed: once every target holds it (or the
    /// fill wait is over: those that do not stay where they are), the ranks
    /// move and the job is placed again. `false` while waiting.
    pub(super) fn move_committed(&mut self, now: Instant, deadline_passed: bool) -> bool {
        let Some(m) = self.balancer.moving.as_ref() else {
            return true;
        };
        let ready = |job: &Job, &(r, to): &(u32, NodeId)| {
            job.state.node(to).usable() && job.state.holders_of_committed(r).contains(&to)
        };
        let all = m.moves.iter().all(|mv| ready(self, mv));
        if !all && !deadline_passed && now.saturating_duration_since(m.started) < FILL_WAIT {
            return false;
        }
        let m = self.balancer.moving.take().expect("checked above");
        let (go, stay): (Vec<_>, Vec<_>) = m.moves.iter().partition(|mv| ready(self, mv));
        if !stay.is_empty() {
            tracing::warn!(
                ?stay,
                "targets do not hold the ranks' snapshots: those ranks stay"
            );
        }
        let round = self.balancer.round;
        for &(r, _) in &go {
            self.balancer.last_moved_round[r as usize] = Some(round);
            self.balancer.left_node[r as usize] = Some(self.state.placement[r as usize]);
        }
        let moved: Vec<(u32, String, String)> = go
            .iter()
            .map(|&(r, to)| {
                let from = self.name(self.state.placement[r as usize]).to_owned();
                (r, from, self.name(to).to_owned())
            })
            .collect();
        self.state.apply_moves(&go);
        self.state.forget_uncommitted();
        let commit = self.state.committed.unwrap_or(Commit { epoch: 0, step: 0 });
        let list: Vec<String> = moved
            .iter()
            .map(|(r, f, t)| format!("rank {r} {f}→{t}"))
            .collect();
        self.say(format!(
            "rebalancing: {} rank(s) moved ({}); resuming from epoch {} (step {})",
            moved.len(),
            list.join(", "),
            commit.epoch,
            commit.step
        ));
        let stopped = now.saturating_duration_since(m.started).as_secs_f64();
        self.recovering = Some(Ongoing::planned(
            RecoveryKind::Rebalance,
            Vec::new(),
            stopped,
            commit,
            moved,
            m.started,
            None,
        ));
        self.balancer.moving = None;
        self.balancer.move_bytes = m.bytes;
        self.place(now);
        true
    }

    /// A move that will not happen (a node was lost meanwhile): its pins go.
    pub(super) fn cancel_move(&mut self) {
        if self.balancer.moving.take().is_some() {
            self.state.unpin_all();
            self.say("the move is called off: a node was lost");
        }
    }

    pub(super) fn cpus_set(&mut self, node: NodeId, cpus: f64, enforced: Result<String, String>) {
        let answered: Vec<u64> = self
            .pending_cpus
            .iter()
            .filter(|(n, _)| *n == node)
            .map(|&(_, id)| id)
            .collect();
        self.pending_cpus.retain(|(n, _)| *n != node);
        let name = self.name(node).to_owned();
        match enforced {
            Ok(how) => {
                self.nodes[node.index()].cpus = cpus;
                self.say(format!("node {name} now has {cpus} CPU(s) ({how})"));
                for id in answered {
                    let reply = CtlReply::CpusSet {
                        node: name.clone(),
                        cpus,
                        how: how.clone(),
                    };
                    self.reply(id, reply);
                }
            }
            Err(why) => {
                for id in answered {
                    self.refuse(id, format!("node {name} cannot change its CPUs: {why}"));
                }
            }
        }
    }

    /// What this run teaches the next one: every rank's weight and state
    /// size and the steps the job had (`None` unless every rank reported).
    pub fn run_record(&self) -> Option<pm_core::history::RunRecord> {
        let b = &self.balancer;
        if !b.reported.iter().all(|&r| r) {
            return None;
        }
        Some(pm_core::history::RunRecord {
            weights: b.estimates.iter().map(|e| e.weight() as f32).collect(),
            state_bytes: b.state_bytes.clone(),
            steps: b.step,
        })
    }

    /// A recovery, drain or move finished: its freeze teaches the cost model.
    pub(super) fn learn_freeze(&mut self, r: &Recovery) {
        let freeze = r.stop_s + r.place_s + r.resume_s;
        let bytes = if r.kind == RecoveryKind::Rebalance {
            std::mem::take(&mut self.balancer.move_bytes)
        } else {
            0
        };
        self.balancer.cost.observe(bytes, freeze);
    }
}
