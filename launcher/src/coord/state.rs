//! The job's placement and checkpoints as the coordinator sees them: nodes
//! and their health, where every rank runs, who holds whose replicas,
//! which epochs are published and which is committed. Pure logic, sized
//! for 10⁵ ranks on 10⁴ nodes: every update is incremental, and nothing is
//! O(ranks × nodes).

use pm_core::balance::{self, NodeInfo, NodeState, RankClass, RankInfo};
use pm_core::proto::NodeId;
use std::collections::BTreeMap;

pub use pm_core::proto::Health;

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub slots: u32,
    /// Started without ranks: a replica holder and a place to recover to.
    pub spare: bool,
    pub health: Health,
    /// False once the node failed to store replicas repeatedly: it keeps
    /// its ranks but is no partner any more.
    pub holds_replicas: bool,
}

impl Node {
    pub fn usable(&self) -> bool {
        self.health == Health::Alive
    }

    fn can_be_partner(&self) -> bool {
        self.usable() && self.holds_replicas
    }
}

/// A committed epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub epoch: u64,
    pub step: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error(
        "rank {rank}'s checkpoint of epoch {epoch} was held only by nodes that are gone ({holders}); \
         the job cannot continue: raise --replicas to survive more simultaneous losses"
    )]
    Lost {
        rank: u32,
        epoch: u64,
        holders: String,
    },
    #[error("no node is left to run the job")]
    NoNodes,
}

/// A rank moved from one node to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub rank: u32,
    pub from: NodeId,
    pub to: NodeId,
}

/// One rank's copies of an epoch in flight.
#[derive(Clone, Debug, Default)]
struct Copies {
    published: bool,
    /// Nodes holding the snapshot, its own node included once published.
    holders: Vec<NodeId>,
    /// Published, and held by enough usable partners.
    complete: bool,
}

/// An epoch some rank published and that is not committed yet.
#[derive(Clone, Debug)]
struct InFlight {
    ranks: Vec<Copies>,
    complete: u32,
    step: u64,
    state_bytes: u64,
    written_bytes: u64,
}

pub struct JobState {
    pub nodes: Vec<Node>,
    pub ranks: u32,
    /// Replicas wanted per snapshot (`--replicas`).
    pub replicas: usize,
    /// Node of every rank.
    pub placement: Vec<NodeId>,
    /// Partner nodes of every rank.
    pub partners: Vec<Vec<NodeId>>,
    pub committed: Option<Commit>,
    /// Size of the committed epoch over all ranks: state bytes, bytes written.
    pub committed_bytes: Option<(u64, u64)>,
    /// Nodes holding each rank's committed snapshot (its own node included).
    committed_holders: Vec<Vec<NodeId>>,
    in_flight: BTreeMap<u64, InFlight>,
    /// Replicas every snapshot can get now (see [`JobState::effective_replicas`]).
    want: usize,
    /// Ranks placed on each node.
    counts: Vec<u32>,
    /// A partner each rank must have besides the chosen ones: the target of
    /// a planned move, filled before the move so that it carries only the
    /// change since the last checkpoint.
    pinned: Vec<Option<NodeId>>,
    /// Each rank's expected compute seconds per step on one core, and each
    /// node's capacity (CPUs × availability): what re-placement weighs.
    pub weights: Vec<f64>,
    pub capacity: Vec<f64>,
}

