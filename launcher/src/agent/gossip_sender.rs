//! Outgoing gossip: one thread keeps one connection per peer agent (to
//! its partner port, authenticated as for replication) and writes each
//! round's message to the peers the core chose, fire-and-forget (gossip is
//! not answered). Every wait is bounded by [`TIMEOUT`]; a peer that cannot
//! be reached or written to loses its connection and is left out for
//! [`BACKOFF`], so a dead or stopped peer costs one timeout now and then,
//! not one a round. The loop only `try_send`s rounds into a short queue: a
//! slow sender costs rounds, never the loop.

use super::core::Target;
use super::replicate::{self, Partner, SendError};
use super::{Resources, error_chain};
use pm_core::proto::{NodeId, ToPartner};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// One round: the encoded message, and the peers it goes to.
pub(super) struct GossipRound {
    pub(super) to: Vec<Target>,
    pub(super) message: Vec<u8>,
}

/// Connecting, authenticating, writing: each at most this long.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How long a peer that failed is left out.
const BACKOFF: Duration = Duration::from_secs(5);
/// Rounds waiting at most (a round per heartbeat period).
const QUEUE: usize = 4;

/// A connection to one peer, and the address it was made to.
struct Peer {
    addr: String,
    link: Partner,
}

/// The loop's end of the sender.
pub(super) struct GossipSender(SyncSender<GossipRound>);

impl GossipSender {
    /// Hands a round to the sender; a full queue drops it (the next
    /// round carries the same news).
    pub(super) fn send(&self, round: GossipRound) {
        match self.0.try_send(round) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::debug!("gossip sender behind: a round is dropped");
            }
            Err(TrySendError::Disconnected(_)) => tracing::error!("the gossip sender is gone"),
        }
    }
}

pub(super) fn start(res: Arc<Resources>) -> std::io::Result<GossipSender> {
    let (tx, rx) = sync_channel::<GossipRound>(QUEUE);
    super::spawn("pmd-gossip", move || {
        let mut peers: HashMap<NodeId, Peer> = HashMap::new();
        let mut left_out: HashMap<NodeId, Instant> = HashMap::new();
        for round in rx {
            let now = Instant::now();
            left_out.retain(|_, until| *until > now);
            for target in &round.to {
                if left_out.contains_key(&target.node) {
                    continue;
                }
                if let Err(e) = send(&res, &mut peers, target, &round.message) {
                    peers.remove(&target.node);
                    left_out.insert(target.node, Instant::now() + BACKOFF);
                    tracing::debug!(peer = %target.node, error = %error_chain(&e), "gossip not delivered");
                }
            }
        }
    })?;
    Ok(GossipSender(tx))
}

/// Writes `message` to the peer, connecting first if need be (again if
/// pmrun moved its address).
fn send(
    res: &Resources,
    peers: &mut HashMap<NodeId, Peer>,
    target: &Target,
    message: &[u8],
) -> Result<(), SendError> {
    let addr = target.addr.as_deref().unwrap_or_default();
    if peers.get(&target.node).is_none_or(|p| p.addr != addr) {
        let link = replicate::connect(res, target, TIMEOUT)?;
        let addr = addr.to_owned();
        peers.insert(target.node, Peer { addr, link });
    }
    let p = peers.get_mut(&target.node).expect("connected above");
    let msg = ToPartner::Gossip {
        message: message.to_vec(),
    };
    p.link.session.send(&mut p.link.stream, &msg)?;
    Ok(())
}
