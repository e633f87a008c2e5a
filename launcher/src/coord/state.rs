//! The job as the coordinator sees it: nodes and their health, where every
//! rank runs, who holds whose replicas, which epochs are published and
//! which is committed. Pure logic (no I/O), driven by the coordinator's
//! event loop and unit-tested on its own.

use std::collections::{BTreeMap, BTreeSet};

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
    fn usable(&self) -> bool {
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

/// What one rank's published snapshot of an epoch reported.
#[derive(Clone, Copy, Debug, Default)]
struct Published {
    step: u64,
    state_bytes: u64,
    written_bytes: u64,
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

pub struct JobState {
    pub nodes: Vec<Node>,
    pub ranks: u32,
    /// Replicas wanted per snapshot (`--replicas`).
    pub replicas: usize,
    /// Node of every rank.
    pub placement: Vec<usize>,
    /// Partner nodes of every rank.
    pub partners: Vec<Vec<usize>>,
    pub committed: Option<Commit>,
    /// Size of the committed epoch over all ranks: state bytes, bytes written.
    pub committed_bytes: Option<(u64, u64)>,
    /// Per epoch not yet committed: per rank what it published.
    published: BTreeMap<u64, BTreeMap<u32, Published>>,
    /// Per (epoch, rank): nodes holding the snapshot (its own node included).
    holders: BTreeMap<(u64, u32), BTreeSet<usize>>,
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
        let mut bounds = Vec::with_capacity(workers.len());
        let mut acc = 0u64;
        for &i in &workers {
            acc += u64::from(nodes[i].slots.max(1));
            bounds.push((acc * u64::from(ranks)).div_ceil(total));
        }
        for r in 0..u64::from(ranks) {
            let k = bounds
                .iter()
                .position(|&b| r < b)
                .unwrap_or(workers.len() - 1);
            placement.push(workers[k]);
        }
        let mut state = Self {
            nodes,
            ranks,
            replicas,
            placement,
            partners: Vec::new(),
            committed: None,
            committed_bytes: None,
            published: BTreeMap::new(),
            holders: BTreeMap::new(),
        };
        state.choose_partners();
        Ok(state)
    }

    /// Nodes that are alive and in service.
    pub fn usable_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.usable()).count()
    }

    /// Replicas every snapshot can actually get: one per other usable
    /// node that holds replicas.
    pub fn effective_replicas(&self) -> usize {
        let holders = self.nodes.iter().filter(|n| n.can_be_partner()).count();
        self.replicas.min(holders.saturating_sub(1))
    }

    /// Ranks placed on `node`.
    pub fn ranks_on(&self, node: usize) -> Vec<u32> {
        (0..self.ranks)
            .filter(|&r| self.placement[r as usize] == node)
            .collect()
    }

    /// Chooses every rank's partners: usable nodes other than its own,
    /// spares first, then the next nodes round the ring (so replicas spread
    /// evenly), keeping partners that still qualify so that nothing is
    /// copied again needlessly.
    pub fn choose_partners(&mut self) {
        let want = self.effective_replicas();
        let n = self.nodes.len();
        let mut partners = Vec::with_capacity(self.ranks as usize);
        for r in 0..self.ranks as usize {
            let home = self.placement[r];
            let mut chosen: Vec<usize> = self
                .partners
                .get(r)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&p| p != home && self.nodes[p].can_be_partner())
                .take(want)
                .collect();
            let mut candidates: Vec<usize> = (1..n)
                .map(|d| (home + d) % n)
                .filter(|&p| self.nodes[p].can_be_partner() && !chosen.contains(&p))
                .collect();
            candidates.sort_by_key(|&p| (!self.nodes[p].spare, (p + n - home) % n));
            chosen.extend(
                candidates
                    .into_iter()
                    .take(want.saturating_sub(chosen.len())),
            );
            partners.push(chosen);
        }
        self.partners = partners;
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
        self.published.entry(epoch).or_default().insert(
            rank,
            Published {
                step,
                state_bytes,
                written_bytes,
            },
        );
        let home = self.placement[rank as usize];
        self.holders.entry((epoch, rank)).or_default().insert(home);
    }

    /// `node` stored a replica of `rank`'s snapshot of `epoch`.
    pub fn replica_stored(&mut self, rank: u32, epoch: u64, node: usize) {
        if rank >= self.ranks || self.committed.is_some_and(|c| epoch < c.epoch) {
            return;
        }
        self.holders.entry((epoch, rank)).or_default().insert(node);
    }

    /// The newest epoch that can now be committed: every rank published it
    /// and, besides its own node, enough usable nodes hold it. Older
    /// bookkeeping is dropped; the commit is returned for the agents.
    pub fn try_commit(&mut self) -> Option<Commit> {
        let want = self.effective_replicas();
        let ready = self.published.iter().rev().find_map(|(&epoch, ranks)| {
            let complete = ranks.len() == self.ranks as usize
                && (0..self.ranks).all(|r| {
                    let holders = self.holders.get(&(epoch, r));
                    let home = self.placement[r as usize];
                    holders.is_some_and(|h| {
                        h.contains(&home)
                            && h.iter()
                                .filter(|&&n| n != home && self.nodes[n].usable())
                                .count()
                                >= want
                    })
                });
            complete.then(|| Commit {
                epoch,
                step: ranks.values().map(|p| p.step).max().unwrap_or(0),
            })
        })?;
        self.committed = Some(ready);
        self.committed_bytes = self.epoch_bytes(ready.epoch);
        self.published = self.published.split_off(&(ready.epoch + 1));
        self.holders = self.holders.split_off(&(ready.epoch, 0));
        Some(ready)
    }

    /// Nodes holding `rank`'s committed snapshot.
    pub fn holders_of_committed(&self, rank: u32) -> BTreeSet<usize> {
        self.committed
            .and_then(|c| self.holders.get(&(c.epoch, rank)).cloned())
            .unwrap_or_default()
    }

    /// The newest epoch some rank published (committed or not).
    pub fn newest_published(&self) -> Option<u64> {
        self.published
            .keys()
            .next_back()
            .copied()
            .or(self.committed.map(|c| c.epoch))
    }

    /// Size of the newest published epoch: (state bytes, bytes written) over all ranks.
    pub fn epoch_bytes(&self, epoch: u64) -> Option<(u64, u64)> {
        let ranks = self.published.get(&epoch)?;
        Some(
            ranks
                .values()
                .fold((0, 0), |(s, w), p| (s + p.state_bytes, w + p.written_bytes)),
        )
    }

    /// Forgets published epochs newer than the committed one: after a
    /// relaunch they are never committed (the ranks write them again).
    pub fn forget_uncommitted(&mut self) {
        let keep_from = self.committed.map_or(0, |c| c.epoch);
        self.published.clear();
        self.holders.retain(|&(e, _), _| e == keep_from);
    }

    /// Resumes a job whose `commit` is on disk: `holders[r]` are the nodes
    /// whose stores hold rank r's snapshot of it. Ranks whose node lacks it
    /// move to one that has it.
    pub fn resume(
        &mut self,
        commit: Commit,
        holders: Vec<BTreeSet<usize>>,
    ) -> Result<Vec<(u32, usize, usize)>, PlacementError> {
        self.committed = Some(commit);
        self.published.clear();
        self.holders.clear();
        for (r, h) in holders.into_iter().enumerate() {
            self.holders.insert((commit.epoch, r as u32), h);
        }
        self.replace_lost_ranks()
    }

    /// Moves every rank off nodes that are not usable (or, after a resume,
    /// that lack its committed snapshot), onto usable nodes
    /// that hold its committed snapshot (any usable node before the first
    /// commit), the least loaded first and spares before busy nodes; then
    /// chooses partners again. Returns the ranks moved.
    pub fn replace_lost_ranks(&mut self) -> Result<Vec<(u32, usize, usize)>, PlacementError> {
        if !self.nodes.iter().any(Node::usable) {
            return Err(PlacementError::NoNodes);
        }
        let mut load: Vec<u32> = vec![0; self.nodes.len()];
        for &n in &self.placement {
            if self.nodes[n].usable() {
                load[n] += 1;
            }
        }
        let mut moves = Vec::new();
        for r in 0..self.ranks {
            let from = self.placement[r as usize];
            let holds = self.committed.is_none() || self.holders_of_committed(r).contains(&from);
            if self.nodes[from].usable() && holds {
                continue;
            }
            if self.nodes[from].usable() {
                load[from] -= 1;
            }
            let candidates: Vec<usize> = match self.committed {
                Some(c) => {
                    let holders = self.holders_of_committed(r);
                    let usable: Vec<usize> = holders
                        .iter()
                        .copied()
                        .filter(|&n| self.nodes[n].usable())
                        .collect();
                    if usable.is_empty() {
                        let names: Vec<&str> = holders
                            .iter()
                            .map(|&n| self.nodes[n].name.as_str())
                            .collect();
                        return Err(PlacementError::Lost {
                            rank: r,
                            epoch: c.epoch,
                            holders: names.join(", "),
                        });
                    }
                    usable
                }
                None => (0..self.nodes.len())
                    .filter(|&n| self.nodes[n].usable())
                    .collect(),
            };
            let to = *candidates
                .iter()
                .min_by_key(|&&n| {
                    let share =
                        u64::from(load[n]) * 1_000_000 / u64::from(self.nodes[n].slots.max(1));
                    (share, !self.nodes[n].spare, n)
                })
                .expect("candidates are not empty");
            load[to] += 1;
            self.placement[r as usize] = to;
            moves.push((r, from, to));
        }
        self.choose_partners();
        Ok(moves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.placement, [0, 0, 1, 1, 2, 2, 3, 3]);
        let s = JobState::new(nodes(4, 1), 6, 1).unwrap();
        assert_eq!(s.placement, [0, 0, 1, 1, 2, 2]);
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
                    assert!(p.contains(&(k - 1)), "spare preferred: {p:?}");
                }
            }
        }
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
    }

    #[test]
    fn a_lost_node_s_ranks_go_to_holders_of_their_committed_snapshot() {
        let mut s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        publish_all(&mut s, 1);
        replicate_all(&mut s, 1);
        s.try_commit().unwrap();
        s.nodes[1].health = Health::Dead;
        let holders: Vec<BTreeSet<usize>> = (0..8).map(|r| s.holders_of_committed(r)).collect();
        let moves = s.replace_lost_ranks().unwrap();
        assert_eq!(moves.iter().map(|m| m.0).collect::<Vec<_>>(), [2, 3]);
        for (rank, from, to) in moves {
            assert_eq!(from, 1);
            assert!(holders[rank as usize].contains(&to));
        }
        assert!(s.placement.iter().all(|&n| n != 1));
        for r in 0..8 {
            assert!(!s.partners[r].contains(&1), "dead node is no partner");
            assert!(!s.partners[r].contains(&s.placement[r]));
        }
    }

    #[test]
    fn a_node_that_stops_storing_replicas_is_no_partner_and_keeps_its_ranks() {
        let mut s = JobState::new(nodes(4, 0), 8, 1).unwrap();
        s.nodes[2].holds_replicas = false;
        s.choose_partners();
        for r in 0..8 {
            assert!(!s.partners[r].contains(&2), "{:?}", s.partners);
            assert_eq!(s.partners[r].len(), 1);
        }
        assert_eq!(s.ranks_on(2), [4, 5]);
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
        s.nodes[0].health = Health::Dead;
        s.nodes[p].health = Health::Dead;
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
        s.nodes[2].health = Health::Drained;
        s.replace_lost_ranks().unwrap();
        assert_eq!(s.ranks_on(0).len() + s.ranks_on(1).len(), 6);
        assert_eq!(s.ranks_on(0).len(), 3);
    }
}
