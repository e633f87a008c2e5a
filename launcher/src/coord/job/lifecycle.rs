//! The job's lifecycle: start, resume, placement, runs, failures,
//! recoveries, drains and the end.

use super::*;
use crate::coord::state::{Move, PlacementError};
use pm_core::proto::{Peer, RecoveryKind};

impl Job {
    /// Every agent is connected: ask what their stores hold of the job, so
    /// that a job started with `--job` resumes where it was committed.
    pub(super) fn ask_inventories(&mut self, now: Instant) {
        self.phase = Phase::Inventory {
            deadline: now + INVENTORY_WAIT,
        };
        self.waiting_on = self.alive().count();
        self.broadcast(&ToAgent::Inventory);
    }

    pub(super) fn inventory_arrived(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Inventory { .. }) && self.waiting_on == 0 {
            self.resume(now);
        }
    }

    /// Decides from the inventories whether the job resumes, then places it.
    fn resume(&mut self, now: Instant) {
        let newest = self
            .nodes
            .iter()
            .filter_map(|n| n.inventory.as_ref()?.committed)
            .max_by_key(|&(epoch, _, _)| epoch);
        let start = self.start_line();
        self.say(start);
        if let Some((epoch, step, ranks)) = self.newer_flushed(newest.map(|(e, ..)| e)) {
            if !self.ranks_match(ranks, now) {
                return;
            }
            for n in &mut self.nodes {
                n.inventory = None;
            }
            return self.fetch_flushed(Commit { epoch, step }, now);
        }
        if let Some((epoch, step, ranks)) = newest {
            if !self.ranks_match(ranks, now) {
                return;
            }
            let holders: Vec<Vec<NodeId>> = (0..self.cfg.ranks)
                .map(|r| {
                    self.alive()
                        .filter(|n| {
                            let inv = self.nodes[n.index()].inventory.as_ref();
                            inv.is_some_and(|inv| {
                                inv.ranks
                                    .iter()
                                    .any(|(rank, epochs)| *rank == r && epochs.contains(&epoch))
                            })
                        })
                        .collect()
                })
                .collect();
            for n in &mut self.nodes {
                n.inventory = None;
            }
            let from = "its committed checkpoint on the nodes";
            return self.resume_from(Commit { epoch, step }, holders, from, now);
        }
        for n in &mut self.nodes {
            n.inventory = None;
        }
        self.place(now);
    }

    /// Whether a checkpoint of `ranks` ranks (0: unknown) fits this job;
    /// if not, says so and ends it.
    fn ranks_match(&mut self, ranks: u32, now: Instant) -> bool {
        if ranks == 0 || ranks == self.cfg.ranks {
            return true;
        }
        self.say(format!(
            "job {} was checkpointed with {ranks} ranks; run it with -n {ranks} to resume, \
             or choose another --job",
            self.cfg.job
        ));
        self.finish_keeping(1, now);
        false
    }

    /// Resumes from `commit`, whose snapshot of rank r `holders[r]` hold;
    /// `from` says where it came from.
    pub(super) fn resume_from(
        &mut self,
        commit: Commit,
        holders: Vec<Vec<NodeId>>,
        from: &str,
        now: Instant,
    ) {
        let Commit { epoch, step } = commit;
        if let Err(e) = self.state.resume(commit, holders) {
            self.say(format!("cannot resume job {}: {e}", self.cfg.job));
            self.finish_keeping(1, now);
            return;
        }
        self.max_published = self.max_published.max(epoch);
        self.broadcast(&ToAgent::Commit {
            epoch,
            step,
            ranks: self.cfg.ranks,
        });
        self.say(format!(
            "resuming job {} from {from} (epoch {epoch}, step {step})",
            self.cfg.job
        ));
        self.place(now);
    }

    /// What pmrun says as the job starts: its id (`pmrun ctl --job` needs
    /// it), where it runs, and what protects its checkpoints.
    fn start_line(&self) -> String {
        let names: Vec<String> = self
            .cfg
            .nodes
            .iter()
            .map(|n| match self.cfg.verbose {
                true => format!("{}@{}", n.name, n.addr),
                false => n.name.clone(),
            })
            .collect();
        let effective = self.state.effective_replicas();
        let protection = match (self.cfg.nodes.len(), effective) {
            (1, _) => "no replicas on a single node: a node loss cannot be recovered from".into(),
            (n, r) if r < self.cfg.replicas => format!(
                "{r} replica(s) each (--replicas {} needs more than {n} nodes)",
                self.cfg.replicas
            ),
            (_, r) => format!("{r} replica(s) each"),
        };
        let kind = match self.cfg.asynchronous {
            true => "asynchronous checkpoints",
            false => "checkpoints",
        };
        format!(
            "job {}: {} rank(s) on {}; {kind} in {}, {protection} (pmrun ctl --job {} status)",
            self.cfg.job,
            self.cfg.ranks,
            names.join(" "),
            self.cfg.store,
            self.cfg.job
        )
    }

    /// The placement every live agent gets: its ranks, their partners, and
    /// where those partners and its gossip peers listen. Only those: at 10⁴
    /// nodes a full peer list per message would be 10⁸ entries per
    /// placement. Gossip peers are the nodes at distances 1, 2, 4, … round
    /// the ring: about log2 N of them, through which news reaches every
    /// node in about log2 N rounds.
    fn placement_messages(&mut self) {
        self.generation += 1;
        let mut by_node = self.state.ranks_by_node();
        let alive: Vec<NodeId> = self.alive().collect();
        let count = self.nodes.len();
        let mut peers: Vec<NodeId> = Vec::new();
        for n in alive {
            let local = std::mem::take(&mut by_node[n.index()]);
            let partners: Vec<(u32, Vec<NodeId>)> = local
                .iter()
                .map(|&r| (r, self.state.partners[r as usize].clone()))
                .collect();
            peers.clear();
            peers.extend(partners.iter().flat_map(|(_, p)| p).copied());
            let mut d = 1;
            while d < count {
                let p = NodeId::from_index((n.index() + d) % count);
                if self.state.node(p).health != Health::Dead {
                    peers.push(p);
                }
                d *= 2;
            }
            peers.sort_unstable();
            peers.dedup();
            let peers = peers
                .iter()
                .filter(|&&p| p != n)
                .filter_map(|&p| {
                    let control = self.nodes[p.index()].control.clone()?;
                    Some(Peer { node: p, control })
                })
                .collect();
            self.send(
                n,
                ToAgent::Placement {
                    generation: self.generation,
                    local,
                    partners,
                    peers,
                },
            );
        }
    }

    /// Tells every live agent the current placement; the job is launched
    /// once all have applied it.
    pub(super) fn place(&mut self, now: Instant) {
        self.placement_messages();
        let alive: Vec<NodeId> = self.alive().collect();
        self.waiting_on = alive.len();
        for n in alive {
            let rt = &mut self.nodes[n.index()];
            rt.placement_deadline = Some(now + PLACEMENT_PATIENCE);
            rt.waiting = None;
        }
        self.phase = Phase::Placing {
            generation: self.generation,
        };
        self.placement_progress(now);
    }

    /// Partners changed while the job runs (a node without ranks was lost,
    /// or stopped storing replicas): agents learn it, nothing waits.
    pub(super) fn partners_changed(&mut self, now: Instant) {
        match self.phase {
            Phase::Placing { .. } => self.place(now),
            Phase::Running => self.placement_messages(),
            // The next placement carries them.
            _ => {}
        }
    }

    pub(super) fn placement_progress(&mut self, now: Instant) {
        let Phase::Placing { generation } = self.phase else {
            return;
        };
        if generation == self.generation && self.waiting_on == 0 {
            self.launch(now);
        }
    }

    fn launch(&mut self, now: Instant) {
        self.run += 1;
        self.run_pid = None;
        self.launcher_alone_since = None;
        self.run_orphaned = false;
        self.run_started = now;
        self.notice_at = (!self.said_no_pm).then_some(now + NO_PM_NOTICE);
        self.balancer.next_decision = Some(now + self.cfg.balance.every);
        // Steps are timed within a run: a relaunch's freeze is no step.
        self.balancer.last_report = None;
        self.finished.clear();
        self.stopped.clear();
        self.pids.clear();
        // Steps per second are measured within one run.
        self.commits.clear();
        let committed = self.state.committed.map_or(0, |c| c.epoch);
        let plan = RunPlan {
            placement: self.state.placement.clone(),
            restore_epoch: committed,
            // Never reuse an epoch number: a replica of an epoch of an
            // earlier run can then never count for a new snapshot.
            first_epoch: committed.max(self.max_published) + 1,
        };
        if self.cfg.verbose {
            let by_node = self.state.ranks_by_node();
            let map: Vec<String> = self
                .alive()
                .filter(|&n| self.state.node(n).health == Health::Alive)
                .map(|n| {
                    let ranks: Vec<String> =
                        by_node[n.index()].iter().map(u32::to_string).collect();
                    format!("{}[{}]", self.name(n), ranks.join(","))
                })
                .collect();
            self.say(format!(
                "launching {} ranks: {}",
                self.cfg.ranks,
                map.join(" ")
            ));
        }
        self.actions.push_back(Action::Launch {
            run: self.run,
            plan,
        });
        self.phase = Phase::Running;
        if let Some(ongoing) = &mut self.recovering {
            ongoing.record.place_s =
                now.duration_since(ongoing.started).as_secs_f64() - ongoing.record.stop_s;
            if let Some(id) = ongoing.ctl.take() {
                let record = ongoing.record.clone();
                self.reply(id, CtlReply::Drained(record));
            }
        }
    }

    /// Declares dead every live node not heard from for `--fail-after`, and
    /// every node whose placement ran out of time.
    pub(super) fn check_health(&mut self, now: Instant) {
        let fail_after = self.cfg.fail_after;
        let mut silent = Vec::new();
        let mut stuck = Vec::new();
        for n in self.alive().collect::<Vec<_>>() {
            let rt = &self.nodes[n.index()];
            let quiet = now.saturating_duration_since(rt.last_heard);
            if quiet > fail_after {
                silent.push((n, quiet));
            } else if rt.placement_deadline.is_some_and(|d| now > d) {
                stuck.push(n);
            }
        }
        let mut lost: Vec<(NodeId, String, Duration)> = silent
            .into_iter()
            .map(|(n, quiet)| {
                let why = format!("missed its heartbeats for {:.1} s", quiet.as_secs_f64());
                (n, why, quiet)
            })
            .collect();
        for n in stuck {
            let why = match self.nodes[n.index()].waiting {
                Some(w) => format!(
                    "did not apply the new placement in time ({} import(s), {} bytes left, no progress)",
                    w.imports, w.bytes_left
                ),
                None => "did not apply the new placement in time".into(),
            };
            lost.push((n, why, Duration::ZERO));
        }
        self.declare_dead_all(lost, now);
    }

    pub(super) fn link_lost(&mut self, node: NodeId, reason: &str, now: Instant) {
        if self.state.node(node).health == Health::Dead {
            return;
        }
        if let Phase::Starting { .. } = self.phase {
            self.say(format!(
                "the agent of node {} did not start: {reason}",
                self.name(node)
            ));
            self.finish_keeping(1, now);
            return;
        }
        let quiet = now.saturating_duration_since(self.nodes[node.index()].last_heard);
        self.declare_dead(node, &format!("lost its agent ({reason})"), quiet, now);
    }

    pub(super) fn declare_dead(&mut self, node: NodeId, why: &str, quiet: Duration, now: Instant) {
        self.declare_dead_all(vec![(node, why.to_owned(), quiet)], now);
    }

    /// Nodes are gone for this job: they never come back, nothing waits
    /// for them, and each phase reacts in its own way, once for all of
    /// them (100 nodes lost in one tick cost what one does).
    pub(super) fn declare_dead_all(&mut self, lost: Vec<(NodeId, String, Duration)>, now: Instant) {
        let lost: Vec<(NodeId, String, Duration)> = lost
            .into_iter()
            .filter(|(n, ..)| self.state.node(*n).health != Health::Dead)
            .collect();
        if lost.is_empty() || self.phase == Phase::Done {
            return;
        }
        let mut had_ranks = false;
        let mut names = Vec::with_capacity(lost.len());
        for (node, why, _) in &lost {
            let node = *node;
            self.stats.declared_dead += 1;
            had_ranks |= self.state.rank_count(node) > 0;
            self.actions.push_back(Action::Disconnect { node });
            let rt = &mut self.nodes[node.index()];
            let awaited = match self.phase {
                Phase::Inventory { .. } => rt.inventory.is_none(),
                Phase::Placing { .. } => rt.placement_deadline.is_some(),
                _ => false,
            };
            if awaited {
                self.waiting_on -= 1;
            }
            rt.placement_deadline = None;
            rt.waiting = None;
            let name = self.name(node).to_owned();
            self.say(format!("node {name} {why}: declared dead"));
            names.push(name);
        }
        let ids: Vec<NodeId> = lost.iter().map(|(n, ..)| *n).collect();
        self.state.set_healths(&ids, Health::Dead);
        for &node in &ids {
            self.flush_node_lost(node, now);
        }
        if self.phase == Phase::Running && !had_ranks {
            // Only partners change; the run goes on.
            self.say(format!(
                "{} ran no ranks; its replicas are being made again on other nodes",
                names.join(", ")
            ));
            return self.partners_changed(now);
        }
        let detect = lost.iter().map(|(.., q)| *q).max().unwrap_or_default();
        match &mut self.recovering {
            Some(ongoing) => ongoing.record.nodes.extend(names),
            None => {
                self.recovering = Some(Ongoing {
                    record: Recovery {
                        kind: RecoveryKind::NodeFailure,
                        nodes: names,
                        detect_s: detect.as_secs_f64(),
                        stop_s: 0.0,
                        place_s: 0.0,
                        resume_s: 0.0,
                        total_s: 0.0,
                        epoch: 0,
                        step: 0,
                        moved: Vec::new(),
                    },
                    started: now,
                    ctl: None,
                })
            }
        }
        match self.phase.clone() {
            Phase::Starting { .. } => {
                self.say("the job cannot start without every node's agent");
                self.finish_keeping(1, now);
            }
            Phase::Inventory { .. } => self.inventory_arrived(now),
            Phase::Placing { .. } => self.relaunch_after_loss(now),
            Phase::Running => {
                self.cancel_move();
                self.stop_run(StopWhy::NodeLost, now)
            }
            Phase::Settling { .. } => self.settle(now),
            // A move is off: recover instead, from the committed epoch.
            Phase::AwaitingCommit {
                then: AfterCommit::Rebalance,
                ..
            } => {
                self.cancel_move();
                self.relaunch_after_loss(now);
            }
            // The stop's epoch may never commit now: go on with the committed one.
            Phase::AwaitingCommit { .. } => self.commit_arrived(now),
            // The copies the node was making failed (above).
            Phase::Fetching { .. } | Phase::Flushing { .. } => {}
            Phase::Stopping { .. } | Phase::Done => {}
        }
    }

    /// Ends the current run: every live agent kills its node's ranks, which
    /// makes mpirun end the job; mpirun itself is signalled only if it
    /// does not end within the grace period.
    fn stop_run(&mut self, why: StopWhy, now: Instant) {
        if why == StopWhy::Interrupted {
            self.actions.push_back(Action::Signal {
                run: self.run,
                signal: RunSignal::Terminate,
            });
        } else {
            let with_ranks: Vec<NodeId> = self
                .alive()
                .filter(|&n| self.state.rank_count(n) > 0)
                .collect();
            for n in with_ranks {
                self.send(n, ToAgent::KillRanks);
            }
        }
        // mpirun usually ends the job by itself once ranks are gone;
        // interrupting it while it aborts can crash it: wait before SIGTERM.
        let next = match why {
            StopWhy::Interrupted => (now + STOP_GRACE, RunSignal::Kill),
            // The live nodes' ranks are gone once their agents killed them
            // and the dead node's went with it: a launcher that would wait
            // for those (srun) only delays the recovery.
            StopWhy::NodeLost if self.cfg.launcher_lingers => (now + LINGER_GRACE, RunSignal::Kill),
            StopWhy::NodeLost => (now + STOP_GRACE / 3, RunSignal::Terminate),
        };
        self.phase = Phase::Stopping {
            why,
            since: now,
            next: Some(next),
        };
    }

    pub(super) fn interrupt(&mut self, now: Instant) {
        self.interrupted = true;
        match self.phase {
            Phase::Running => self.stop_run(StopWhy::Interrupted, now),
            Phase::Stopping { ref mut why, .. } => *why = StopWhy::Interrupted,
            Phase::Flushing { .. } => self.abandon_flush("pmrun was interrupted"),
            Phase::Done => {}
            _ => self.interrupted_end(now),
        }
    }

    fn interrupted_end(&mut self, now: Instant) {
        self.say(format!(
            "interrupted; the job's checkpoints are kept: run pmrun again with {} to resume",
            self.resume_args()
        ));
        self.finish_keeping(INTERRUPTED_EXIT, now);
    }

    pub(super) fn phase_timeout(&mut self, now: Instant) {
        match self.phase.clone() {
            Phase::Starting { deadline } if now >= deadline => {
                let missing: Vec<&str> = (0..self.nodes.len())
                    .filter(|&i| !self.nodes[i].ready)
                    .map(|i| self.cfg.nodes[i].name.as_str())
                    .collect();
                let text = format!(
                    "the agents of {} did not connect within {} s",
                    missing.join(", "),
                    AGENT_START.as_secs()
                );
                self.say(text);
                self.finish_keeping(1, now);
            }
            Phase::Inventory { deadline } if now >= deadline => {
                let slow: Vec<NodeId> = self
                    .alive()
                    .filter(|n| self.nodes[n.index()].inventory.is_none())
                    .collect();
                for n in slow {
                    self.declare_dead(n, "did not list its store in time", Duration::ZERO, now);
                }
            }
            Phase::Stopping {
                since,
                next: Some((at, signal)),
                ..
            } if now >= at => {
                self.actions.push_back(Action::Signal {
                    run: self.run,
                    signal,
                });
                if let Phase::Stopping { next, .. } = &mut self.phase {
                    *next = (signal == RunSignal::Terminate)
                        .then_some((since + STOP_GRACE, RunSignal::Kill));
                }
            }
            Phase::AwaitingCommit { deadline, .. } if now >= deadline => self.commit_arrived(now),
            Phase::Fetching { deadline } if now >= deadline => self.fetch_timed_out(),
            Phase::Flushing { deadline, .. } if now >= deadline => {
                let limit = Self::flush_deadline().as_secs();
                self.abandon_flush(&format!("it took more than {limit} s"));
            }
            Phase::Settling { .. } => self.settle(now),
            Phase::Running => {
                if self.orphaned_at().is_some_and(|t| now >= t) {
                    self.kill_orphaned_launcher();
                }
                self.no_pm_notice(now, false);
                let due = self.balancer.next_decision.is_some_and(|t| now >= t);
                if due && self.cfg.balance.mode != BalanceMode::Off {
                    self.decide_balance(None, now);
                } else if due {
                    self.balancer.next_decision = None;
                }
            }
            _ => {}
        }
    }

    /// Says once that no rank reached its agent: the program seems not to
    /// use pm, so a failure restarts it from the beginning.
    fn no_pm_notice(&mut self, now: Instant, run_failed: bool) {
        let due = self.notice_at.is_some_and(|t| now >= t);
        if !run_failed && !due {
            return;
        }
        self.notice_at = None;
        if self.said_no_pm || !self.pids.is_empty() {
            return;
        }
        let when = if run_failed {
            "before the run ended".to_owned()
        } else {
            format!("within {} s", NO_PM_NOTICE.as_secs())
        };
        self.said_no_pm = true;
        self.say(format!(
            "no rank reached its agent {when}: if the application does not use pm (pm_init), \
             it runs without checkpoints, and a failure restarts it from the beginning"
        ));
    }

    /// When the current run's launcher, alone since its last child ended,
    /// counts as hung.
    pub(super) fn orphaned_at(&self) -> Option<Instant> {
        let alone = self.launcher_alone_since.filter(|_| !self.run_orphaned)?;
        self.run_pid.map(|_| alone + ORPHAN_AFTER)
    }

    /// The launcher hangs with every rank of the run gone (Open MPI's
    /// mpirun can, after a rank dies in MPI_Init or an abort): it is killed,
    /// and its end is handled as any failed run's — or, when every rank had
    /// finished, as the job's end.
    fn kill_orphaned_launcher(&mut self) {
        let Some(pid) = self.run_pid else { return };
        self.run_orphaned = true;
        self.say(format!(
            "every rank of the run ended {} s ago but the launcher (pid {pid}) did not: killing it",
            ORPHAN_AFTER.as_secs()
        ));
        self.actions.push_back(Action::Signal {
            run: self.run,
            signal: RunSignal::Kill,
        });
    }

    pub(super) fn run_exited(&mut self, code: i32, now: Instant) {
        self.run_pid = None;
        let all_finished = self.finished.len() == self.cfg.ranks as usize;
        // Killed for hanging after its ranks ended well: the job is done.
        let code = if self.run_orphaned && all_finished {
            0
        } else {
            code
        };
        if code != 0 {
            self.no_pm_notice(now, true);
        }
        match self.phase {
            Phase::Stopping {
                why: StopWhy::Interrupted,
                ..
            } => return self.interrupted_end(now),
            Phase::Stopping {
                why: StopWhy::NodeLost,
                ..
            } => return self.relaunch_after_loss(now),
            Phase::Running => {}
            _ => return,
        }
        if self.interrupted {
            return self.interrupted_end(now);
        }
        if code != 0 {
            self.phase = Phase::Settling {
                code,
                exited_at: now,
            };
            return self.settle(now);
        }
        // A run that stopped at a checkpoint is never the job's end.
        let target = self.state.newest_published().unwrap_or(0);
        let then = match &self.drain {
            _ if !all_finished && self.stop_asked.is_some() => AfterCommit::Stop,
            Some(_) if !all_finished => AfterCommit::Drain,
            None if !all_finished && self.balancer.moving.is_some() => AfterCommit::Rebalance,
            None if !self.stopped.is_empty() => AfterCommit::Unasked,
            _ => return self.finished(now),
        };
        self.phase = Phase::AwaitingCommit {
            target,
            deadline: now + STOP_COMMIT_WAIT,
            then,
        };
        if self.state.committed.is_some_and(|c| c.epoch >= target) {
            self.commit_arrived(now);
        }
    }

    /// After a failed run, waits until every node with ranks has been heard
    /// from since the exit (a rank failed) or declared dead (a node failed).
    fn settle(&mut self, now: Instant) {
        let Phase::Settling { code, exited_at } = self.phase else {
            return;
        };
        let undecided = self.alive().any(|n| {
            self.state.node(n).health == Health::Alive
                && self.state.rank_count(n) > 0
                && self.nodes[n.index()].last_heard <= exited_at
        });
        if undecided {
            return;
        }
        if self.recovering.is_some() {
            self.relaunch_after_loss(now);
        } else {
            if let Some(Drain { ctl: Some(ctl), .. }) = self.drain.take() {
                self.refuse(ctl, "the job failed during the drain");
            }
            self.after_rank_failure(code, now);
        }
    }

    /// A rank failed on a live node: relaunch in place (counted against
    /// `--max-restarts`), from the committed epoch or afresh.
    fn after_rank_failure(&mut self, code: i32, now: Instant) {
        let ran = now.saturating_duration_since(self.started).as_secs_f64();
        if self.restarts >= self.cfg.max_restarts {
            match self.state.committed {
                Some(c) => {
                    self.say(format!(
                        "the job failed (exit code {code}) {} times; its checkpoint of step {} is kept: \
                         run pmrun again with {} to resume",
                        self.restarts + 1,
                        c.step,
                        self.resume_args()
                    ));
                    self.finish_keeping(code, now);
                }
                None => {
                    self.say(format!(
                        "the job failed (exit code {code}) {} times, before committing any checkpoint",
                        self.restarts + 1
                    ));
                    self.finish_deleting(code, now);
                }
            }
            return;
        }
        self.restarts += 1;
        let (restarts, max) = (self.restarts, self.cfg.max_restarts);
        match self.state.committed {
            Some(c) => self.say(format!(
                "the job failed after {ran:.1} s (exit code {code}); relaunching from its committed \
                 checkpoint (epoch {}, step {}), restart {restarts} of {max}",
                c.epoch, c.step
            )),
            None => self.say(format!(
                "the job failed after {ran:.1} s (exit code {code}) before committing any \
                 checkpoint; starting it afresh, restart {restarts} of {max}"
            )),
        }
        self.state.forget_uncommitted();
        self.place(now);
    }

    /// Nodes were lost: move their ranks to nodes that hold the committed
    /// snapshots (not counted as a restart) and place the job again.
    pub(super) fn relaunch_after_loss(&mut self, now: Instant) {
        // A drain asked for meanwhile is carried out with the recovery,
        // from the committed epoch; its requester hears once the job runs.
        if let Some(drain) = self.drain.take() {
            let names = self.mark_drained(&drain.nodes);
            if let Some(ongoing) = &mut self.recovering {
                ongoing.record.nodes.extend(names);
                ongoing.ctl = drain.ctl;
            }
        }
        let moves = match self.state.replace_lost_ranks() {
            Ok(m) => m,
            Err(e) => return self.cannot_continue(&e, now),
        };
        self.state.forget_uncommitted();
        let moved = self.describe(&moves);
        let commit = self.state.committed;
        if let Some(ongoing) = &mut self.recovering {
            let r = &mut ongoing.record;
            if r.kind == RecoveryKind::NodeFailure && r.stop_s == 0.0 {
                r.stop_s = now.duration_since(ongoing.started).as_secs_f64();
            }
            r.epoch = commit.map_or(0, |c| c.epoch);
            r.step = commit.map_or(0, |c| c.step);
            r.moved.extend(moved.iter().cloned());
        }
        let list: Vec<String> = moved
            .iter()
            .map(|(r, from, to)| format!("rank {r} {from}→{to}"))
            .collect();
        match commit {
            _ if self.run == 0 => self.say(format!(
                "placing the job again before its launch, with {}",
                list.join(", ")
            )),
            Some(c) => self.say(format!(
                "relaunching from the committed checkpoint (epoch {}, step {}) with {}",
                c.epoch,
                c.step,
                list.join(", ")
            )),
            None => self.say(format!("relaunching afresh with {}", list.join(", "))),
        }
        self.place(now);
    }

    fn cannot_continue(&mut self, e: &PlacementError, now: Instant) {
        if let Some(Ongoing { ctl: Some(id), .. }) = self.recovering.take() {
            self.refuse(id, e.to_string());
        }
        self.say(e.to_string());
        self.finish_keeping(1, now);
    }

    fn describe(&self, moves: &[Move]) -> Vec<(u32, String, String)> {
        moves
            .iter()
            .map(|m| {
                (
                    m.rank,
                    self.name(m.from).to_owned(),
                    self.name(m.to).to_owned(),
                )
            })
            .collect()
    }

    /// The stop's epoch is committed (or will not be): a drain moves the
    /// drained nodes' ranks and relaunches; a stop nobody asked pmrun for
    /// ends the job with its checkpoints kept.
    pub(super) fn commit_arrived(&mut self, now: Instant) {
        let Phase::AwaitingCommit {
            then,
            target,
            deadline,
        } = self.phase
        else {
            return;
        };
        match then {
            AfterCommit::Rebalance => {
                let late = now >= deadline;
                if late || self.state.committed.is_some_and(|c| c.epoch >= target) {
                    self.move_committed(now, late);
                }
            }
            AfterCommit::Stop => {
                let late = now >= deadline;
                if !late && self.state.committed.is_none_or(|c| c.epoch < target) {
                    return;
                }
                let (id, why) = self.stop_asked.take().unwrap_or_default();
                self.answer_pending("the job stopped first");
                let resume = match self.state.committed {
                    Some(c) => {
                        if let Some(id) = id {
                            self.reply(
                                id,
                                CtlReply::Committed {
                                    epoch: c.epoch,
                                    step: c.step,
                                },
                            );
                        }
                        format!("its checkpoint of step {} (epoch {})", c.step, c.epoch)
                    }
                    None => {
                        if let Some(id) = id {
                            self.refuse(id, "the job stopped before any checkpoint was committed");
                        }
                        "no committed checkpoint: it would start afresh".into()
                    }
                };
                self.say(format!(
                    "the job stopped ({why}); its checkpoints are kept: run pmrun again with \
                     {} to resume from {resume}",
                    self.resume_args()
                ));
                self.finish_keeping(STOPPED_EXIT, now);
            }
            AfterCommit::Unasked => {
                self.answer_pending("the job stopped first");
                let resume = match self.state.committed {
                    Some(c) => format!("its checkpoint of step {} (epoch {})", c.step, c.epoch),
                    None => "no committed checkpoint: it would start afresh".into(),
                };
                self.say(format!(
                    "the ranks stopped at a checkpoint before the job finished (SIGUSR1 reached them); \
                     the job's checkpoints are kept: run pmrun again with {} to resume from {resume}",
                    self.resume_args()
                ));
                self.finish_keeping(STOPPED_EXIT, now);
            }
            AfterCommit::Drain => {
                let Some(drain) = self.drain.take() else {
                    return;
                };
                let names = self.mark_drained(&drain.nodes);
                let stopped = now.duration_since(drain.started).as_secs_f64();
                // A node lost meanwhile joins this recovery.
                let lost = self.recovering.take().map(|o| o.record.nodes);
                let moves = match self.state.replace_lost_ranks() {
                    Ok(m) => m,
                    Err(e) => {
                        if let Some(ctl) = drain.ctl {
                            self.refuse(ctl, e.to_string());
                        }
                        return self.cannot_continue(&e, now);
                    }
                };
                self.state.forget_uncommitted();
                let commit = self.state.committed.unwrap_or(Commit { epoch: 0, step: 0 });
                let moved = self.describe(&moves);
                let list: Vec<String> =
                    moved.iter().map(|(r, _, to)| format!("{r}→{to}")).collect();
                self.say(format!(
                    "node {} drained: stopped at a checkpoint and replicated in {stopped:.2} s, \
                     {} rank(s) moved ({}); resuming from epoch {} (step {})",
                    names.join(", "),
                    moves.len(),
                    list.join(" "),
                    commit.epoch,
                    commit.step
                ));
                let mut nodes = names;
                nodes.extend(lost.into_iter().flatten());
                self.recovering = Some(Ongoing::planned(
                    RecoveryKind::Drain,
                    nodes,
                    stopped,
                    commit,
                    moved,
                    drain.started,
                    drain.ctl,
                ));
                self.place(now);
            }
        }
    }

    /// Takes drained nodes out of service (no ranks, no replicas); their names.
    fn mark_drained(&mut self, nodes: &[NodeId]) -> Vec<String> {
        let alive: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|&n| self.state.node(n).health == Health::Alive)
            .collect();
        self.state.set_healths(&alive, Health::Drained);
        nodes.iter().map(|&n| self.name(n).to_owned()).collect()
    }

    /// Answers the drain and the checkpoint requests still waiting when the
    /// job ends: `why` they cannot be done.
    fn answer_pending(&mut self, why: &str) {
        if let Some(Drain { ctl: Some(ctl), .. }) = self.drain.take() {
            self.refuse(ctl, format!("{why}: there is nothing left to drain"));
        }
        for (_, id) in std::mem::take(&mut self.pending_checkpoints) {
            self.refuse(id, format!("{why}: no checkpoint was taken"));
        }
        if let Some((Some(id), _)) = self.stop_asked.take() {
            self.refuse(id, format!("{why}: there is nothing left to stop"));
        }
    }

    /// Every rank finished: the job is done.
    fn finished(&mut self, now: Instant) {
        self.answer_pending("the job finished first");
        if self.cfg.keep {
            self.say(format!(
                "job finished; its checkpoints are kept (--keep) under {}",
                self.cfg.store
            ));
            self.finish_keeping(0, now);
        } else {
            self.finish_deleting(0, now);
        }
    }

    /// Ends the job; every node keeps its checkpoints (`--job` resumes),
    /// once the newest commit is flushed (`--flush`).
    pub(super) fn finish_keeping(&mut self, code: i32, now: Instant) {
        if !self.flush_before_end(code, now) {
            self.end_keeping(code);
        }
    }

    /// Ends the job now, keeping its checkpoints.
    pub(super) fn end_keeping(&mut self, code: i32) {
        self.answer_pending("the job ended");
        self.broadcast(&ToAgent::Exit);
        self.actions.push_back(Action::Exit {
            code,
            delete: false,
        });
        self.phase = Phase::Done;
    }

    /// Ends the job; every node deletes its snapshots and replicas.
    fn finish_deleting(&mut self, code: i32, _now: Instant) {
        self.answer_pending("the job ended");
        self.broadcast(&ToAgent::DeleteJob);
        self.actions.push_back(Action::Exit { code, delete: true });
        self.phase = Phase::Done;
    }
}
