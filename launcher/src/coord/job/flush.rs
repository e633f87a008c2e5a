//! Flushing committed epochs to a shared file system (`--flush DIR`), and
//! resuming from the flushed copy.
//!
//! Every `--flush-every` commits, each node that runs ranks copies their
//! snapshots of the newest committed epoch to the flush directory in the
//! background (its flush worker; ranks never wait). Once every rank's copy
//! is published there, pmrun records the epoch in the directory's own
//! commit record: only then does it count. One flush runs at a time; a
//! commit that comes meanwhile is left for the next one. Before the job
//! ends with its checkpoints kept (a stop, a preemption, an interruption,
//! `--keep`) the newest committed epoch is flushed if it is not yet.
//!
//! A job resumed with `--job` starts from the newest of the nodes' commit
//! records and the flushed one; from the flushed one, each node first
//! copies its ranks' snapshots back into its store.

use super::*;
use pm_core::proto::FlushWay;

/// How long the end of a job waits for its flush.
const FLUSH_WAIT: Duration = Duration::from_secs(300);
/// How long a resume waits for the nodes to copy the flushed snapshots in.
const FETCH_WAIT: Duration = Duration::from_secs(600);

/// `--flush` and `--flush-every`, and what the directory held at the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushSettings {
    /// The directory, for messages.
    pub dir: String,
    /// Flush every this many commits.
    pub every: u64,
    /// The directory's commit record of the job at the start: epoch, step,
    /// ranks.
    pub recorded: Option<(u64, u64, u32)>,
}

/// The flushes of one job.
#[derive(Debug, Default)]
pub(super) struct Flushes {
    commits_since: u64,
    current: Option<Copying>,
    /// The newest epoch recorded in the flush directory (by this pmrun, or
    /// before it: `FlushSettings::recorded`).
    pub(super) recorded: Option<Commit>,
    /// The epoch the job's end last tried to flush (tried once).
    tried_at_end: Option<u64>,
    said_first: bool,
}

impl Flushes {
    pub(super) fn new(settings: Option<&FlushSettings>) -> Self {
        Self {
            recorded: settings
                .and_then(|f| f.recorded)
                .map(|(epoch, step, _)| Commit { epoch, step }),
            ..Self::default()
        }
    }
}

/// A copy in progress, one way or the other.
#[derive(Debug)]
struct Copying {
    way: FlushWay,
    commit: Commit,
    /// Nodes whose answer is awaited.
    nodes: BTreeSet<NodeId>,
    failed: Vec<(u32, String)>,
    bytes: u64,
    started: Instant,
    /// The copy is complete and its record is being written.
    recording: bool,
}

impl Job {
    /// A commit: flushes it if one is due and none is running.
    pub(super) fn flush_after_commit(&mut self, commit: Commit, now: Instant) {
        let Some(every) = self.cfg.flush.as_ref().map(|f| f.every) else {
            return;
        };
        self.flushes.commits_since += 1;
        if self.flushes.commits_since >= every && self.flushes.current.is_none() {
            self.start_copy(FlushWay::Out, commit, now);
        }
    }

    /// Asks every live node with ranks to copy them.
    fn start_copy(&mut self, way: FlushWay, commit: Commit, now: Instant) {
        let mut by_node: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for rank in 0..self.cfg.ranks {
            for node in self.copiers(rank, way) {
                by_node.entry(node).or_default().push(rank);
            }
        }
        self.flushes.commits_since = 0;
        self.flushes.current = Some(Copying {
            way,
            commit,
            nodes: by_node.keys().copied().collect(),
            failed: Vec::new(),
            bytes: 0,
            started: now,
            recording: false,
        });
        for (node, ranks) in by_node {
            self.send(
                node,
                ToAgent::CopyFlush {
                    way,
                    epoch: commit.epoch,
                    ranks,
                },
            );
        }
    }

    /// The nodes that copy `rank`. Out: one, the rank's own node when it
    /// holds the committed snapshot (it wrote it), else a live holder. In:
    /// the node the rank is placed on and its partners, so that the
    /// resumed epoch has as many holders as a committed one (a node lost
    /// before the next commit is recovered from like any other).
    fn copiers(&self, rank: u32, way: FlushWay) -> Vec<NodeId> {
        let placed = self.state.placement[rank as usize];
        if way == FlushWay::In {
            return self.in_holders(rank);
        }
        let holders = self.state.holders_of_committed(rank);
        let alive = |n: &&NodeId| self.state.node(**n).health != Health::Dead;
        let source = if holders.contains(&placed) && alive(&&placed) {
            placed
        } else {
            holders.iter().find(alive).copied().unwrap_or(placed)
        };
        vec![source]
    }

