//! What `pmrun ctl status` and the live status line show.

use super::*;
use pm_core::proto::{Committed, EpochBytes, JobStatus, NodeStatus};

impl Job {
    /// Steps per second between the last two commits.
    fn steps_per_second(&self) -> Option<f64> {
        let n = self.commits.len();
        if n < 2 {
            return None;
        }
        let ((t0, a), (t1, b)) = (self.commits[n - 2], self.commits[n - 1]);
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0).then(|| (b.step - a.step) as f64 / dt)
    }

    /// Seconds the oldest uncommitted epoch has waited for its replicas.
    fn replication_lag(&self, now: Instant) -> f64 {
        self.published_at
            .values()
            .next()
            .map_or(0.0, |t| now.saturating_duration_since(*t).as_secs_f64())
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Starting { .. } => "starting",
            Phase::Inventory { .. } => "listing stores",
            Phase::Fetching { .. } => "copying the flushed checkpoint in",
            Phase::Flushing { .. } => "flushing",
            Phase::Placing { .. } => "placing",
            Phase::Running => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Settling { .. } => "deciding",
            Phase::AwaitingCommit { .. } => "committing the stop",
            Phase::Done => "done",
        }
    }

    /// One line for the terminal.
    pub fn status_line(&self, now: Instant) -> String {
        let committed = self
            .state
            .committed
            .map_or("none".into(), |k| format!("{} (step {})", k.epoch, k.step));
        let rate = self
            .steps_per_second()
            .map_or("-".into(), |r| format!("{r:.1}"));
        format!(
            "pmrun: {} ranks on {} nodes | {rate} steps/s | committed epoch {committed} | replication lag {:.1} s",
            self.cfg.ranks,
            self.state.usable_nodes(),
            self.replication_lag(now)
        )
    }

    pub fn status(&self, now: Instant) -> JobStatus {
        let by_node = self.state.ranks_by_node();
        let name = |n: &NodeId| self.name(*n).to_owned();
        let nodes = self
            .cfg
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let ranks = by_node[i].clone();
                let rank_pids = ranks
                    .iter()
                    .filter_map(|r| self.pids.get(r).copied())
                    .collect();
                let rt = &self.nodes[i];
                NodeStatus {
                    name: n.name.clone(),
                    addr: n.addr.clone(),
                    health: self.state.nodes[i].health,
                    spare: n.spare,
                    holds_replicas: self.state.nodes[i].holds_replicas,
                    ranks,
                    rank_pids,
                    agent_pid: rt.pid,
                    control: rt.control.as_deref().map(str::to_owned),
                    transport: rt.transport.as_deref().map(str::to_owned),
                    store: n.store.clone(),
                    log: n.log.clone(),
                    last_heard_s: now.saturating_duration_since(rt.last_heard).as_secs_f64(),
                    cpus: rt.cpus,
                    capacity: self.capacity_of(NodeId::from_index(i)),
                    load_s: self.balancer.gossip[i].map_or(0.0, |(r, _)| f64::from(r.load)),
                    gossip_age_s: self.balancer.gossip[i]
                        .map(|(_, t)| now.saturating_duration_since(t).as_secs_f64()),
                }
            })
            .collect();
        let newest = self.state.newest_published();
        let bytes = |b: Option<(u64, u64)>| b.map(|(state, written)| EpochBytes { state, written });
        JobStatus {
            job: self.cfg.job.clone(),
            ranks: self.cfg.ranks,
            replicas: self.cfg.replicas,
            effective_replicas: self.state.effective_replicas(),
            running: self.current_run().is_some(),
            phase: self.phase_name().into(),
            launcher_pid: self.run_pid.filter(|_| self.current_run().is_some()),
            restarts: self.restarts,
            nodes,
            placement: self.state.placement.iter().map(name).collect(),
            partners: self
                .state
                .partners
                .iter()
                .map(|p| p.iter().map(name).collect())
                .collect(),
            committed: self.state.committed.map(|k| Committed {
                epoch: k.epoch,
                step: k.step,
            }),
            committed_bytes: bytes(self.state.committed_bytes),
            flush_dir: self.cfg.flush.as_ref().map(|f| f.dir.clone()),
            flushed: self.flushes.recorded.map(|k| Committed {
                epoch: k.epoch,
                step: k.step,
            }),
            committed_holders: (0..self.cfg.ranks)
                .map(|r| {
                    self.state
                        .holders_of_committed(r)
                        .iter()
                        .map(name)
                        .collect()
                })
                .collect(),
            newest_published: newest,
            newest_bytes: bytes(newest.and_then(|e| self.state.epoch_bytes(e))),
            last_commit_age_s: self
                .commits
                .back()
                .map(|(t, _)| now.saturating_duration_since(*t).as_secs_f64()),
            steps_per_s: self.steps_per_second(),
            replication_lag_s: self.replication_lag(now),
            recoveries: self.recoveries.clone(),
            estimates: self
                .balancer
                .estimates
                .iter()
                .map(|e| (e.weight(), e.confidence(&self.balancer.est_cfg)))
                .collect(),
            balance: self.cfg.balance.mode.name().into(),
            last_decision: self.balancer.last.clone(),
        }
    }
}
