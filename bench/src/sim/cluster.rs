//! A simulated cluster of gossiping nodes: synchronous rounds, every message
//! delivered (loss and delay are not modelled), one seeded RNG.

use pm_core::gossip::{
    FanoutPolicy, Gossip, GossipConfig, LoadRecord, MAX_MESSAGE_BYTES, NodeId, Round,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub struct Cluster {
    pub nodes: Vec<Gossip>,
    pub rng: SmallRng,
    /// Messages and encoded bytes sent since the last `reset_counters`.
    pub messages: u64,
    pub bytes: u64,
    pub max_message_bytes: usize,
}

impl Cluster {
    pub fn new(n: usize, policy: FanoutPolicy, seed: u64) -> Self {
        let cfg = GossipConfig {
            policy,
            ..GossipConfig::default()
        };
        let mut rng = SmallRng::seed_from_u64(seed);
        let nodes = (0..n as NodeId)
            .map(|i| {
                let mut g = Gossip::new(i, n, cfg);
                g.publish(rng.random_range(0.5..1.5), 16.0);
                g
            })
            .collect();
        Cluster {
            nodes,
            rng,
            messages: 0,
            bytes: 0,
            max_message_bytes: 0,
        }
    }

    /// `churn` random nodes publish a new load, then every node gossips once.
    /// `on_news(receiver, record)` sees every record that was news to its receiver.
    pub fn round(
        &mut self,
        churn: usize,
        mut on_news: impl FnMut(NodeId, &LoadRecord),
    ) -> anyhow::Result<()> {
        let n = self.nodes.len();
        for _ in 0..churn {
            let i = self.rng.random_range(0..n);
            let load = self.rng.random_range(0.5..1.5);
            self.nodes[i].publish(load, 16.0);
        }
        let rounds: Vec<Round> = self
            .nodes
            .iter_mut()
            .map(|g| g.tick(&mut self.rng))
            .collect();
        for r in &rounds {
            let len = r.message.encode()?.len();
            anyhow::ensure!(len <= MAX_MESSAGE_BYTES, "message of {len} bytes");
            self.max_message_bytes = self.max_message_bytes.max(len);
            self.messages += r.peers.len() as u64;
            self.bytes += (len * r.peers.len()) as u64;
            for &p in &r.peers {
                for rec in self.nodes[p as usize].receive(&r.message) {
                    on_news(p, &rec);
                }
            }
        }
        Ok(())
    }

    pub fn reset_counters(&mut self) {
        self.messages = 0;
        self.bytes = 0;
    }
}
