//! Which replication of a local rank runs next: fills for new partners
//! first, then a due retry, then the newest published epoch (which
//! supersedes older ones still waiting). One replication per rank runs at
//! a time; partners that fail it are asked again with backoff, at most
//! [`MAX_RETRIES`] times, only while they are still partners and no newer
//! epoch came.

use super::{Action, AgentCore, Target};
use pm_core::proto::{FromAgent, NodeId};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The first retry's delay; each further one doubles it, up to 8 times this.
pub const RETRY_DELAY: Duration = Duration::from_millis(250);
/// Retries of one epoch to a partner before the agent gives up on it
/// (pmrun replaces a partner that keeps failing before that).
pub const MAX_RETRIES: u32 = 8;

/// One local rank's outgoing replication.
#[derive(Debug, Default)]
pub(super) struct Outgoing {
    running: Option<Running>,
    /// The newest published epoch not yet started.
    newest: Option<u64>,
    /// Epochs to send to partners that are new, in order.
    fills: VecDeque<(u64, Vec<NodeId>)>,
    retry: Option<Retry>,
}

#[derive(Debug)]
struct Running {
    epoch: u64,
    attempt: u32,
    failed: Vec<NodeId>,
}

/// Partners to ask again for an epoch they failed to store.
#[derive(Debug)]
struct Retry {
    epoch: u64,
    to: Vec<NodeId>,
    /// The attempt that failed (0: the first try).
    attempt: u32,
    due: Instant,
}

/// A replication to start: epoch, partners, attempt.
type Job = (u64, Vec<NodeId>, u32);

impl Outgoing {
    pub(super) fn published(&mut self, epoch: u64) {
        self.newest = self.newest.max(Some(epoch));
        if self.retry.as_ref().is_some_and(|r| r.epoch < epoch) {
            self.retry = None;
        }
    }

    pub(super) fn fill(&mut self, epoch: u64, to: Vec<NodeId>) {
        self.fills.push_back((epoch, to));
    }

    /// When a retry can start (never while a replication runs: it waits
    /// for that one's end, and a timer in the past would spin the loop).
    pub(super) fn retry_due(&self) -> Option<Instant> {
        match self.running {
            Some(_) => None,
            None => self.retry.as_ref().map(|r| r.due),
        }
    }

    fn failed(&mut self, partner: NodeId) {
        if let Some(r) = &mut self.running {
            r.failed.push(partner);
        }
    }

    /// The running replication ended; its failed partners are retried
    /// unless a newer epoch is already known.
    pub(super) fn finished(&mut self, epoch: u64, newest: Option<u64>, now: Instant) {
        let Some(run) = self.running.take().filter(|r| r.epoch == epoch) else {
            return;
        };
        if run.failed.is_empty()
            || newest.is_some_and(|n| n > epoch)
            || self.retry.as_ref().is_some_and(|r| r.epoch > epoch)
        {
            return;
        }
        let mut to = run.failed;
        if let Some(r) = self.retry.take().filter(|r| r.epoch == epoch) {
            for p in r.to {
                if !to.contains(&p) {
                    to.push(p);
                }
            }
        }
        self.retry = Some(Retry {
            epoch,
            to,
            attempt: run.attempt,
            due: now + RETRY_DELAY * 2u32.pow(run.attempt.min(3)),
        });
    }

    /// The next replication to start, if none runs.
    fn next(&mut self, partners: &[NodeId], now: Instant) -> Option<Job> {
        if self.running.is_some() {
            return None;
        }
        if let Some((epoch, to)) = self.fills.pop_front() {
            return Some((epoch, to, 0));
        }
        if let Some(r) = self.retry.take_if(|r| r.due <= now) {
            let to: Vec<NodeId> = r.to.into_iter().filter(|p| partners.contains(p)).collect();
            if !to.is_empty() && r.attempt < MAX_RETRIES {
                return Some((r.epoch, to, r.attempt + 1));
            }
            tracing::debug!(epoch = r.epoch, attempts = r.attempt + 1, "no more retries");
        }
        let epoch = self.newest.take()?;
        Some((epoch, partners.to_vec(), 0))
    }
}

impl AgentCore {
    /// Starts `rank`'s next replication if it has one and none is running.
    pub(super) fn pump(&mut self, rank: u32, now: Instant) {
        if self.stopping() || !self.local.contains(&rank) {
            return;
        }
        let partners = self.partners.get(&rank).cloned().unwrap_or_default();
        let Some(out) = self.outgoing.get_mut(&rank) else {
            return;
        };
        while let Some((epoch, to, attempt)) = out.next(&partners, now) {
            if to.is_empty() {
                continue;
            }
            out.running = Some(Running {
                epoch,
                attempt,
                failed: Vec::new(),
            });
            let to = to
                .into_iter()
                .map(|node| Target {
                    node,
                    addr: self.peers.get(&node).cloned(),
                })
                .collect();
            self.actions
                .push_back(Action::Replicate { rank, epoch, to });
            return;
        }
    }

    pub(super) fn replicated(
        &mut self,
        rank: u32,
        epoch: u64,
        partner: NodeId,
        result: Result<(), String>,
    ) {
        match result {
            Ok(()) => self.send(FromAgent::ReplicaStored {
                rank,
                epoch,
                holder: partner,
            }),
            Err(reason) => {
                if let Some(o) = self.outgoing.get_mut(&rank) {
                    o.failed(partner);
                }
                self.send(FromAgent::ReplicaFailed {
                    rank,
                    epoch,
                    partner,
                    reason,
                });
            }
        }
    }
}
