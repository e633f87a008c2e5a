//! Rebalancing: refine the current map instead of recomputing it, so a job
//! that is nearly balanced moves few ranks.
//!
//! 1. Forced moves: ranks on nodes with capacity zero (draining, dead) and
//!    unplaced ranks go, heaviest first, to the node that finishes them first.
//! 2. Optional moves: while the node that finishes last is more than
//!    `target_slack` above the lower bound, move the one rank off it that cuts
//!    its finish time most. The target must then still finish at least
//!    `min_improvement` (a fraction) earlier than the source did before: a
//!    margin, so estimate noise cannot move a rank back and forth. When a rank
//!    is too big for the room on its best target, it may be swapped for a
//!    lighter rank there that makes the room. When neither helps, the round
//!    ends (the slowest node decides the step time). A rank moved earlier in
//!    the round may move on; the plan holds one move per rank. Ranks that
//!    moved within `cooldown_rounds` stay, and no optional move sends a rank
//!    back to the node it last left. At most `max_moves` per round.
//! 3. Justification: the optional moves run only if the step time they save,
//!    times the remaining steps, times the confidence of the moved ranks'
//!    estimates, exceeds `cost_factor` times their predicted freeze. Transfers
//!    run in parallel, so the freeze is the relaunch plus the bytes of the
//!    busiest node's link (the relaunch is not counted again when forced moves
//!    already pay for it).
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