impl JobState {
    /// A job of `ranks` ranks spread over the nodes that are not spares, in
    /// contiguous blocks proportional to their slots.
    pub fn new(nodes: Vec<Node>, ranks: u32, replicas: usize) -> Result<Self, PlacementError> {
        let workers: Vec<usize> = (0..nodes.len()).filter(|&i| !nodes[i].spare).collect();
        if workers.is_empty() {
            return Err(PlacementError::NoNodes);
        }
        let total: u64 = workers
            .iter()
            .map(|&i| u64::from(nodes[i].slots.max(1)))
            .sum();
        // Rank r goes to the node whose cumulative slot share covers it.
        let mut placement = Vec::with_capacity(ranks as usize);
        let mut k = 0;
        let mut acc = u64::from(nodes[workers[0]].slots.max(1));
        for r in 0..u64::from(ranks) {
            while k + 1 < workers.len() && r >= (acc * u64::from(ranks)).div_ceil(total) {
                k += 1;
                acc += u64::from(nodes[workers[k]].slots.max(1));
            }
            placement.push(NodeId::from_index(workers[k]));
        }
        let mut state = Self {
            nodes,
            ranks,
            replicas,
            placement,
            partners: vec![Vec::new(); ranks as usize],
            committed: None,
            committed_bytes: None,
            committed_holders: vec![Vec::new(); ranks as usize],
            in_flight: BTreeMap::new(),
            want: 0,
            counts: Vec::new(),
            pinned: vec![None; ranks as usize],
            weights: vec![1.0; ranks as usize],
            capacity: Vec::new(),
        };
        state.capacity = state
            .nodes
            .iter()
            .map(|n| f64::from(n.slots.max(1)))
            .collect();
        state.count_ranks();
        state.nodes_changed();
        Ok(state)
    }

    /// Replaces the placement (a weighted initial one, or one given by the user).
    pub fn set_placement(&mut self, placement: Vec<NodeId>) {
        debug_assert_eq!(placement.len(), self.ranks as usize);
        self.placement = placement;
        self.count_ranks();
        self.choose_partners();
    }

    /// Moves ranks where a balancing plan says; their pins go.
    pub fn apply_moves(&mut self, moves: &[(u32, NodeId)]) {
        for &(r, to) in moves {
            self.placement[r as usize] = to;
        }
        self.pinned.iter_mut().for_each(|p| *p = None);
        self.count_ranks();
        self.choose_partners();
    }

    /// Makes `node` a partner of `rank` (the target of a planned move).
    pub fn pin_partner(&mut self, rank: u32, node: NodeId) {
        self.pinned[rank as usize] = Some(node);
        self.choose_partners();
    }

    /// Forgets every pin (a planned move that will not happen).
    pub fn unpin_all(&mut self) {
        if self.pinned.iter().any(Option::is_some) {
            self.pinned.iter_mut().for_each(|p| *p = None);
            self.choose_partners();
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// Nodes that are alive and in service.
    pub fn usable_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.usable()).count()
    }

    /// Replicas every snapshot can actually get: one per other usable
    /// node that holds replicas.
    pub fn effective_replicas(&self) -> usize {
        self.want
    }

    /// Sets a node's health; partners are chosen again and epochs in
    /// flight re-checked against the new replica count.
    pub fn set_health(&mut self, node: NodeId, health: Health) {
        self.set_healths(&[node], health);
    }

    /// [`JobState::set_health`] for many nodes at once (one recomputation:
    /// 100 nodes lost in one tick cost what one does).
    pub fn set_healths(&mut self, nodes: &[NodeId], health: Health) {
        for n in nodes {
            self.nodes[n.index()].health = health;
        }
        self.nodes_changed();
    }

    fn count_ranks(&mut self) {
        self.counts = vec![0; self.nodes.len()];
        for n in &self.placement {
            self.counts[n.index()] += 1;
        }
    }

    /// The node stores no replicas any more (it keeps its ranks).
    pub fn stop_holding_replicas(&mut self, node: NodeId) {
        self.nodes[node.index()].holds_replicas = false;
        self.nodes_changed();
    }

    fn nodes_changed(&mut self) {
        let capable = self.nodes.iter().filter(|n| n.can_be_partner()).count();
        self.want = self.replicas.min(capable.saturating_sub(1));
        self.choose_partners();
        let epochs: Vec<u64> = self.in_flight.keys().copied().collect();
        for epoch in epochs {
            for r in 0..self.ranks {
                self.refresh(epoch, r);
            }
        }
    }

    /// The ranks of every node, in one pass.
    pub fn ranks_by_node(&self) -> Vec<Vec<u32>> {
        let mut by_node = vec![Vec::new(); self.nodes.len()];
        for (r, n) in self.placement.iter().enumerate() {
            by_node[n.index()].push(r as u32);
        }
        by_node
    }

    /// Ranks placed on `node`.
    pub fn rank_count(&self, node: NodeId) -> u32 {
        self.counts[node.index()]
    }

