//! Gossip of node load among the agents: the core runs its node's
//! [`Gossip`] (adaptive fan-out) over the membership pmrun names in each
//! placement (this node and its peers: its partners and the nodes at
//! distances 1, 2, 4, … from it, about log2 N). Once a heartbeat period it
//! publishes its own record if it changed, ticks, has the round's message
//! sent to the chosen peers (`Action::Gossip`), and tells pmrun what its
//! window holds. Records carry the nodes' ids in the job, which every
//! agent shares; the membership only says whom this one may send to.

use super::{Action, AgentCore, Target};
use pm_core::gossip::{Gossip, GossipConfig, GossipError, LoadRecord, Message};
use pm_core::proto::{FromAgent, NodeId};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// How much the own record must change (relatively) to be news: a new
/// version makes every node that hears it pass it on first, so
/// measurement noise is not worth one.
const CHANGE: f32 = 0.01;

pub(super) struct Spread {
    gossip: Gossip,
    /// This node and its peers, sorted: the gossip's cluster.
    members: Vec<NodeId>,
    rng: SmallRng,
}

impl Spread {
    pub(super) fn new(me: NodeId) -> Self {
        Self {
            gossip: Gossip::new(me.0, 1, GossipConfig::default()),
            members: vec![me],
            // Seeded by the node: runs are reproducible, nodes differ.
            rng: SmallRng::seed_from_u64(0x9e37_79b9_7f4a_7c15 ^ u64::from(me.0)),
        }
    }

    /// The peers of the latest placement (this node among them or not).
    pub(super) fn set_members(&mut self, peers: impl Iterator<Item = NodeId>) {
        let me = NodeId(self.gossip.me());
        self.members = peers.chain([me]).collect();
        self.members.sort_unstable();
        self.members.dedup();
    }

    /// Publishes the node's record if it changed, then one round.
    fn round(&mut self, load: f64, capacity: f64) -> pm_core::gossip::Round {
        let (load, capacity) = (load as f32, capacity as f32);
        let own = *self.gossip.own();
        let changed = |new: f32, old: f32| (new - old).abs() > CHANGE * old.abs().max(1e-6);
        if own.version == 0 || changed(load, own.load) || changed(capacity, own.capacity) {
            self.gossip.publish(load, capacity);
        }
        let members: Vec<u32> = self.members.iter().map(|n| n.0).collect();
        self.gossip.tick_among(&members, &mut self.rng)
    }

    /// Merges a peer's message; who sent it and how many records were news.
    fn receive(&mut self, bytes: &[u8]) -> Result<(NodeId, usize), GossipError> {
        let msg = Message::decode(bytes)?;
        let news = self.gossip.receive(&msg);
        Ok((NodeId(msg.from), news.len()))
    }

    /// The node's own record, then those its window holds.
    pub(super) fn records(&self) -> Vec<LoadRecord> {
        let own = std::iter::once(*self.gossip.own());
        own.chain(self.gossip.window().iter().copied()).collect()
    }
}

impl AgentCore {
    /// One gossip round, once a heartbeat period.
    pub(super) fn gossip_round(&mut self) {
        let capacity = self.load.capacity();
        let load = self.load.finish_time(&self.local);
        let round = self.spread.round(load, capacity);
        for hint in &round.failure_hints {
            // A hint, not a verdict: pmrun's heartbeats decide.
            tracing::info!(node = %NodeId(hint.node), "gossip: no news of the node for a while");
        }
        if !round.peers.is_empty() {
            match round.message.encode() {
                Ok(message) => {
                    let to = round.peers.iter().map(|&n| Target {
                        node: NodeId(n),
                        addr: self.peers.get(&NodeId(n)).cloned(),
                    });
                    let to = to.collect();
                    self.actions.push_back(Action::Gossip { to, message });
                }
                Err(e) => tracing::error!(error = %e, "cannot encode the gossip round"),
            }
        }
        let records = self.spread.records();
        self.send(FromAgent::Gossip { records });
    }

    /// A peer's gossip message.
    pub(super) fn gossip_received(&mut self, message: &[u8]) {
        match self.spread.receive(message) {
            Ok((from, news)) => tracing::debug!(from = %from, news, "gossip received"),
            Err(e) => tracing::warn!(error = %e, "gossip message dropped"),
        }
    }
}
