//! The coordinator's reactions to what agents report: heartbeats, ranks
//! starting and finishing, published snapshots and stored (or failed)
//! replicas, and the commits they lead to.

use super::*;

impl Coordinator {
    pub(super) fn handle(&mut self, ev: Event) {
        match ev {
            Event::Agent { node, msg } => self.handle_agent(node, msg),
            Event::AgentLost { node, reason } => {
                if self.state.nodes[node].health != Health::Dead {
                    tracing::warn!(node = %self.spec.nodes[node].name, %reason, "lost the agent's connection");
                }
            }
            // Recorded wherever it arrives (a placement may be awaited
            // meanwhile); `supervise` acts on it.
            Event::Exited { run, status } if run == self.run => {
                self.mpirun_pid = None;
                self.exited = Some((status, Instant::now()));
            }
            Event::Exited { .. } => {}
            Event::Control { req, reply } => self.handle_control(req, reply),
        }
    }

    pub(super) fn handle_agent(&mut self, node: usize, msg: FromAgent) {
        if self.state.nodes[node].health == Health::Dead {
            return;
        }
        self.last_seen[node] = Instant::now();
        match msg {
            FromAgent::Heartbeat { .. } | FromAgent::Ready { .. } => {}
            FromAgent::Inventory(_) | FromAgent::RanksKilled { .. } => {}
            FromAgent::RankHello { rank, pid } => {
                self.pids.insert(rank, pid);
                if self.pids.len() == self.spec.ranks as usize
                    && let Some((mut r, started)) = self.recovering.take()
                {
                    r.resume_s = started.elapsed().as_secs_f64() - r.stop_s - r.place_s;
                    r.total_s = r.detect_s + started.elapsed().as_secs_f64();
                    self.say(&format!(
                        "{} of {} handled: detected in {:.2} s, job stopped in {:.2} s, placed in {:.2} s, \
                         ranks resumed from epoch {} {:.2} s after the relaunch; {:.2} s in all",
                        r.kind,
                        r.nodes.join(", "),
                        r.detect_s,
                        r.stop_s,
                        r.place_s,
                        r.epoch,
                        r.resume_s,
                        r.total_s
                    ));
                    self.recoveries.push(r);
                }
            }
            FromAgent::Published {
                rank,
                epoch,
                step,
                state_bytes,
                written_bytes,
            } => {
                self.published_at.entry(epoch).or_insert_with(Instant::now);
                self.max_published = self.max_published.max(epoch);
                self.state
                    .published(rank, epoch, step, state_bytes, written_bytes);
                self.try_commit();
            }
            FromAgent::ReplicaStored {
                rank,
                epoch,
                holder,
            } => {
                let h = holder.index();
                if h < self.spec.nodes.len() {
                    self.replica_failures[h] = 0;
                    self.state.replica_stored(rank, epoch, h);
                    self.try_commit();
                }
            }
            FromAgent::ReplicaFailed {
                rank,
                epoch,
                partner,
                reason,
            } => self.replica_failed(rank, epoch, partner, &reason),
            FromAgent::Finished { rank } => {
                self.finished.insert(rank);
            }
            FromAgent::Stopped { rank, epoch, step } => {
                tracing::debug!(rank, epoch, step, "rank stopped at a checkpoint");
                self.stopped.insert(rank);
            }
            FromAgent::PlacementApplied { generation } if generation == self.generation => {
                self.applied.insert(node);
            }
            FromAgent::PlacementApplied { .. } => {}
        }
    }

    /// A partner failed to store a replica. After
    /// [`REPLICA_FAILURES`] failures in a row it is no partner any more:
    /// its ranks stay, but replicas go elsewhere (and are filled there).
    pub(super) fn replica_failed(&mut self, rank: u32, epoch: u64, partner: NodeId, reason: &str) {
        let p = partner.index();
        if p >= self.agents.len() {
            return;
        }
        tracing::warn!(rank, epoch, partner = %self.spec.nodes[p].name, %reason, "replica not stored");
        self.replica_failures[p] += 1;
        let node = &mut self.state.nodes[p];
        if self.replica_failures[p] < REPLICA_FAILURES
            || !node.holds_replicas
            || node.health != Health::Alive
        {
            return;
        }
        node.holds_replicas = false;
        let name = node.name.clone();
        self.say(&format!(
            "node {name} failed to store {REPLICA_FAILURES} replicas in a row ({reason}); \
             choosing other partners for the ranks it served"
        ));
        self.state.choose_partners();
        self.pending_placement = true;
    }

    pub(super) fn try_commit(&mut self) {
        let Some(commit) = self.state.try_commit() else {
            return;
        };
        self.broadcast(&ToAgent::Commit {
            epoch: commit.epoch,
            step: commit.step,
            ranks: self.spec.ranks,
        });
        let lag = self
            .published_at
            .get(&commit.epoch)
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.published_at.retain(|&e, _| e > commit.epoch);
        tracing::info!(
            epoch = commit.epoch,
            step = commit.step,
            replication_s = lag,
            "epoch committed"
        );
        if self.spec.verbose {
            let msg = format!(
                "epoch {} committed (step {}, replicated {:.2} s after it was written)",
                commit.epoch, commit.step, lag
            );
            self.say(&msg);
        }
        self.commits.push((Instant::now(), commit));
        if self.commits.len() > 8 {
            self.commits.remove(0);
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_checkpoints)
            .into_iter()
            .partition(|(after, _)| commit.epoch > *after);
        self.pending_checkpoints = waiting;
        for (_, reply) in done {
            let _ = reply.send(CtlReply::Committed {
                epoch: commit.epoch,
                step: commit.step,
            });
        }
    }
}
