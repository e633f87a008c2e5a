//! Gossip of node load: a pure state machine, one per node.
//!
//! Each round ([`Gossip::tick`]) a node sends one message to `fanout(N)`
//! random peers: its own load record and the freshest records of its window.
//! What it receives ([`Gossip::receive`]) updates the window and returns the
//! records that were news, for the caller to keep in its view of the cluster.
//!
//! * Records carry a `version` (bumped by the origin when its load changes)
//!   and two ages in rounds: `version_age`, since the version was made (how
//!   fresh the news is: the window keeps and sends the youngest versions
//!   first), and `age`, since the origin last vouched for it (its own record
//!   is re-sent every round with age 0, so live nodes keep their records young).
//! * A record whose `age` passes `expiry_rounds` is dropped and reported as a
//!   [`FailureHint`]: its node stopped appearing. (A hint, not a verdict:
//!   failure detection proper is the replica partners' heartbeats.)
//! * The window holds at most `window` records; a message at most
//!   [`MAX_RECORDS`], so its encoding never exceeds [`MAX_MESSAGE_BYTES`].
//! * Fan-out: [`FanoutPolicy::Mosix`] sends half the window to 2 random
//!   nodes, as MOSIX did; [`FanoutPolicy::Adaptive`] (the default) sends up to
//!   `MAX_RECORDS` to `max(2, ⌈ln N⌉)` nodes, so news reaches a growing cluster
//!   in about `log N` rounds while the bytes per node grow only like `log N`.
//!
//! Peers are indices `0..N` into the caller's membership list; the random
//! generator is passed in, so runs are reproducible.

use rand::Rng;
use serde::{Deserialize, Serialize};

pub type NodeId = u32;

/// Hard bound on an encoded message.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Worst-case postcard size of one record (varints at their longest).
pub const MAX_RECORD_BYTES: usize = 5 + 5 + 3 + 3 + 4 + 4;
/// Records that fit in a message beside the sender id and the length prefix.
pub const MAX_RECORDS: usize = (MAX_MESSAGE_BYTES - 5 - 3) / MAX_RECORD_BYTES;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadRecord {
    pub node: NodeId,
    pub version: u32,
    /// Rounds since this version was made at its origin.
    pub version_age: u16,
    /// Rounds since its origin last sent it.
    pub age: u16,
    /// The node's finish time per step (its load over its capacity).
    pub load: f32,
    /// Its capacity (cores × availability; 0 when draining).
    pub capacity: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub records: Vec<LoadRecord>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    #[error("gossip message of {0} bytes exceeds the bound of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("gossip message has {0} records, more than {MAX_RECORDS}")]
    TooManyRecords(usize),
    #[error("malformed gossip message: {0}")]
    Malformed(String),
}

impl Message {
    pub fn encode(&self) -> Result<Vec<u8>, GossipError> {
        if self.records.len() > MAX_RECORDS {
            return Err(GossipError::TooManyRecords(self.records.len()));
        }
        let mut buf = [0u8; MAX_MESSAGE_BYTES];
        let used = postcard::to_slice(self, &mut buf).map_err(|_| {
            GossipError::TooLarge(postcard::to_allocvec(self).map_or(usize::MAX, |v| v.len()))
        })?;
        Ok(used.to_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, GossipError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(GossipError::TooLarge(bytes.len()));
        }
        let msg: Message =
            postcard::from_bytes(bytes).map_err(|e| GossipError::Malformed(e.to_string()))?;
        if msg.records.len() > MAX_RECORDS {
            return Err(GossipError::TooManyRecords(msg.records.len()));
        }
        Ok(msg)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FanoutPolicy {
    /// Half the window to two random nodes (MOSIX).
    Mosix,
    /// Up to `MAX_RECORDS` to `max(2, ⌈ln N⌉)` random nodes.
    #[default]
    Adaptive,
}

impl FanoutPolicy {
    pub fn fanout(self, cluster_size: usize) -> usize {
        let peers = cluster_size.saturating_sub(1);
        let f = match self {
            FanoutPolicy::Mosix => 2,
            FanoutPolicy::Adaptive => ((cluster_size.max(1) as f64).ln().ceil() as usize).max(2),
        };
        f.min(peers)
    }

    /// Records per message, the sender's own included.
    pub fn records(self, window: usize) -> usize {
        match self {
            FanoutPolicy::Mosix => (window / 2).max(1) + 1,
            FanoutPolicy::Adaptive => window + 1,
        }
        .min(MAX_RECORDS)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    pub policy: FanoutPolicy,
    /// Records kept about other nodes.
    pub window: usize,
    /// A record not vouched for by its origin for this many rounds is dropped.
    pub expiry_rounds: u16,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            policy: FanoutPolicy::Adaptive,
            window: 32,
            expiry_rounds: 32,
        }
    }
}

/// A node whose record expired: it stopped appearing in the gossip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureHint {
    pub node: NodeId,
    pub version: u32,
}