    /// Where a resume from the flushed copy puts `rank`'s snapshot.
    fn in_holders(&self, rank: u32) -> Vec<NodeId> {
        let r = rank as usize;
        let placed = self.state.placement[r];
        let partners = self.state.partners[r].iter().filter(|&&n| n != placed);
        std::iter::once(placed).chain(partners.copied()).collect()
    }

    /// A node's answer to its copy.
    pub(super) fn flush_copied(
        &mut self,
        node: NodeId,
        way: FlushWay,
        epoch: u64,
        failed: Vec<(u32, String)>,
        bytes: u64,
        now: Instant,
    ) {
        let Some(c) = self.flushes.current.as_mut() else {
            return;
        };
        if c.way != way || c.commit.epoch != epoch || !c.nodes.remove(&node) {
            return;
        }
        c.failed.extend(failed);
        c.bytes += bytes;
        self.copy_progress(now);
    }

    /// A node died: its copies will not come.
    pub(super) fn flush_node_lost(&mut self, node: NodeId, now: Instant) {
        let name = self.name(node).to_owned();
        let Some(c) = self.flushes.current.as_mut() else {
            return;
        };
        if c.nodes.remove(&node) {
            c.failed.push((u32::MAX, format!("node {name} was lost")));
            self.copy_progress(now);
        }
    }

    fn copy_progress(&mut self, now: Instant) {
        let Some(c) = self.flushes.current.as_mut() else {
            return;
        };
        if !c.nodes.is_empty() || c.recording {
            return;
        }
        if !c.failed.is_empty() {
            let c = self.flushes.current.take().expect("checked above");
            return self.copy_failed(c, now);
        }
        match c.way {
            FlushWay::Out => {
                c.recording = true;
                let commit = c.commit;
                self.actions.push_back(Action::RecordFlush {
                    epoch: commit.epoch,
                    step: commit.step,
                });
            }
            FlushWay::In => {
                let c = self.flushes.current.take().expect("checked above");
                self.flushes.recorded = Some(c.commit);
                let holders = (0..self.cfg.ranks).map(|r| self.in_holders(r)).collect();
                let secs = now.duration_since(c.started).as_secs_f64();
                let dir = self.flush_dir();
                self.resume_from(
                    c.commit,
                    holders,
                    &format!("the flushed copy in {dir}, copied to the nodes in {secs:.2} s"),
                    now,
                );
            }
        }
    }

    fn copy_failed(&mut self, c: Copying, now: Instant) {
        let dir = self.flush_dir();
        let reasons: Vec<String> = c
            .failed
            .iter()
            .take(3)
            .map(|(r, why)| match *r {
                u32::MAX => why.clone(),
                r => format!("rank {r}: {why}"),
            })
            .collect();
        let more = c.failed.len().saturating_sub(3);
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        match c.way {
            FlushWay::Out => {
                self.say(format!(
                    "epoch {} was not flushed to {dir}: {}{more}; the flushed copy stays at {}",
                    c.commit.epoch,
                    reasons.join("; "),
                    self.flushes
                        .recorded
                        .map_or("none".into(), |r| format!("epoch {}", r.epoch)),
                ));
                self.flush_ended(now);
            }
            FlushWay::In => {
                self.say(format!(
                    "cannot resume job {} from the flushed copy in {dir} (epoch {}): {}{more}",
                    self.cfg.job,
                    c.commit.epoch,
                    reasons.join("; ")
                ));
                self.end_keeping(1);
            }
        }
    }

    /// The driver wrote (or failed to write) the flush directory's record.
    pub(super) fn flush_recorded(&mut self, epoch: u64, error: Option<String>, now: Instant) {
        let Some(c) = self
            .flushes
            .current
            .take_if(|c| c.recording && c.commit.epoch == epoch)
        else {
            return;
        };
        let dir = self.flush_dir();
        match error {
            None => {
                self.flushes.recorded = Some(c.commit);
                let secs = now.duration_since(c.started).as_secs_f64();
                tracing::info!(epoch, bytes = c.bytes, secs, "epoch flushed");
                let at_end = matches!(self.phase, Phase::Flushing { .. });
                if !self.flushes.said_first || self.cfg.verbose || at_end {
                    self.flushes.said_first = true;
                    let resume = match at_end {
                        true => format!(
                            "; pmrun --job {} --flush {dir} resumes from it",
                            self.cfg.job
                        ),
                        false => String::new(),
                    };
                    self.say(format!(
                        "epoch {epoch} (step {}) flushed to {dir}: {:.1} MB written in {secs:.2} s{resume}",
                        c.commit.step,
                        c.bytes as f64 / 1e6
                    ));
                }
            }
            Some(e) => self.say(format!(
                "epoch {epoch} was copied to {dir} but not recorded there: {e}"
            )),
        }
        self.flush_ended(now);
    }

