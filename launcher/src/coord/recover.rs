//! Losing nodes and leaving them: failure detection, relaunch after a
//! failure, and the end of a drain.

use super::*;

impl Coordinator {
    /// Declares dead every live node not heard from for `--fail-after`;
    /// returns them.
    pub(super) fn check_heartbeats(&mut self) -> Vec<usize> {
        let mut lost = Vec::new();
        for i in 0..self.agents.len() {
            if self.state.nodes[i].health == Health::Dead {
                continue;
            }
            let silent = self.last_seen[i].elapsed();
            if silent > self.spec.fail_after {
                self.state.nodes[i].health = Health::Dead;
                lost.push(i);
                let name = self.spec.nodes[i].name.clone();
                self.say(&format!(
                    "node {name} missed its heartbeats for {:.1} s: declared dead",
                    silent.as_secs_f64()
                ));
                let detect = silent.as_secs_f64();
                match &mut self.recovering {
                    Some((r, _)) => r.nodes.push(name),
                    None => {
                        self.recovering = Some((
                            Recovery {
                                kind: RecoveryKind::NodeFailure,
                                nodes: vec![name],
                                detect_s: detect,
                                stop_s: 0.0,
                                place_s: 0.0,
                                resume_s: 0.0,
                                total_s: 0.0,
                                epoch: 0,
                                step: 0,
                                moved: Vec::new(),
                            },
                            Instant::now(),
                        ))
                    }
                }
            }
        }
        lost
    }

    /// The drained job stopped at a checkpoint: wait until it is committed,
    /// move the drained node's ranks to holders of it, and relaunch.
    pub(super) fn finish_drain(&mut self) -> anyhow::Result<()> {
        let Some(Drain {
            nodes,
            started,
            reply,
        }) = self.drain.take()
        else {
            return Ok(());
        };
        let stopped = started.elapsed();
        self.wait_for_stop_commit()?;
        let commit_wait = started.elapsed() - stopped;
        for &n in &nodes {
            if self.state.nodes[n].health == Health::Alive {
                self.state.nodes[n].health = Health::Drained;
            }
        }
        let names: Vec<String> = nodes
            .iter()
            .map(|&n| self.spec.nodes[n].name.clone())
            .collect();
        let place_started = Instant::now();
        let moves = match self.state.replace_lost_ranks() {
            Ok(m) => m,
            Err(e) => {
                let _ = reply.send(super::requests::refused(e.to_string()));
                return Err(e.into());
            }
        };
        self.state.forget_uncommitted();
        self.apply_placement()?;
        let commit = self.state.committed.unwrap_or(Commit { epoch: 0, step: 0 });
        let moved = self.describe_moves(&moves);
        let text = format!(
            "node {} drained: stopped at a checkpoint in {:.2} s, replicated in {:.2} s, {} rank(s) moved ({}); \
             resuming from epoch {} (step {})",
            names.join(", "),
            stopped.as_secs_f64(),
            commit_wait.as_secs_f64(),
            moves.len(),
            moved
                .iter()
                .map(|(r, _, to)| format!("{r}→{to}"))
                .collect::<Vec<_>>()
                .join(" "),
            commit.epoch,
            commit.step
        );
        self.say(&text);
        let record = Recovery {
            kind: RecoveryKind::Drain,
            nodes: names,
            detect_s: 0.0,
            stop_s: started.elapsed().as_secs_f64() - place_started.elapsed().as_secs_f64(),
            place_s: place_started.elapsed().as_secs_f64(),
            resume_s: 0.0,
            total_s: 0.0,
            epoch: commit.epoch,
            step: commit.step,
            moved,
        };
        self.recovering = Some((record.clone(), started));
        let _ = reply.send(CtlReply::Drained(record));
        Ok(())
    }

