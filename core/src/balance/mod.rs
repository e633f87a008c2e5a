//! The balancer: where ranks run. Pure functions from a description of the
//! job (ranks with weights, nodes with capacities) to a plan.
//!
//! * [`place`]: initial placement, weighted longest-processing-time first on
//!   node capacities, within memory and each node's I/O slots.
//! * [`rebalance`]: refinement of the current map: evacuate nodes that are
//!   draining or dead (capacity zero), then move ranks from the node that
//!   finishes last to the one that would finish first, preferring nodes that
//!   hold the rank's replica, at most `max_moves` per round; the result is
//!   executed only when its gain over the remaining run outweighs its cost.
//! * [`cost::MoveCostModel`]: freeze time as a function of bytes moved,
//!   learned from real moves.
//!
//! The step time of a map is the finish time of its slowest node: the sum of
//! the weights (compute seconds per step on one core) on a node divided by its
//! capacity (cores × availability). The job is bulk-synchronous, so that is
//! what every rank waits for.

pub mod cost;
mod place;
mod rebalance;
mod targets;
#[cfg(test)]
mod tests;

pub use cost::MoveCostModel;
pub use place::place;
pub use rebalance::{evacuate, rebalance};

use serde::{Deserialize, Serialize};

pub type NodeId = u32;

/// What bounds a rank: its cores, or its I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RankClass {
    Cpu,
    Io,
}

