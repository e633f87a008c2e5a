//! Replicas partners send to this node: which requests are accepted, one
//! import per rank at a time (later ones wait their turn), and what a
//! placement that waits for imports still waits for (each import's
//! announced size until it reports the bytes it has left).

use super::{Action, AgentCore, ConnId, FileJob, ImportRequest};
use pm_core::proto::{FromPartner, Waiting};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

#[derive(Debug, Default)]
pub(super) struct Imports {
    /// The running import of each rank.
    running: HashMap<u32, (ConnId, ImportRequest)>,
    /// Requests waiting for their rank's running import, oldest first.
    queued: VecDeque<(ConnId, ImportRequest)>,
    /// A placement waiting for imports into ranks it makes local.
    pub(super) pending: Option<Pending>,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) generation: u64,
    pub(super) local: Vec<u32>,
    pub(super) partners: Vec<(u32, Vec<pm_core::proto::NodeId>)>,
}

impl Imports {
    /// Running imports into ranks that `local` makes local.
    fn blocking<'a>(&'a self, local: &'a [u32]) -> impl Iterator<Item = &'a ImportRequest> + 'a {
        self.running
            .iter()
            .filter(|(r, _)| local.contains(r))
            .map(|(_, (_, req))| req)
    }

    /// Whether the pending placement still waits for an import.
    pub(super) fn placement_blocked(&self, local: &[u32]) -> bool {
        self.blocking(local).next().is_some()
    }

    /// What the pending placement waits for, for heartbeats.
    pub(super) fn waiting(&self) -> Option<Waiting> {
        let p = self.pending.as_ref()?;
        let (imports, bytes_left) = self
            .blocking(&p.local)
            .fold((0u32, 0u64), |(n, b), r| (n + 1, b + r.bytes));
        Some(Waiting {
            generation: p.generation,
            imports,
            bytes_left,
        })
    }

    /// What a running import still has to move, as it reports it.
    pub(super) fn progress(&mut self, conn: ConnId, bytes_left: u64) {
        if let Some((_, req)) = self.running.values_mut().find(|(c, _)| *c == conn) {
            req.bytes = bytes_left;
        }
    }

    /// Takes out the queued requests for `ranks`.
    fn take_queued(&mut self, ranks: &BTreeSet<u32>) -> Vec<(ConnId, ImportRequest)> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|(_, r)| ranks.contains(&r.rank));
        self.queued = kept.into();
        taken
    }
}

impl AgentCore {
    /// Why a request cannot be accepted, if it cannot.
    fn refusal(&self, req: &ImportRequest) -> Option<String> {
        if self.stopping() {
            return Some("the agent is stopping".into());
        }
        if req.job != self.cfg.job {
            return Some(format!(
                "snapshot of job {:?}, this agent serves {:?}",
                req.job, self.cfg.job
            ));
        }
        let pending = self.imports.pending.as_ref();
        if self.local.contains(&req.rank) || pending.is_some_and(|p| p.local.contains(&req.rank)) {
            return Some(format!(
                "rank {} runs on this node; it is not a partner for it",
                req.rank
            ));
        }
        None
    }

    fn refuse(&mut self, conn: ConnId, reason: String) {
        tracing::warn!(conn, %reason, "replica not stored");
        self.actions.push_back(Action::Answer {
            conn,
            reply: FromPartner::Refused { reason },
        });
    }

    pub(super) fn import_requested(
        &mut self,
        conn: ConnId,
        request: Result<ImportRequest, String>,
    ) {
        let req = match request {
            Ok(r) => r,
            Err(reason) => return self.refuse(conn, reason),
        };
        if let Some(reason) = self.refusal(&req) {
            return self.refuse(conn, reason);
        }
        if self.imports.running.contains_key(&req.rank) {
            self.imports.queued.push_back((conn, req));
        } else {
            self.start_import(conn, req);
        }
    }

    fn start_import(&mut self, conn: ConnId, req: ImportRequest) {
        self.imports.running.insert(req.rank, (conn, req));
        self.actions.push_back(Action::StartImport { conn });
    }

    pub(super) fn import_finished(
        &mut self,
        conn: ConnId,
        result: Result<(), String>,
        now: Instant,
    ) {
        let Some(req) = self.end_import(conn) else {
            return;
        };
        let reply = match result {
            Ok(()) => {
                // A replica of the committed epoch that arrives after the
                // commit is marked too, so that pruning keeps it.
                if let Some(c) = self.committed.filter(|c| c.epoch == req.epoch) {
                    self.file_job(FileJob::MarkCommitted {
                        rank: req.rank,
                        commit: c,
                    });
                }
                FromPartner::Stored {
                    rank: req.rank,
                    epoch: req.epoch,
                }
            }
            Err(reason) => {
                tracing::warn!(conn, rank = req.rank, epoch = req.epoch, %reason, "replica not stored");
                FromPartner::Refused { reason }
            }
        };
        self.actions.push_back(Action::Answer { conn, reply });
        self.after_import(req.rank, now);
    }

    pub(super) fn partner_closed(&mut self, conn: ConnId, now: Instant) {
        self.imports.queued.retain(|(c, _)| *c != conn);
        if let Some(req) = self.end_import(conn) {
            self.after_import(req.rank, now);
        }
    }

    fn end_import(&mut self, conn: ConnId) -> Option<ImportRequest> {
        let rank = self
            .imports
            .running
            .iter()
            .find(|(_, (c, _))| *c == conn)
            .map(|(&r, _)| r)?;
        self.imports.running.remove(&rank).map(|(_, req)| req)
    }

    /// A rank's import ended: apply a placement that waited for it, or
    /// start the rank's next request.
    fn after_import(&mut self, rank: u32, now: Instant) {
        if let Some(p) = &self.imports.pending
            && !self.imports.placement_blocked(&p.local)
        {
            let p = self.imports.pending.take().expect("checked");
            self.apply_placement(p, now);
        }
        if let Some(i) = self.imports.queued.iter().position(|(_, r)| r.rank == rank) {
            let (conn, req) = self.imports.queued.remove(i).expect("found");
            match self.refusal(&req) {
                Some(reason) => self.refuse(conn, reason),
                None => self.start_import(conn, req),
            }
        }
    }

    /// Refuses the queued requests for ranks that are becoming local.
    pub(super) fn refuse_queued(&mut self, ranks: &BTreeSet<u32>) {
        for (conn, req) in self.imports.take_queued(ranks) {
            self.refuse(
                conn,
                format!("rank {} runs on this node from now on", req.rank),
            );
        }
    }
}