    /// Waits (up to [`DRAIN_COMMIT_WAIT`]) until the epoch the ranks
    /// stopped at is committed: it is replicated once its partners pull it.
    fn wait_for_stop_commit(&mut self) -> anyhow::Result<()> {
        let target = self.state.newest_published().unwrap_or(0);
        let deadline = Instant::now() + DRAIN_COMMIT_WAIT;
        while self.state.committed.is_none_or(|c| c.epoch < target) && Instant::now() < deadline {
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok(ev) => self.handle(ev),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost every agent"),
            }
            self.check_heartbeats();
        }
        Ok(())
    }

    /// The ranks stopped at a checkpoint that pmrun did not ask for (a
    /// SIGUSR1 reached mpirun): the job is not done, so its checkpoints are
    /// kept for `--job` and pmrun ends with [`STOPPED_EXIT`].
    pub(super) fn stopped_unasked(&mut self) -> anyhow::Result<i32> {
        self.wait_for_stop_commit()?;
        self.answer_pending("the job stopped first");
        let resume = match self.state.committed {
            Some(c) => format!("its checkpoint of step {} (epoch {})", c.step, c.epoch),
            None => "no committed checkpoint: it would start afresh".into(),
        };
        self.say(&format!(
            "the ranks stopped at a checkpoint before the job finished (SIGUSR1 reached them); \
             the job's checkpoints are kept: run pmrun again with --job {} to resume from {resume}",
            self.spec.job
        ));
        self.shut_down(false);
        Ok(STOPPED_EXIT)
    }

    /// Answers the drain and the checkpoint requests still waiting when the
    /// job ends: `why` they cannot be done.
    pub(super) fn answer_pending(&mut self, why: &str) {
        if let Some(Drain { reply, .. }) = self.drain.take() {
            let _ = reply.send(super::requests::refused(format!(
                "{why}: there is nothing left to drain"
            )));
        }
        for (_, reply) in self.pending_checkpoints.drain(..) {
            let _ = reply.send(super::requests::refused(format!(
                "{why}: no checkpoint was taken"
            )));
        }
    }

    pub(super) fn describe_moves(
        &self,
        moves: &[(u32, usize, usize)],
    ) -> Vec<(u32, String, String)> {
        moves
            .iter()
            .map(|&(r, from, to)| {
                (
                    r,
                    self.spec.nodes[from].name.clone(),
                    self.spec.nodes[to].name.clone(),
                )
            })
            .collect()
    }

    /// After a failed run: relaunch (returns `None`) or give up with the
    /// application's exit code.
    pub(super) fn after_failure(&mut self, code: i32) -> anyhow::Result<Option<i32>> {
        let lost_node = self.recovering.is_some();
        let Some(commit) = self.state.committed else {
            if !lost_node {
                if self.restarts >= self.spec.max_restarts {
                    self.say(&format!(
                        "the job failed (exit code {code}) {} times, before committing any checkpoint",
                        self.restarts + 1
                    ));
                    self.shut_down(true);
                    return Ok(Some(code));
                }
                self.restarts += 1;
                self.say(&format!(
                    "the job failed after {:.1} s (exit code {code}) before committing any \
                     checkpoint; starting it afresh, restart {} of {}",
                    self.job_started.elapsed().as_secs_f64(),
                    self.restarts,
                    self.spec.max_restarts
                ));
                self.state.forget_uncommitted();
                self.apply_placement()?;
                return Ok(None);
            }
            self.say("a node was lost before the first checkpoint was committed; starting the job afresh");
            self.relaunch_after_loss(None)?;
            return Ok(None);
        };
        if !lost_node {
            if self.restarts >= self.spec.max_restarts {
                self.say(&format!(
                    "the job failed (exit code {code}) {} times; its checkpoint of step {} is kept: \
                     run pmrun again with --job {} to resume",
                    self.restarts + 1,
                    commit.step,
                    self.spec.job
                ));
                self.shut_down(false);
                return Ok(Some(code));
            }
            self.restarts += 1;
            self.say(&format!(
                "the job failed after {:.1} s (exit code {code}); relaunching from its committed \
                 checkpoint (epoch {}, step {}), restart {} of {}",
                self.job_started.elapsed().as_secs_f64(),
                commit.epoch,
                commit.step,
                self.restarts,
                self.spec.max_restarts
            ));
            self.state.forget_uncommitted();
            self.apply_placement()?;
            return Ok(None);
        }
        match self.relaunch_after_loss(Some(commit)) {
            Ok(()) => Ok(None),
            Err(e) => {
                self.say(&format!("{e:#}"));
                self.shut_down(false);
                Ok(Some(code))
            }
        }
    }

    pub(super) fn relaunch_after_loss(&mut self, commit: Option<Commit>) -> anyhow::Result<()> {
        let stopped_at = self
            .recovering
            .as_ref()
            .map(|(_, t)| t.elapsed().as_secs_f64());
        let place_started = Instant::now();
        let moves = self.state.replace_lost_ranks()?;
        self.state.forget_uncommitted();
        self.apply_placement()?;
        let moved = self.describe_moves(&moves);
        if let Some((r, _)) = &mut self.recovering {
            r.stop_s = stopped_at.unwrap_or(0.0);
            r.place_s = place_started.elapsed().as_secs_f64();
            r.epoch = commit.map_or(0, |c| c.epoch);
            r.step = commit.map_or(0, |c| c.step);
            r.moved = moved.clone();
        }
        let list: Vec<String> = moved
            .iter()
            .map(|(r, from, to)| format!("rank {r} {from}→{to}"))
            .collect();
        match commit {
            Some(c) => self.say(&format!(
                "relaunching from the committed checkpoint (epoch {}, step {}) with {}",
                c.epoch,
                c.step,
                list.join(", ")
            )),
            None => self.say(&format!("relaunching afresh with {}", list.join(", "))),
        }
        Ok(())
    }
}
