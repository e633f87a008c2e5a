//! Rebalancing: refine the current map instead of recomputing it, so a job
//! that is nearly balanced moves few ranks.
//!
//! 1. Forced moves: ranks on nodes with capacity zero (draining, dead) and
//!    unplaced ranks go, heaviest first, to the node that finishes them first.
//! 2. Optional moves: while the node that finishes last is more than
//!    `target_slack` above the lower bound, move the one rank off it that cuts
//!    its finish time most without making the target finish later than that;
//!    a move that gains less than `min_improvement` ends the round (estimate
//!    noise must not move ranks). Ranks that moved within `cooldown_rounds`
//!    stay. At most `max_moves` per round.
//! 3. Justification: the optional moves run only if the step time they save,
//!    times the remaining steps, times the confidence of the moved ranks'
//!    estimates, exceeds `cost_factor` times their predicted freeze.
//!
//! Targets that hold a replica of the rank are preferred when they are nearly
//! as good (`replica_slack`), since the move then carries only the change
//! since the last checkpoint.

use super::targets::{Loads, Targets};
use super::{
    BalanceConfig, BalanceError, Move, MoveCostModel, NodeId, NodeInfo, Plan, RankInfo, Verdict,
    check_weights, lower_bound,
};
use std::collections::BinaryHeap;

struct State<'a> {
    ranks: &'a [RankInfo],
    nodes: &'a [NodeInfo],
    cfg: &'a BalanceConfig,
    lower_bound: f64,
    loads: Loads,
    targets: Targets,
}