/// What a round asks the caller to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Round {
    /// Send `message` to each of these peers.
    pub peers: Vec<NodeId>,
    pub message: Message,
    pub failure_hints: Vec<FailureHint>,
}

#[derive(Clone, Debug)]
pub struct Gossip {
    cfg: GossipConfig,
    own: LoadRecord,
    cluster_size: usize,
    /// At most `cfg.window` records, none about this node.
    window: Vec<LoadRecord>,
}

impl Gossip {
    pub fn new(me: NodeId, cluster_size: usize, cfg: GossipConfig) -> Self {
        let own = LoadRecord {
            node: me,
            version: 0,
            version_age: 0,
            age: 0,
            load: 0.0,
            capacity: 0.0,
        };
        Gossip {
            cfg,
            own,
            cluster_size,
            window: Vec::with_capacity(cfg.window + 1),
        }
    }

    pub fn me(&self) -> NodeId {
        self.own.node
    }

    pub fn set_cluster_size(&mut self, n: usize) {
        self.cluster_size = n;
    }

    /// This node's load changed: a new version, fresh news.
    pub fn publish(&mut self, load: f32, capacity: f32) {
        self.own.version = self.own.version.wrapping_add(1);
        self.own.version_age = 0;
        self.own.load = load;
        self.own.capacity = capacity;
    }

    pub fn own(&self) -> &LoadRecord {
        &self.own
    }

    /// The records currently held about other nodes.
    pub fn window(&self) -> &[LoadRecord] {
        &self.window
    }

    /// One gossip round: ages the records, expires silent ones, and builds
    /// the message for `fanout(N)` random peers among `0..N`.
    pub fn tick(&mut self, rng: &mut impl Rng) -> Round {
        let (message, failure_hints) = self.age_and_build();
        let fanout = self.cfg.policy.fanout(self.cluster_size);
        let mut peers = Vec::with_capacity(fanout);
        while peers.len() < fanout {
            let p = rng.random_range(0..self.cluster_size as NodeId);
            if p != self.own.node && !peers.contains(&p) {
                peers.push(p);
            }
        }
        Round {
            peers,
            message,
            failure_hints,
        }
    }

    /// A round like [`Gossip::tick`] whose peers are drawn from `members`
    /// (node ids, this node's among them or not) instead of from `0..N`,
    /// for a caller that knows only some nodes, by ids that are not dense
    /// (a node agent knows the peers pmrun names it). The membership is
    /// the cluster: the fan-out follows its size, this node included.
    pub fn tick_among(&mut self, members: &[NodeId], rng: &mut impl Rng) -> Round {
        let (message, failure_hints) = self.age_and_build();
        let mut others: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|&m| m != self.own.node)
            .collect();
        others.sort_unstable();
        others.dedup();
        self.cluster_size = others.len() + 1;
        let fanout = self.cfg.policy.fanout(self.cluster_size);
        // A partial Fisher-Yates shuffle: `fanout` distinct members.
        for i in 0..fanout {
            let j = rng.random_range(i..others.len());
            others.swap(i, j);
        }
        others.truncate(fanout);
        Round {
            peers: others,
            message,
            failure_hints,
        }
    }

    /// Ages the records, expires silent ones, and builds the round's message.
    fn age_and_build(&mut self) -> (Message, Vec<FailureHint>) {
        let mut failure_hints = Vec::new();
        let expiry = self.cfg.expiry_rounds;
        self.window.retain_mut(|r| {
            r.age = r.age.saturating_add(1);
            r.version_age = r.version_age.saturating_add(1);
            let keep = r.age <= expiry;
            if !keep {
                failure_hints.push(FailureHint {
                    node: r.node,
                    version: r.version,
                });
            }
            keep
        });
        self.own.version_age = self.own.version_age.saturating_add(1);
        self.own.age = 0;

        // Freshest news first; the window is small, so a sort is cheapest.
        self.window.sort_unstable_by_key(|r| (r.version_age, r.age));
        let n = self.cfg.policy.records(self.cfg.window) - 1;
        let mut records = Vec::with_capacity(n + 1);
        records.push(self.own);
        records.extend(self.window.iter().take(n).copied());
        let message = Message {
            from: self.own.node,
            records,
        };
        (message, failure_hints)
    }

    /// Merges a received message; returns the records that were news
    /// (a node not in the window, or a newer version than the one held).
    pub fn receive(&mut self, msg: &Message) -> Vec<LoadRecord> {
        let mut news = Vec::new();
        for &r in msg.records.iter().take(MAX_RECORDS) {
            if r.node == self.own.node || r.age > self.cfg.expiry_rounds {
                continue;
            }
            match self.window.iter_mut().find(|w| w.node == r.node) {
                Some(w) if newer(r.version, w.version) => {
                    *w = r;
                    news.push(r);
                }
                Some(w) if r.version == w.version => {
                    w.age = w.age.min(r.age);
                    w.version_age = w.version_age.min(r.version_age);
                }
                Some(_) => {}
                None => {
                    self.window.push(r);
                    news.push(r);
                }
            }
        }
        if self.window.len() > self.cfg.window {
            // Keep the freshest news (a partial selection: no full sort per message).
            let w = self.cfg.window.max(1);
            self.window
                .select_nth_unstable_by_key(w - 1, |r| (r.version_age, r.age));
            self.window.truncate(w);
        }
        news
    }
}

