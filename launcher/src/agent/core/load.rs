//! The node's capacity and its ranks' load: the `share` of a core each
//! rank's report is given when it goes to pmrun, and the node's finish
//! time per step, which gossip spreads.

use super::{AgentCore, Config};
use pm_core::proto::{FromAgent, Load, RankLoad};
use std::collections::{BTreeMap, BTreeSet};

/// The least availability a node is credited with: a node measured as
/// fully taken by other work still runs its ranks a little, and a
/// capacity of zero would make its finish time infinite.
pub const MIN_AVAILABILITY: f64 = 0.05;

pub(super) struct NodeLoad {
    /// CPUs the node offers (`--cpus`: its cgroup quota or its cores).
    pub(super) offered: f64,
    /// CPUs in force (`SetCpus` changes them).
    pub(super) cpus: f64,
    /// The fraction of those CPUs the ranks can have: 1 with a cgroup
    /// quota (the quota is what they get); otherwise measured by the loop
    /// from /proc/stat (`Event::Availability`).
    availability: f64,
    /// Per rank, from its latest report: compute seconds per step × its
    /// share, the core-seconds one of its steps takes.
    work: BTreeMap<u32, f64>,
}

impl NodeLoad {
    pub(super) fn new(cfg: &Config) -> Self {
        Self {
            offered: cfg.cpus,
            cpus: cfg.cpus,
            availability: 1.0,
            work: BTreeMap::new(),
        }
    }

    /// CPUs × availability.
    pub(super) fn capacity(&self) -> f64 {
        self.cpus * self.availability
    }

    pub(super) fn set_availability(&mut self, measured: f64) {
        self.availability = if measured.is_nan() {
            1.0
        } else {
            measured.clamp(MIN_AVAILABILITY, 1.0)
        };
    }

    /// The fraction of one core each of `ranks` local ranks had: the
    /// capacity shared evenly, at most a whole core. It takes every local
    /// rank as busy all the time; it ignores that a rank waiting in MPI
    /// may leave its core to another (an oversubscribed Open MPI yields in
    /// its waits), that ranks' demands differ, that the capacity may have
    /// changed within the window, and the agent's own CPU.
    pub(super) fn share(&self, ranks: usize) -> f64 {
        (self.capacity() / ranks.max(1) as f64).min(1.0)
    }

    /// Keeps a rank's report: its work per step at `share`.
    pub(super) fn record(&mut self, load: &RankLoad, share: f64) {
        if load.window_steps > 0 {
            let per_step = load.compute_s / load.window_steps as f64;
            self.work.insert(load.rank, per_step * share);
        }
    }

    /// Core-seconds per step of the `local` ranks (those not reported yet
    /// count nothing); ranks that left are forgotten.
    pub(super) fn work(&mut self, local: &BTreeSet<u32>) -> f64 {
        self.work.retain(|r, _| local.contains(r));
        self.work.values().sum()
    }

    /// The node's finish time per step: its ranks' work over its capacity.
    pub(super) fn finish_time(&mut self, local: &BTreeSet<u32>) -> f64 {
        self.work(local) / self.capacity()
    }
}

impl AgentCore {
    /// A local rank's report goes to pmrun with its share; the node's
    /// load keeps its work per step.
    pub(super) fn rank_load(&mut self, load: RankLoad) {
        let share = self.load.share(self.local.len());
        if self.local.contains(&load.rank) {
            self.load.record(&load, share);
        }
        tracing::debug!(
            rank = load.rank,
            step = load.step,
            steps = load.window_steps,
            compute_s = load.compute_s,
            cpu_s = load.cpu_s,
            total_steps = ?load.total_steps,
            share,
            "rank load"
        );
        self.send(FromAgent::RankLoad { load, share });
    }

    /// The heartbeat's view of the node's load.
    pub(super) fn heartbeat_load(&mut self) -> Load {
        Load {
            ranks: self.local.len() as u32,
            step_seconds: self.load.work(&self.local),
            cpus: self.load.cpus,
        }
    }

    /// Without a cgroup the loop measures what the node's ranks can have,
    /// once a heartbeat period, given the ranks' processes.
    pub(super) fn measure_availability(&mut self) {
        if self.cfg.cgroup {
            return;
        }
        let pids = self.ranks.values().filter(|r| r.rank.is_some());
        let pids = pids.map(|r| r.peer_pid).collect();
        self.actions
            .push_back(super::Action::MeasureAvailability { pids });
    }

    pub(super) fn availability_measured(&mut self, value: f64) {
        // With a cgroup the quota is what the ranks get.
        if !self.cfg.cgroup {
            self.load.set_availability(value);
        }
    }
}