    /// Chooses every rank's partners: usable nodes other than its own,
    /// spares first, then the next nodes round the ring (so replicas spread
    /// evenly), keeping partners that still qualify so that nothing is
    /// copied again needlessly.
    pub fn choose_partners(&mut self) {
        let want = self.want;
        let capable: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].can_be_partner())
            .collect();
        let spares: Vec<usize> = capable
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].spare)
            .collect();
        for r in 0..self.ranks as usize {
            let home = self.placement[r].index();
            let mut chosen: Vec<NodeId> = std::mem::take(&mut self.partners[r]);
            chosen.retain(|p| p.index() != home && self.nodes[p.index()].can_be_partner());
            chosen.truncate(want);
            // A pinned partner comes on top of the wanted ones.
            let pin = self.pinned[r].filter(|p| {
                p.index() != home && self.nodes[p.index()].can_be_partner() && !chosen.contains(p)
            });
            for list in [&spares, &capable] {
                // The list in ring order from the rank's node.
                let start = list.partition_point(|&i| i <= home);
                for k in 0..list.len() {
                    if chosen.len() >= want {
                        break;
                    }
                    let n = list[(start + k) % list.len()];
                    let id = NodeId::from_index(n);
                    if n != home && !chosen.contains(&id) {
                        chosen.push(id);
                    }
                }
            }
            chosen.extend(pin);
            self.partners[r] = chosen;
        }
    }

    /// Rank `rank` published `epoch` on its node.
    pub fn published(
        &mut self,
        rank: u32,
        epoch: u64,
        step: u64,
        state_bytes: u64,
        written_bytes: u64,
    ) {
        if rank >= self.ranks || self.committed.is_some_and(|c| epoch <= c.epoch) {
            return;
        }
        let home = self.placement[rank as usize];
        let e = self.in_flight_mut(epoch);
        let copies = &mut e.ranks[rank as usize];
        if copies.published {
            return;
        }
        copies.published = true;
        if !copies.holders.contains(&home) {
            copies.holders.push(home);
        }
        e.step = e.step.max(step);
        e.state_bytes += state_bytes;
        e.written_bytes += written_bytes;
        self.refresh(epoch, rank);
    }

    /// `node` stored a replica of `rank`'s snapshot of `epoch`.
    pub fn replica_stored(&mut self, rank: u32, epoch: u64, node: NodeId) {
        if rank >= self.ranks || node.index() >= self.nodes.len() {
            return;
        }
        match self.committed {
            Some(c) if epoch < c.epoch => {}
            Some(c) if epoch == c.epoch => {
                // A fill of the committed epoch: one more place to recover from.
                let holders = &mut self.committed_holders[rank as usize];
                if !holders.contains(&node) {
                    holders.push(node);
                }
            }
            _ => {
                let holders = &mut self.in_flight_mut(epoch).ranks[rank as usize].holders;
                if !holders.contains(&node) {
                    holders.push(node);
                }
                self.refresh(epoch, rank);
            }
        }
    }

    /// The bookkeeping of `epoch`, begun by whichever of its messages comes first.
    fn in_flight_mut(&mut self, epoch: u64) -> &mut InFlight {
        let ranks = self.ranks as usize;
        self.in_flight.entry(epoch).or_insert_with(|| InFlight {
            ranks: vec![Copies::default(); ranks],
            complete: 0,
            step: 0,
            state_bytes: 0,
            written_bytes: 0,
        })
    }

    /// Re-evaluates whether `rank`'s copies of `epoch` are complete.
    fn refresh(&mut self, epoch: u64, rank: u32) {
        let home = self.placement[rank as usize];
        let (nodes, want) = (&self.nodes, self.want);
        let Some(e) = self.in_flight.get_mut(&epoch) else {
            return;
        };
        let copies = &mut e.ranks[rank as usize];
        let partners = copies
            .holders
            .iter()
            .filter(|&&n| n != home && nodes[n.index()].usable())
            .count();
        let complete = copies.published && copies.holders.contains(&home) && partners >= want;
        if complete != copies.complete {
            copies.complete = complete;
            if complete {
                e.complete += 1;
            } else {
                e.complete -= 1;
            }
        }
    }

    /// The newest epoch that can now be committed: every rank published it
    /// and, besides its own node, enough usable nodes hold it. Older
    /// bookkeeping is dropped; the commit is returned for the agents.
    pub fn try_commit(&mut self) -> Option<Commit> {
        let epoch = self
            .in_flight
            .iter()
            .rev()
            .find(|(_, e)| e.complete == self.ranks)
            .map(|(&epoch, _)| epoch)?;
        let newer = self.in_flight.split_off(&(epoch + 1));
        let mut done = std::mem::replace(&mut self.in_flight, newer);
        let e = done.remove(&epoch).expect("found above");
        let commit = Commit {
            epoch,
            step: e.step,
        };
        self.committed = Some(commit);
        self.committed_bytes = Some((e.state_bytes, e.written_bytes));
        self.committed_holders = e.ranks.into_iter().map(|c| c.holders).collect();
        Some(commit)
    }

    /// Nodes holding `rank`'s committed snapshot.
    pub fn holders_of_committed(&self, rank: u32) -> &[NodeId] {
        match self.committed {
            Some(_) => &self.committed_holders[rank as usize],
            None => &[],
        }
    }

    /// The newest epoch some rank published (committed or not).
    pub fn newest_published(&self) -> Option<u64> {
        self.in_flight
            .iter()
            .rev()
            .find(|(_, e)| e.ranks.iter().any(|c| c.published))
            .map(|(&epoch, _)| epoch)
            .or(self.committed.map(|c| c.epoch))
    }

    /// Size of an epoch in flight: (state bytes, bytes written) over all ranks.
    pub fn epoch_bytes(&self, epoch: u64) -> Option<(u64, u64)> {
        let e = self.in_flight.get(&epoch)?;
        Some((e.state_bytes, e.written_bytes))
    }

    /// Forgets epochs newer than the committed one: after a relaunch they
    /// are never committed (the ranks write them again).
    pub fn forget_uncommitted(&mut self) {
        self.in_flight.clear();
    }

    /// Resumes a job whose `commit` is on the nodes' stores: `holders[r]`
    /// are the nodes holding rank r's snapshot of it. Ranks whose node
    /// lacks it move to one that has it.
    pub fn resume(
        &mut self,
        commit: Commit,
        holders: Vec<Vec<NodeId>>,
    ) -> Result<Vec<Move>, PlacementError> {
        self.committed = Some(commit);
        self.in_flight.clear();
        self.committed_holders = holders;
        self.committed_holders
            .resize(self.ranks as usize, Vec::new());
        self.replace_lost_ranks()
    }

    /// Moves every rank off nodes that are not usable (or, after a resume,
    /// that lack its committed snapshot) with the balancer's forced moves:
    /// heaviest first, each to the node that finishes it first, and once a
    /// checkpoint is committed only to a usable node that holds the rank's
    /// snapshot of it (its state is nowhere else). Then chooses partners
    /// again. Returns the ranks moved.
    pub fn replace_lost_ranks(&mut self) -> Result<Vec<Move>, PlacementError> {
        if !self.nodes.iter().any(Node::usable) {
            return Err(PlacementError::NoNodes);
        }
        let committed = self.committed;
        let mut staying = Vec::with_capacity(self.ranks as usize);
        let mut homeless = Vec::new();
        for r in 0..self.ranks {
            let home = self.placement[r as usize];
            let holders = self.holders_of_committed(r);
            let weight = self.weights[r as usize];
            if self.node(home).usable() && (committed.is_none() || holders.contains(&home)) {
                staying.push((home.0, weight, 0, RankClass::Cpu));
            } else {
                let info = RankInfo {
                    replicas: holders.iter().map(|n| n.0).collect(),
                    needs_replica: committed.is_some(),
                    ..RankInfo::with_weight(weight)
                };
                homeless.push((r, info));
            }
        }
        let nodes: Vec<NodeInfo> = self
            .nodes
            .iter()
            .zip(&self.capacity)
            .map(|(n, &c)| NodeInfo {
                state: match n.health {
                    Health::Alive => NodeState::Up,
                    Health::Drained => NodeState::Draining,
                    Health::Dead => NodeState::Dead,
                },
                ..NodeInfo::up(c.max(1e-6))
            })
            .collect();
        let forced = balance::evacuate(&nodes, staying, &homeless).map_err(|e| match e {
            balance::BalanceError::NoFeasibleNode { rank } => {
                let names: Vec<&str> = self
                    .holders_of_committed(rank)
                    .iter()
                    .map(|&n| self.node(n).name.as_str())
                    .collect();
                PlacementError::Lost {
                    rank,
                    epoch: committed.map_or(0, |c| c.epoch),
                    holders: names.join(", "),
                }
            }
            _ => PlacementError::NoNodes,
        })?;
        let moves: Vec<Move> = forced
            .iter()
            .map(|m| Move {
                rank: m.rank,
                from: self.placement[m.rank as usize],
                to: NodeId(m.to),
            })
            .collect();
        for m in &moves {
            self.placement[m.rank as usize] = m.to;
        }
        self.count_ranks();
        self.choose_partners();
        Ok(moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn nodes(k: usize, spares: usize) -> Vec<Node> {
        (0..k)
            .map(|i| Node {
                name: format!("node{}", i + 1),
                slots: 2,
                spare: i >= k - spares,
                health: Health::Alive,
                holds_replicas: true,
            })
            .collect()
    }

    fn ids(v: &[usize]) -> Vec<NodeId> {
        v.iter().map(|&i| NodeId::from_index(i)).collect()
    }

    fn publish_all(s: &mut JobState, epoch: u64) {
        for r in 0..s.ranks {
            s.published(r, epoch, epoch * 10, 100, 10);
        }
    }

    fn replicate_all(s: &mut JobState, epoch: u64) {
        for r in 0..s.ranks {
            for p in s.partners[r as usize].clone() {
                s.replica_stored(r, epoch, p);
            }
        }
    }

    #[test]
    fn ranks_spread_in_blocks_and_spares_get_none() {
        let s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        assert_eq!(s.placement, ids(&[0, 0, 1, 1, 2, 2, 3, 3]));
        let s = JobState::new(nodes(4, 1), 6, 1).unwrap();
        assert_eq!(s.placement, ids(&[0, 0, 1, 1, 2, 2]));
        let s = JobState::new(nodes(3, 0), 4, 1).unwrap();
        assert_eq!(s.placement, ids(&[0, 0, 1, 2]));
        assert!(JobState::new(nodes(2, 2), 2, 1).is_err());
    }

    #[test]
    fn partners_are_other_distinct_nodes_and_prefer_spares() {
        for (k, spares, r) in [(4, 0, 1), (4, 0, 2), (5, 1, 2), (4, 0, 3), (3, 0, 5)] {
            let s = JobState::new(nodes(k, spares), 8, r).unwrap();
            for rank in 0..8 {
                let p = &s.partners[rank];
                assert_eq!(p.len(), r.min(k - 1));
                assert!(!p.contains(&s.placement[rank]));
                let distinct: BTreeSet<_> = p.iter().collect();
                assert_eq!(distinct.len(), p.len());
                if spares > 0 {
                    assert!(
                        p.contains(&NodeId::from_index(k - 1)),
                        "spare preferred: {p:?}"
                    );
                }
            }
        }
        // Without spares, the next node round the ring.
        let s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        assert_eq!(s.partners[0], ids(&[1]));
        assert_eq!(s.partners[7], ids(&[0]));
    }

    #[test]
    fn commits_only_when_every_rank_is_held_by_its_partners() {
        let mut s = JobState::new(nodes(4, 0), 8, 2).unwrap();
        publish_all(&mut s, 1);
        assert_eq!(s.try_commit(), None, "no replicas yet");
        for r in 0..8 {
            s.replica_stored(r, 1, s.partners[r as usize][0]);
        }
        assert_eq!(s.try_commit(), None, "one replica of two");
        replicate_all(&mut s, 1);
        assert_eq!(s.try_commit(), Some(Commit { epoch: 1, step: 10 }));
        // Epoch 2 partly replicated, epoch 3 complete: 3 commits, 2 is skipped.
        publish_all(&mut s, 2);
        publish_all(&mut s, 3);
        replicate_all(&mut s, 3);
        assert_eq!(s.try_commit(), Some(Commit { epoch: 3, step: 30 }));
        assert_eq!(s.try_commit(), None);
        assert_eq!(s.holders_of_committed(0).len(), 3);
        assert_eq!(s.committed_bytes, Some((800, 80)));
    }

    #[test]
    fn a_replica_may_arrive_before_its_rank_publishes() {
        let mut s = JobState::new(nodes(2, 0), 2, 1).unwrap();
        replicate_all(&mut s, 1);
        assert_eq!(s.try_commit(), None);
        publish_all(&mut s, 1);
        assert_eq!(s.try_commit(), Some(Commit { epoch: 1, step: 10 }));
    }

    #[test]
    fn losing_a_partner_s_node_leaves_fewer_replicas_to_wait_for() {
        let mut s = JobState::new(nodes(2, 0), 4, 1).unwrap();
        publish_all(&mut s, 1);
        assert_eq!(s.try_commit(), None);
        // With one node left, no replica is possible: the epoch commits on
        // its own node alone (nothing else could ever hold it).
        s.set_health(NodeId(1), Health::Dead);
        assert_eq!(s.effective_replicas(), 0);
        assert!(s.try_commit().is_some());
    }

    #[test]
    fn a_lost_node_s_ranks_go_to_holders_of_their_committed_snapshot() {
        let mut s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        publish_all(&mut s, 1);
        replicate_all(&mut s, 1);
        s.try_commit().unwrap();
        s.set_health(NodeId(1), Health::Dead);
        let holders: Vec<Vec<NodeId>> =
            (0..8).map(|r| s.holders_of_committed(r).to_vec()).collect();
        let moves = s.replace_lost_ranks().unwrap();
        assert_eq!(moves.iter().map(|m| m.rank).collect::<Vec<_>>(), [2, 3]);
        for m in moves {
            assert_eq!(m.from, NodeId(1));
            assert!(holders[m.rank as usize].contains(&m.to));
        }
        assert!(s.placement.iter().all(|&n| n != NodeId(1)));
        for r in 0..8 {
            assert!(
                !s.partners[r].contains(&NodeId(1)),
                "dead node is no partner"
            );
            assert!(!s.partners[r].contains(&s.placement[r]));
        }
    }

    #[test]
    fn fills_of_the_committed_epoch_count_for_recovery() {
        let mut s = JobState::new(nodes(3, 0), 3, 1).unwrap();
        publish_all(&mut s, 1);
        replicate_all(&mut s, 1);
        s.try_commit().unwrap();
        let partner = s.partners[0][0];
        let other = (0..3)
            .map(NodeId::from_index)
            .find(|&n| n != partner && n != s.placement[0])
            .unwrap();
        s.replica_stored(0, 1, other);
        s.set_health(s.placement[0], Health::Dead);
        s.set_health(partner, Health::Dead);
        s.replace_lost_ranks().unwrap();
        assert_eq!(s.placement[0], other);
    }

    #[test]
    fn a_node_that_stops_storing_replicas_is_no_partner_and_keeps_its_ranks() {
        let mut s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        s.stop_holding_replicas(NodeId(2));
        for r in 0..8 {
            assert!(!s.partners[r].contains(&NodeId(2)), "{:?}", s.partners);
            assert_eq!(s.partners[r].len(), 1);
        }
        assert_eq!(s.ranks_by_node()[2], [4, 5]);
        publish_all(&mut s, 1);
        replicate_all(&mut s, 1);
        assert!(s.try_commit().is_some());
    }

    #[test]
    fn losing_every_holder_is_a_clear_error() {
        let mut s = JobState::new(nodes(4, 0), 4, 1).unwrap();
        publish_all(&mut s, 1);
        replicate_all(&mut s, 1);
        s.try_commit().unwrap();
        let p = s.partners[0][0];
        s.set_health(NodeId(0), Health::Dead);
        s.set_health(p, Health::Dead);
        let err = s.replace_lost_ranks().unwrap_err();
        assert!(
            matches!(
                err,
                PlacementError::Lost {
                    rank: 0,
                    epoch: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--replicas"));
    }

    #[test]
    fn before_any_commit_lost_ranks_go_to_the_least_loaded_nodes() {
        let mut s = JobState::new(nodes(3, 0), 6, 1).unwrap();
        s.set_health(NodeId(2), Health::Drained);
        s.replace_lost_ranks().unwrap();
        let by_node = s.ranks_by_node();
        assert_eq!(by_node[0].len() + by_node[1].len(), 6);
        assert_eq!(by_node[0].len(), 3);
    }
}
