//! Initial placement: weighted longest-processing-time first. Ranks are taken
//! heaviest first, each onto the node that would then finish it first, among
//! the nodes with room in memory and (for I/O-bound ranks) a free I/O slot.
//! Where ranks run now is ignored (this is also the "full greedy
//! reassignment" baseline of the simulator).

use super::targets::{Loads, Targets};
use super::{BalanceError, NodeId, NodeInfo, RankInfo, check_weights};

/// Returns each rank's node (`map[i]` for rank i).
pub fn place(ranks: &[RankInfo], nodes: &[NodeInfo]) -> Result<Vec<NodeId>, BalanceError> {
    check_weights(ranks, nodes)?;
    // Sort (weight, index) pairs: contiguous, unlike comparisons that reach into `ranks`.
    let mut order: Vec<(f64, u32)> = ranks
        .iter()
        .enumerate()
        .map(|(i, r)| (r.weight, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut loads = Loads::new(nodes);
    let mut targets = Targets::new(&loads);
    let mut map = vec![0; ranks.len()];
    for (_, i) in order {
        let rank = &ranks[i as usize];
        let (n, _) = targets
            .best(&loads, nodes, rank, [None, None])
            .ok_or(BalanceError::NoFeasibleNode { rank: i })?;
        loads.add(n, rank);
        targets.update(&loads, n);
        map[i as usize] = n;
    }
    Ok(map)
}