/// One way to unload the slowest node: move the rank at `pos` to `t`, and
/// with `swap`, the rank at that position on `t` back to the source.
struct Candidate {
    pos: usize,
    t: NodeId,
    to_replica: bool,
    swap: Option<(usize, bool)>,
    improvement: f64,
}

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
    fn choose(
        &mut self,
        rank: &RankInfo,
        exclude: [Option<NodeId>; 2],
    ) -> Option<(NodeId, f64, bool)> {
        let best = self.targets.best(&self.loads, self.nodes, rank, exclude);
        let replica = rank
            .replicas
            .iter()
            .copied()
            .filter(|&h| {
                (h as usize) < self.nodes.len()
                    && !exclude.contains(&Some(h))
                    && self.loads.fits(self.nodes, h, rank)
            })
            .map(|h| {
                (
                    h,
                    (self.loads.load[h as usize] + rank.weight) / self.loads.cap[h as usize],
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if rank.needs_replica {
            return replica.map(|(h, fh)| (h, fh, true));
        }
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

/// The forced moves of [`rebalance`] alone, for a re-placement after nodes
/// were lost or drained: `staying` are the ranks that keep their node (its
/// id, their weight, state bytes and class), `homeless` the ranks that need
/// one, with their global ids. Each homeless rank goes, heaviest first, to
/// the node that finishes it first — a replica holder when it
/// `needs_replica`. Cost: one pass over `staying`, then `O(log N)` per
/// homeless rank, so a job of 10⁵ ranks that lost 10³ is re-placed in
/// milliseconds.
pub fn evacuate(
    nodes: &[NodeInfo],
    staying: impl IntoIterator<Item = (NodeId, f64, u64, super::RankClass)>,
    homeless: &[(u32, RankInfo)],
) -> Result<Vec<Move>, BalanceError> {
    let infos: Vec<RankInfo> = homeless.iter().map(|(_, r)| r.clone()).collect();
    check_weights(&infos, nodes)?;
    let mut loads = Loads::new(nodes);
    let (mut sum_w, mut max_w) = (0.0f64, 0.0f64);
    for (n, weight, state_bytes, class) in staying {
        if (n as usize) < nodes.len() {
            let rank = RankInfo {
                state_bytes,
                class,
                ..RankInfo::with_weight(weight)
            };
            loads.add(n, &rank);
        }
        sum_w += weight;
        max_w = max_w.max(weight);
    }
    for r in &infos {
        sum_w += r.weight;
        max_w = max_w.max(r.weight);
    }
    let caps = nodes.iter().map(NodeInfo::effective_capacity);
    let (sum_c, max_c) = caps.fold((0.0, 0.0f64), |(s, m), c| (s + c, m.max(c)));
    let lower_bound = if max_c > 0.0 {
        (sum_w / sum_c).max(max_w / max_c)
    } else {
        f64::INFINITY
    };
    let targets = Targets::new(&loads);
    let cfg = BalanceConfig::default();
    let mut st = State {
        ranks: &infos,
        nodes,
        cfg: &cfg,
        lower_bound,
        loads,
        targets,
    };
    let mut order: Vec<u32> = (0..infos.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        infos[b as usize]
            .weight
            .total_cmp(&infos[a as usize].weight)
    });
    let mut moves = Vec::with_capacity(order.len());
    for i in order {
        let (rank_id, rank) = &homeless[i as usize];
        let (to, _, to_replica) = st
            .choose(rank, [None, None])
            .ok_or(BalanceError::NoFeasibleNode { rank: *rank_id })?;
        let m = st.apply(i, rank.node, to, to_replica);
        moves.push(Move {
            rank: *rank_id,
            ..m
        });
    }
    Ok(moves)
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
            .choose(&ranks[i as usize], [None, None])
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
    // Where each rank is once the forced moves are done.
    let mut home: Vec<Option<NodeId>> = ranks.iter().map(|r| r.node).collect();
    for m in &forced {
        home[m.rank as usize] = Some(m.to);
    }
    let cooling = |r: &RankInfo| {
        r.last_moved_round
            .is_some_and(|m| round < m.saturating_add(cfg.cooldown_rounds))
    };
    // A rank may move again within the round (a later move or swap may need
    // it elsewhere); the plan keeps one move per rank, from where it was.
    let mut moves: Vec<Option<Move>> = Vec::new();
    let mut move_of = vec![u32::MAX; ranks.len()];
    let mut record = |m: Move| {
        let home = home[m.rank as usize];
        let slot = &mut move_of[m.rank as usize];
        let m = Move { from: home, ..m };
        let m = (Some(m.to) != home).then_some(m);
        if *slot == u32::MAX {
            *slot = moves.len() as u32;
            moves.push(m);
        } else {
            moves[*slot as usize] = m;
        }
    };
    let mut steps = 0;
    while steps < cfg.max_moves {
        let Some((k, s)) = sources.pop() else { break };
        let fs = st.loads.finish(s);
        if k != key(fs) {
            continue; // stale entry
        }
        if fs <= st.lower_bound * (1.0 + cfg.target_slack) {
            break;
        }
        let (ls, cs) = (st.loads.load[s as usize], st.loads.cap[s as usize]);
        let ceiling = (1.0 - cfg.min_improvement) * fs;
        let swaps_allowed = steps + 2 <= cfg.max_moves;
        let mut best: Option<Candidate> = None;
        for (pos, &i) in on_node[s as usize].iter().enumerate() {
            let rank = &ranks[i as usize];
            if cooling(rank) || rank.weight <= 0.0 {
                continue;
            }
            let Some((t, ft, to_replica)) = st.choose(rank, [Some(s), rank.left_node]) else {
                continue;
            };
            let mut candidate = Candidate {
                pos,
                t,
                to_replica,
                swap: None,
                improvement: 0.0,
            };
            // The margin: the target must stay clearly below the source's old finish.
            if ft <= ceiling {
                candidate.improvement = fs - ((ls - rank.weight) / cs).max(ft);
            } else if swaps_allowed {
                // Too big for the room on `t`: trade it for a lighter rank of `t`
                // that brings the target under the ceiling.
                let (lt, ct) = (st.loads.load[t as usize], st.loads.cap[t as usize]);
                let need = lt + rank.weight - ceiling * ct;
                let back = on_node[t as usize]
                    .iter()
                    .enumerate()
                    .filter(|&(_, &q)| {
                        let r = &ranks[q as usize];
                        !cooling(r)
                            && r.left_node != Some(s)
                            && r.weight >= need
                            && r.weight < rank.weight
                            && st.loads.fits(nodes, s, r)
                    })
                    .min_by(|a, b| {
                        ranks[*a.1 as usize]
                            .weight
                            .total_cmp(&ranks[*b.1 as usize].weight)
                    });
                if let Some((qpos, &q)) = back {
                    let v = ranks[q as usize].weight;
                    let new_s = (ls - rank.weight + v) / cs;
                    let new_t = (lt + rank.weight - v) / ct;
                    candidate.improvement = fs - new_s.max(new_t);
                    candidate.swap = Some((qpos, ranks[q as usize].replicas.contains(&s)));
                }
            }
            if candidate.improvement > 0.0
                && best
                    .as_ref()
                    .is_none_or(|b| candidate.improvement > b.improvement)
            {
                best = Some(candidate);
            }
        }
        // None: the slowest node cannot be improved by one clear move or swap.
        let Some(Candidate {
            pos,
            t,
            to_replica,
            swap,
            ..
        }) = best
        else {
            break;
        };
        let i = on_node[s as usize].swap_remove(pos);
        record(st.apply(i, Some(s), t, to_replica));
        steps += 1;
        if let Some((qpos, back_to_replica)) = swap {
            let q = on_node[t as usize].swap_remove(qpos);
            record(st.apply(q, Some(t), s, back_to_replica));
            steps += 1;
            on_node[s as usize].push(q);
        }
        on_node[t as usize].push(i);
        sources.push((key(st.loads.finish(s)), s));
        sources.push((key(st.loads.finish(t)), t));
    }
    let step_after = st.loads.step_time();
    let moves: Vec<Move> = moves.into_iter().flatten().collect();

    let cost_s = if moves.is_empty() {
        0.0
    } else {
        cost.freeze_s(busiest_link_bytes(&moves, nodes.len()), forced.is_empty())
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
    tracing::debug!(
        forced = forced.len(),
        moves = moves.len(),
        step_before,
        step_forced,
        step_after,
        gain_s,
        cost_s,
        ?verdict,
        "rebalance plan"
    );
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

/// Transfers run in parallel; the freeze lasts as long as the node that
/// sends or receives the most bytes needs.
fn busiest_link_bytes(moves: &[Move], nodes: usize) -> u64 {
    let mut link = vec![0u64; nodes];
    for m in moves {
        link[m.to as usize] += m.bytes;
        if let Some(f) = m.from {
            link[f as usize] += m.bytes;
        }
    }
    link.into_iter().max().unwrap_or(0)
}
