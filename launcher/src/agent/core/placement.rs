//! A new placement: it waits for running imports into ranks that now run
//! here (their directories become the ranks' own), then takes effect and
//! fills partners that are new for a local rank with the committed epoch
//! and the one in flight.

use super::imports::Pending;
use super::{Action, AgentCore};
use pm_core::proto::{FromAgent, NodeId};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

impl AgentCore {
    pub(super) fn placement(
        &mut self,
        generation: u64,
        local: Vec<u32>,
        partners: Vec<(u32, Vec<NodeId>)>,
        now: Instant,
    ) {
        let p = Pending {
            generation,
            local,
            partners,
        };
        let incoming: BTreeSet<u32> = p
            .local
            .iter()
            .copied()
            .filter(|r| !self.local.contains(r))
            .collect();
        self.refuse_queued(&incoming);
        // A newer placement replaces one that still waits: pmrun only
        // waits for the newest generation.
        if self.imports.placement_blocked(&p.local) {
            tracing::info!(
                generation,
                "placement waits for imports into ranks that now run here"
            );
            self.imports.pending = Some(p);
        } else {
            self.imports.pending = None;
            self.apply_placement(p, now);
        }
    }

    pub(super) fn apply_placement(&mut self, p: Pending, now: Instant) {
        let partners: HashMap<u32, Vec<NodeId>> = p.partners.into_iter().collect();
        let local: BTreeSet<u32> = p.local.into_iter().collect();
        for &rank in &local {
            let before: &[NodeId] = match self.local.contains(&rank) {
                true => self.partners.get(&rank).map_or(&[], Vec::as_slice),
                false => &[],
            };
            let added: Vec<NodeId> = partners
                .get(&rank)
                .into_iter()
                .flatten()
                .filter(|n| !before.contains(n))
                .copied()
                .collect();
            if added.is_empty() {
                continue;
            }
            // The committed epoch, and the one in flight if any: it could
            // never commit without the replaced partner. (Epoch numbers are
            // never reused, so a stale one cannot pass for a newer one.)
            let committed = self.committed.map(|c| c.epoch);
            let newest = self.published.get(&rank).copied();
            let out = self.outgoing.entry(rank).or_default();
            if let Some(c) = committed {
                out.fill(c, added.clone());
            }
            if let Some(n) = newest.filter(|&n| committed.is_none_or(|c| n > c)) {
                out.fill(n, added);
            }
        }
        for &rank in self.local.difference(&local) {
            self.outgoing.remove(&rank);
            self.actions.push_back(Action::StopReplicating { rank });
        }
        let arrived: Vec<u32> = local.difference(&self.local).copied().collect();
        if !arrived.is_empty() {
            self.actions
                .push_back(Action::ForgetImportStores { ranks: arrived });
        }
        self.local = local;
        self.partners = partners;
        self.send(FromAgent::PlacementApplied {
            generation: p.generation,
        });
        let ranks: Vec<u32> = self.local.iter().copied().collect();
        for rank in ranks {
            self.pump(rank, now);
        }
    }
}