/// Version order with wrap-around (serial-number arithmetic).
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn record() -> impl Strategy<Value = LoadRecord> {
        (
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<f32>(),
            any::<f32>(),
        )
            .prop_map(
                |(node, version, version_age, age, load, capacity)| LoadRecord {
                    node,
                    version,
                    version_age,
                    age,
                    load,
                    capacity,
                },
            )
    }

    proptest! {
        #[test]
        fn messages_never_exceed_their_bound(
            from in any::<u32>(),
            received in prop::collection::vec(record(), 0..200),
            window in 1usize..200,
            mosix in any::<bool>(),
        ) {
            let policy = if mosix { FanoutPolicy::Mosix } else { FanoutPolicy::Adaptive };
            let cfg = GossipConfig { policy, window, expiry_rounds: u16::MAX };
            let mut g = Gossip::new(from, 1000, cfg);
            g.publish(f32::MAX, f32::MIN_POSITIVE);
            for chunk in received.chunks(MAX_RECORDS) {
                g.receive(&Message { from: 1, records: chunk.to_vec() });
            }
            prop_assert!(g.window().len() <= window);
            let round = g.tick(&mut SmallRng::seed_from_u64(1));
            let bytes = round.message.encode().unwrap();
            prop_assert!(bytes.len() <= MAX_MESSAGE_BYTES);
            prop_assert_eq!(Message::decode(&bytes).unwrap(), round.message);
            // Any message of MAX_RECORDS arbitrary records fits as well.
            let full = Message { from, records: received.iter().cycle().take(MAX_RECORDS).copied().collect() };
            if !received.is_empty() {
                prop_assert!(full.encode().unwrap().len() <= MAX_MESSAGE_BYTES);
            }
        }
    }

    #[test]
    fn oversized_messages_are_refused() {
        let r = LoadRecord {
            node: 1,
            version: 1,
            version_age: 0,
            age: 0,
            load: 1.0,
            capacity: 1.0,
        };
        let big = Message {
            from: 0,
            records: vec![r; MAX_RECORDS + 1],
        };
        assert_eq!(
            big.encode(),
            Err(GossipError::TooManyRecords(MAX_RECORDS + 1))
        );
        assert!(matches!(
            Message::decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
            Err(GossipError::TooLarge(_))
        ));
        let bytes = postcard::to_allocvec(&big).unwrap();
        assert!(Message::decode(&bytes).is_err());
    }

    #[test]
    fn fanout_grows_with_the_cluster_for_adaptive_only() {
        assert_eq!(FanoutPolicy::Mosix.fanout(100_000), 2);
        let a: Vec<usize> = [10, 100, 10_000, 100_000]
            .iter()
            .map(|&n| FanoutPolicy::Adaptive.fanout(n))
            .collect();
        assert!(a.windows(2).all(|w| w[0] <= w[1]) && a[3] > a[0], "{a:?}");
        assert_eq!(FanoutPolicy::Adaptive.fanout(2), 1);
        assert_eq!(FanoutPolicy::Mosix.records(32), 17);
    }

    #[test]
    fn newer_versions_replace_older_and_are_news() {
        let mut g = Gossip::new(0, 10, GossipConfig::default());
        let r = LoadRecord {
            node: 3,
            version: 5,
            version_age: 2,
            age: 0,
            load: 1.0,
            capacity: 4.0,
        };
        assert_eq!(
            g.receive(&Message {
                from: 3,
                records: vec![r]
            }),
            vec![r]
        );
        assert!(
            g.receive(&Message {
                from: 3,
                records: vec![r]
            })
            .is_empty(),
            "same version is no news"
        );
        let old = LoadRecord {
            version: 4,
            load: 9.0,
            ..r
        };
        assert!(
            g.receive(&Message {
                from: 3,
                records: vec![old]
            })
            .is_empty()
        );
        assert_eq!(g.window()[0].load, 1.0);
        let wrapped = LoadRecord {
            version: 5u32.wrapping_sub(10),
            ..r
        };
        assert!(
            g.receive(&Message {
                from: 3,
                records: vec![wrapped]
            })
            .is_empty()
        );
    }

    #[test]
    fn a_silent_node_expires_into_a_failure_hint() {
        let cfg = GossipConfig {
            expiry_rounds: 5,
            ..GossipConfig::default()
        };
        let mut g = Gossip::new(0, 10, cfg);
        let mut rng = SmallRng::seed_from_u64(9);
        let r = LoadRecord {
            node: 7,
            version: 1,
            version_age: 0,
            age: 0,
            load: 1.0,
            capacity: 1.0,
        };
        g.receive(&Message {
            from: 7,
            records: vec![r],
        });
        let mut hints = Vec::new();
        for round in 0..10 {
            if round < 3 {
                // Node 7 vouches for itself again: its record stays young.
                g.receive(&Message {
                    from: 7,
                    records: vec![r],
                });
            }
            hints.extend(g.tick(&mut rng).failure_hints);
            // Last vouched for before the tick of round 2: silent for 5 ticks
            // (rounds 2..=6) is still within expiry, the 6th tick expires it.
            assert_eq!(hints.is_empty(), round < 7, "round {round}");
        }
        assert_eq!(
            hints,
            vec![FailureHint {
                node: 7,
                version: 1
            }]
        );
        assert!(g.window().is_empty());
    }

    #[test]
    fn peers_are_distinct_and_never_self() {
        let mut g = Gossip::new(4, 12, GossipConfig::default());
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..100 {
            let round = g.tick(&mut rng);
            let mut p = round.peers.clone();
            p.sort();
            p.dedup();
            assert_eq!(p.len(), FanoutPolicy::Adaptive.fanout(12));
            assert!(!p.contains(&4) && p.iter().all(|&x| x < 12));
        }
    }

    #[test]
    fn peers_among_a_membership_are_members_distinct_and_never_self() {
        let mut g = Gossip::new(40, 1, GossipConfig::default());
        let mut rng = SmallRng::seed_from_u64(3);
        let members = [3, 40, 7, 12, 90, 41, 5, 8, 60, 61, 62];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let round = g.tick_among(&members, &mut rng);
            let mut p = round.peers.clone();
            p.sort();
            p.dedup();
            assert_eq!(p.len(), FanoutPolicy::Adaptive.fanout(members.len()));
            assert!(p.iter().all(|x| *x != 40 && members.contains(x)), "{p:?}");
            assert_eq!(round.message.from, 40);
            seen.extend(p);
        }
        assert_eq!(
            seen.len(),
            members.len() - 1,
            "every other member is chosen"
        );
        // Alone, or with one other node.
        assert!(g.tick_among(&[40], &mut rng).peers.is_empty());
        assert_eq!(g.tick_among(&[40, 2], &mut rng).peers, [2]);
    }

    /// All nodes gossip; one publishes a change: with either policy it reaches
    /// every node of a small cluster, and faster with the adaptive fan-out.
    #[test]
    fn a_change_spreads_to_the_whole_cluster() {
        let n = 500;
        let rounds_to_all = |policy| {
            let cfg = GossipConfig {
                policy,
                ..GossipConfig::default()
            };
            let mut nodes: Vec<Gossip> = (0..n).map(|i| Gossip::new(i, n as usize, cfg)).collect();
            let mut rng = SmallRng::seed_from_u64(11);
            let mut round = |nodes: &mut Vec<Gossip>, knows: &mut Vec<bool>| {
                let out: Vec<Round> = nodes.iter_mut().map(|g| g.tick(&mut rng)).collect();
                for r in &out {
                    for &p in &r.peers {
                        let news = nodes[p as usize].receive(&r.message);
                        if news.iter().any(|x| x.node == 0 && x.version == 1) {
                            knows[p as usize] = true;
                        }
                    }
                }
            };
            // Warm up: every node's initial record is old news when the change comes.
            let mut knows = vec![false; n as usize];
            for _ in 0..20 {
                round(&mut nodes, &mut knows);
            }
            nodes[0].publish(2.0, 8.0);
            knows[0] = true;
            for rounds in 1..=100 {
                round(&mut nodes, &mut knows);
                if knows.iter().all(|&k| k) {
                    return rounds;
                }
            }
            panic!("{policy:?}: the change did not reach every node in 100 rounds");
        };
        let adaptive = rounds_to_all(FanoutPolicy::Adaptive);
        let mosix = rounds_to_all(FanoutPolicy::Mosix);
        assert!(
            adaptive <= 2 * 9,
            "adaptive took {adaptive} rounds for {n} nodes"
        );
        assert!(adaptive < mosix, "adaptive {adaptive} vs mosix {mosix}");
    }
}