impl State<'_> {
    /// The best target for `rank` other than `exclude`: (node, finish time there, holds a replica).
    fn choose(&mut self, rank: &RankInfo, exclude: Option<NodeId>) -> Option<(NodeId, f64, bool)> {
        let best = self.targets.best(&self.loads, self.nodes, rank, exclude);
        let replica = rank
            .replicas
            .iter()
            .copied()
            .filter(|&h| {
                (h as usize) < self.nodes.len()
                    && Some(h) != exclude
                    && self.loads.fits(self.nodes, h, rank)
            })
            .map(|h| {
                (
                    h,
                    (self.loads.load[h as usize] + rank.weight) / self.loads.cap[h as usize],
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match (best, replica) {
            (Some((_, fb)), Some((h, fh)))
                if fh <= fb + self.cfg.replica_slack * self.lower_bound =>
            {
                Some((h, fh, true))
            }
            (Some((n, fb)), _) => Some((n, fb, false)),
            (None, Some((h, fh))) => Some((h, fh, true)),
            (None, None) => None,
        }
    }

    fn apply(&mut self, i: u32, from: Option<NodeId>, to: NodeId, to_replica: bool) -> Move {
        let rank = &self.ranks[i as usize];
        if let Some(f) = from {
            self.loads.remove(f, rank);
            self.targets.update(&self.loads, f);
        }
        self.loads.add(to, rank);
        self.targets.update(&self.loads, to);
        let bytes = if to_replica {
            rank.dirty_bytes
        } else {
            rank.state_bytes
        };
        Move {
            rank: i,
            from,
            to,
            bytes,
            to_replica,
        }
    }
}

/// Plans one balancing round. `round` counts rounds (for the cooldown);
/// `remaining_steps` is the job's expected number of steps still to run.
pub fn rebalance(
    ranks: &[RankInfo],
    nodes: &[NodeInfo],
    cost: &MoveCostModel,
    remaining_steps: u64,
    round: u64,
    cfg: &BalanceConfig,
) -> Result<Plan, BalanceError> {
    check_weights(ranks, nodes)?;
    let mut loads = Loads::new(nodes);
    let mut on_node: Vec<Vec<u32>> = vec![Vec::new(); nodes.len()];
    let mut homeless = Vec::new();
    for (i, r) in ranks.iter().enumerate() {
        match r.node {
            Some(n) if n as usize >= nodes.len() => {
                return Err(BalanceError::UnknownNode {
                    rank: i as u32,
                    node: n,
                });
            }
            Some(n) if loads.cap[n as usize] > 0.0 => {
                loads.add(n, r);
                on_node[n as usize].push(i as u32);
            }
            _ => homeless.push(i as u32),
        }
    }
    let step_before = loads.step_time();
    let targets = Targets::new(&loads);
    let mut st = State {
        ranks,
        nodes,
        cfg,
        lower_bound: lower_bound(ranks, nodes),
        loads,
        targets,
    };

    homeless.sort_unstable_by(|&a, &b| {
        ranks[b as usize]
            .weight
            .total_cmp(&ranks[a as usize].weight)
    });
    let mut forced = Vec::with_capacity(homeless.len());
    for &i in &homeless {
        let (to, _, to_replica) = st
            .choose(&ranks[i as usize], None)
            .ok_or(BalanceError::NoFeasibleNode { rank: i })?;
        forced.push(st.apply(i, ranks[i as usize].node, to, to_replica));
        on_node[to as usize].push(i);
    }
    let step_forced = st.loads.step_time();

    let key = |f: f64| f.max(0.0).to_bits();
    let mut sources: BinaryHeap<(u64, NodeId)> = (0..nodes.len() as NodeId)
        .filter(|&n| st.loads.cap[n as usize] > 0.0 && st.loads.load[n as usize] > 0.0)
        .map(|n| (key(st.loads.finish(n)), n))
        .collect();
    let mut moved = vec![false; ranks.len()];
    for m in &forced {
        moved[m.rank as usize] = true;
    }
    let cooling = |r: &RankInfo| {
        r.last_moved_round
            .is_some_and(|m| round < m.saturating_add(cfg.cooldown_rounds))
    };
    let mut moves = Vec::new();
    while moves.len() < cfg.max_moves {
        let Some((k, s)) = sources.pop() else { break };
        let fs = st.loads.finish(s);
        if k != key(fs) {
            continue; // stale entry
        }
        if fs <= st.lower_bound * (1.0 + cfg.target_slack) {
            break;
        }
        let (ls, cs) = (st.loads.load[s as usize], st.loads.cap[s as usize]);
        let mut best: Option<(usize, NodeId, bool, f64)> = None;
        for (pos, &i) in on_node[s as usize].iter().enumerate() {
            let rank = &ranks[i as usize];
            if moved[i as usize] || cooling(rank) || rank.weight <= 0.0 {
                continue;
            }
            let Some((t, ft, to_replica)) = st.choose(rank, Some(s)) else {
                continue;
            };
            let improvement = fs - ((ls - rank.weight) / cs).max(ft);
            if best.is_none_or(|b| improvement > b.3) {
                best = Some((pos, t, to_replica, improvement));
            }
        }
        let Some((pos, t, to_replica, improvement)) = best else {
            break;
        };
        if improvement < cfg.min_improvement * fs {
            break; // the slowest node cannot be improved by one move
        }
        let i = on_node[s as usize].swap_remove(pos);
        moves.push(st.apply(i, Some(s), t, to_replica));
        on_node[t as usize].push(i);
        moved[i as usize] = true;
        sources.push((key(st.loads.finish(s)), s));
        sources.push((key(st.loads.finish(t)), t));
    }
    let step_after = st.loads.step_time();

    let bytes: u64 = moves.iter().map(|m| m.bytes).sum();
    let cost_s = if moves.is_empty() {
        0.0
    } else {
        cost.freeze_s(bytes, forced.is_empty())
    };
    let confidence = if moves.is_empty() {
        0.0
    } else {
        moves
            .iter()
            .map(|m| ranks[m.rank as usize].confidence.clamp(0.0, 1.0))
            .sum::<f64>()
            / moves.len() as f64
    };
    let gain_s = (step_forced - step_after).max(0.0) * remaining_steps as f64 * confidence;
    let verdict = if moves.is_empty() {
        Verdict::Balanced
    } else if gain_s > cfg.cost_factor * cost_s {
        Verdict::Execute
    } else {
        Verdict::Rejected
    };
    Ok(Plan {
        forced,
        moves,
        step_before,
        step_forced,
        step_after,
        lower_bound: st.lower_bound,
        gain_s,
        cost_s,
        verdict,
    })
}