    /// A flush ended: the job's end may have waited for it.
    fn flush_ended(&mut self, now: Instant) {
        if let Phase::Flushing { code, .. } = self.phase {
            self.finish_keeping(code, now);
        }
    }

    /// Before the job ends keeping its checkpoints: whether it must first
    /// flush (or wait for a flush); then the end comes from
    /// [`Job::flush_ended`].
    pub(super) fn flush_before_end(&mut self, code: i32, now: Instant) -> bool {
        if self.cfg.flush.is_none() {
            return false;
        }
        let Some(commit) = self.state.committed else {
            return false;
        };
        let deadline = match self.phase {
            Phase::Flushing { deadline, .. } => deadline,
            _ => now + FLUSH_WAIT,
        };
        if let Some(c) = &self.flushes.current {
            if c.way == FlushWay::Out {
                self.phase = Phase::Flushing { code, deadline };
                return true;
            }
            return false;
        }
        let flushed = self
            .flushes
            .recorded
            .is_some_and(|r| r.epoch >= commit.epoch);
        if flushed || self.flushes.tried_at_end == Some(commit.epoch) {
            return false;
        }
        self.flushes.tried_at_end = Some(commit.epoch);
        self.say(format!(
            "flushing epoch {} (step {}) to {} before the job ends",
            commit.epoch,
            commit.step,
            self.flush_dir()
        ));
        self.start_copy(FlushWay::Out, commit, now);
        self.phase = Phase::Flushing { code, deadline };
        true
    }

    /// The end's flush took too long, or pmrun was interrupted again.
    pub(super) fn abandon_flush(&mut self, why: &str) {
        let Phase::Flushing { code, .. } = self.phase else {
            return;
        };
        let kept = self
            .flushes
            .recorded
            .map_or("no epoch".into(), |r| format!("epoch {}", r.epoch));
        self.say(format!(
            "the flush did not finish ({why}); {} holds {kept}, the nodes' stores the newer one",
            self.flush_dir()
        ));
        self.flushes.current = None;
        self.end_keeping(code);
    }

    pub(super) fn flush_deadline() -> Duration {
        FLUSH_WAIT
    }

    /// At a resume: the flushed commit, if it is newer than `on_nodes`.
    pub(super) fn newer_flushed(&self, on_nodes: Option<u64>) -> Option<(u64, u64, u32)> {
        let recorded = self.cfg.flush.as_ref()?.recorded?;
        (on_nodes.is_none_or(|e| recorded.0 > e)).then_some(recorded)
    }

    /// Resumes from the flushed copy: each node first copies its ranks in.
    pub(super) fn fetch_flushed(&mut self, commit: Commit, now: Instant) {
        self.say(format!(
            "the newest committed checkpoint of job {} is the flushed one (epoch {}, step {}): \
             copying it from {} to the nodes",
            self.cfg.job,
            commit.epoch,
            commit.step,
            self.flush_dir()
        ));
        self.phase = Phase::Fetching {
            deadline: now + FETCH_WAIT,
        };
        self.start_copy(FlushWay::In, commit, now);
    }

    /// The fetch took too long.
    pub(super) fn fetch_timed_out(&mut self) {
        let waiting: Vec<String> = self
            .flushes
            .current
            .take()
            .map(|c| c.nodes.iter().map(|&n| self.name(n).to_owned()).collect())
            .unwrap_or_default();
        self.say(format!(
            "cannot resume job {}: {} did not copy the flushed snapshots from {} within {} s",
            self.cfg.job,
            waiting.join(", "),
            self.flush_dir(),
            FETCH_WAIT.as_secs()
        ));
        self.end_keeping(1);
    }

    /// What resumes the job: `--job ID`, and `--flush DIR` if it flushes.
    pub(super) fn resume_args(&self) -> String {
        match &self.cfg.flush {
            Some(f) => format!("--job {} --flush {}", self.cfg.job, f.dir),
            None => format!("--job {}", self.cfg.job),
        }
    }

    fn flush_dir(&self) -> String {
        self.cfg
            .flush
            .as_ref()
            .map_or_else(String::new, |f| f.dir.clone())
    }
}