impl RankClass {
    /// A rank that waits for I/O longer than it computes is I/O-bound.
    pub fn classify(compute_s: f64, io_wait_s: f64) -> RankClass {
        if io_wait_s > compute_s {
            RankClass::Io
        } else {
            RankClass::Cpu
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RankInfo {
    /// Expected compute time per step on one core (seconds).
    pub weight: f64,
    /// The estimator's confidence in `weight`, 0..=1.
    pub confidence: f64,
    /// Bytes of registered state (what a move to a node without a replica carries).
    pub state_bytes: u64,
    /// Bytes changed since the last checkpoint (what a move to a replica holder carries).
    pub dirty_bytes: u64,
    pub class: RankClass,
    /// Where it runs now; `None` for a rank that is not placed yet.
    pub node: Option<NodeId>,
    /// Nodes that hold a replica of its latest checkpoint.
    pub replicas: Vec<NodeId>,
    /// The balancing round in which it last moved.
    pub last_moved_round: Option<u64>,
    /// The node it last moved away from: optional moves never send it back
    /// there (no ping-pong); only an evacuation may.
    pub left_node: Option<NodeId>,
    /// Its state exists only on `replicas` (its node is lost): a forced move
    /// may take it nowhere else.
    pub needs_replica: bool,
}

impl RankInfo {
    /// A CPU-bound rank with the given weight, nothing else known.
    pub fn with_weight(weight: f64) -> Self {
        RankInfo {
            weight,
            confidence: 1.0,
            state_bytes: 0,
            dirty_bytes: 0,
            class: RankClass::Cpu,
            node: None,
            replicas: Vec::new(),
            last_moved_round: None,
            left_node: None,
            needs_replica: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Up,
    /// Must be emptied (maintenance): capacity zero.
    Draining,
    /// Stopped answering: capacity zero.
    Dead,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    /// Cores × measured availability (see `topology::Capacity`).
    pub capacity: f64,
    pub state: NodeState,
    /// Bytes of rank state the node may hold.
    pub memory_bytes: u64,
    /// How many I/O-bound ranks the node takes (its CPU/I-O mix).
    pub io_slots: u32,
}

impl NodeInfo {
    pub fn up(capacity: f64) -> Self {
        NodeInfo {
            capacity,
            state: NodeState::Up,
            memory_bytes: u64::MAX,
            io_slots: u32::MAX,
        }
    }

    /// Draining and dead nodes count with capacity zero, so drain, failure
    /// and balancing share one code path.
    pub fn effective_capacity(&self) -> f64 {
        match self.state {
            NodeState::Up if self.capacity.is_finite() && self.capacity > 0.0 => self.capacity,
            _ => 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceConfig {
    /// Optional moves per round (evacuations of capacity-zero nodes are not bounded).
    pub max_moves: usize,
    /// After a move, its target must finish at least this fraction earlier
    /// than its source did before: a margin so estimate noise does not move ranks.
    pub min_improvement: f64,
    /// Refinement stops once the step time is within this fraction of the lower bound.
    pub target_slack: f64,
    /// A replica holder is chosen over the best node when it finishes at most
    /// this fraction of the lower bound later.
    pub replica_slack: f64,
    /// A plan runs only if its gain exceeds its cost times this factor.
    pub cost_factor: f64,
    /// A rank that moved stays put for this many rounds (unless its node goes away).
    pub cooldown_rounds: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            max_moves: 1024,
            min_improvement: 0.02,
            target_slack: 0.02,
            replica_slack: 0.02,
            cost_factor: 2.0,
            cooldown_rounds: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Move {
    pub rank: u32,
    pub from: Option<NodeId>,
    pub to: NodeId,
    /// Bytes the move carries (the change since the last checkpoint when `to` holds a replica).
    pub bytes: u64,
    pub to_replica: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Nothing to improve: the job is balanced (or cannot be improved by single moves).
    Balanced,
    /// The optional moves are justified: execute them with the forced ones.
    Execute,
    /// The optional moves do not pay for themselves; only the forced ones run.
    Rejected,
}

/// The balancer's output: what to move, what it predicts, and whether to do it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Evacuations from capacity-zero nodes and placements of unplaced ranks:
    /// always executed. An evacuated rank may move on in `moves` (from its
    /// forced target), so apply `forced` first, then `moves`.
    pub forced: Vec<Move>,
    /// Improvements, executed only when `verdict` is `Execute`.
    pub moves: Vec<Move>,
    /// Step time of the ranks that may stay, before any move.
    pub step_before: f64,
    /// Step time after the forced moves only.
    pub step_forced: f64,
    /// Step time after forced and optional moves.
    pub step_after: f64,
    /// `max(Σw/Σc, max w / max c)`: no map does better.
    pub lower_bound: f64,
    /// Predicted seconds saved over the remaining run by the optional moves.
    pub gain_s: f64,
    /// Predicted seconds the optional moves cost (freeze).
    pub cost_s: f64,
    pub verdict: Verdict,
}

impl Plan {
    /// The moves to carry out.
    pub fn to_execute(&self) -> impl Iterator<Item = &Move> {
        let optional = if self.verdict == Verdict::Execute {
            &self.moves[..]
        } else {
            &[]
        };
        self.forced.iter().chain(optional)
    }

    /// The predicted step time once `to_execute` is done.
    pub fn step_executed(&self) -> f64 {
        if self.verdict == Verdict::Execute {
            self.step_after
        } else {
            self.step_forced
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BalanceError {
    #[error("rank {rank} has an invalid weight {weight} (must be finite and >= 0)")]
    InvalidWeight { rank: u32, weight: f64 },
    #[error("rank {rank} is on node {node}, which is not in the node list")]
    UnknownNode { rank: u32, node: NodeId },
    #[error("no node can take rank {rank}: every node is down, full on memory or out of I/O slots")]
    NoFeasibleNode { rank: u32 },
    #[error("too many ranks or nodes ({0}); at most 2^32 - 1")]
    TooMany(usize),
}

/// `max(Σw/Σc, max_i w_i / max_j c_j)` over the nodes with capacity.
pub fn lower_bound(ranks: &[RankInfo], nodes: &[NodeInfo]) -> f64 {
    let caps = nodes.iter().map(NodeInfo::effective_capacity);
    let (sum_c, max_c) = caps.fold((0.0, 0.0f64), |(s, m), c| (s + c, m.max(c)));
    let (sum_w, max_w) = ranks
        .iter()
        .fold((0.0, 0.0f64), |(s, m), r| (s + r.weight, m.max(r.weight)));
    if max_c <= 0.0 {
        return f64::INFINITY;
    }
    (sum_w / sum_c).max(max_w / max_c)
}

/// The step time of a complete map (`map[i]` is rank i's node): the latest
/// node finish time; infinite if a loaded node has no capacity.
pub fn step_time(
    weights: impl IntoIterator<Item = f64>,
    map: &[NodeId],
    nodes: &[NodeInfo],
) -> f64 {
    let mut load = vec![0.0; nodes.len()];
    for (w, &n) in weights.into_iter().zip(map) {
        load[n as usize] += w;
    }
    load.iter()
        .zip(nodes)
        .map(|(&l, n)| finish(l, n.effective_capacity()))
        .fold(0.0, f64::max)
}

fn finish(load: f64, capacity: f64) -> f64 {
    if load <= 0.0 {
        0.0
    } else if capacity <= 0.0 {
        f64::INFINITY
    } else {
        load / capacity
    }
}

fn check_weights(ranks: &[RankInfo], nodes: &[NodeInfo]) -> Result<(), BalanceError> {
    if ranks.len() >= u32::MAX as usize || nodes.len() >= u32::MAX as usize {
        return Err(BalanceError::TooMany(ranks.len().max(nodes.len())));
    }
    for (i, r) in ranks.iter().enumerate() {
        if !r.weight.is_finite() || r.weight < 0.0 {
            return Err(BalanceError::InvalidWeight {
                rank: i as u32,
                weight: r.weight,
            });
        }
    }
    Ok(())
}
