//! `pmrun ctl` requests: status, a checkpoint now, a drain.

use super::*;

impl Job {
    pub(super) fn ctl(&mut self, id: u64, req: CtlRequest, now: Instant) {
        match req {
            CtlRequest::Status => {
                let status = self.status(now);
                self.reply(id, CtlReply::Status(Box::new(status)));
            }
            CtlRequest::Checkpoint => match self.not_ready() {
                Some(why) => self.refuse(id, why),
                None => {
                    let after = self.state.newest_published().unwrap_or(0);
                    self.signal(RunSignal::Checkpoint);
                    self.pending_checkpoints.push((after, id));
                }
            },
            CtlRequest::Drain { node } => self.drain(id, &node, now),
            CtlRequest::Balance => self.decide_balance(Some(id), now),
            CtlRequest::SetCpus { node, cpus } => self.set_cpus(id, &node, cpus),
            CtlRequest::Stop => self.request_stop(Some(id), "asked by pmrun ctl stop", now),
        }
    }

    /// Stops the job at a checkpoint and keeps it. A signal that arrives
    /// while no checkpoint can be taken (ranks starting, a recovery under
    /// way) ends the job as an interruption does, keeping what is
    /// committed; a ctl request is refused instead.
    pub(super) fn request_stop(&mut self, id: Option<u64>, why: &str, now: Instant) {
        if id.is_none() && self.stop_asked.is_some() {
            return; // the same signal again
        }
        let busy = if self.stop_asked.is_some() {
            Some("a stop is under way already".to_owned())
        } else if self.drain.is_some()
            || self.recovering.is_some()
            || self.balancer.moving.is_some()
        {
            Some("a drain, recovery or move is under way".to_owned())
        } else {
            self.not_ready()
        };
        match (busy, id) {
            (Some(reason), Some(id)) => self.refuse(id, format!("{reason}; try again")),
            (Some(reason), None) => {
                self.say(format!(
                    "{why}, but no checkpoint can be taken now ({reason}): ending with the committed one"
                ));
                self.interrupt(now);
            }
            (None, _) => {
                self.say(format!(
                    "{why}: stopping the job at a checkpoint, which is kept"
                ));
                self.stop_asked = Some((id, why.to_owned()));
                self.signal(RunSignal::Stop);
            }
        }
    }

    /// Why the run cannot take a checkpoint now, if it cannot. Signals
    /// reach ranks through mpirun; a rank that has not reached its agent
    /// yet may not handle them.
    fn not_ready(&self) -> Option<String> {
        if self.phase != Phase::Running {
            return Some("the job is not running right now".into());
        }
        let ready = self.pids.len();
        if ready == self.cfg.ranks as usize {
            return None;
        }
        Some(if self.said_no_pm && ready == 0 {
            "no rank of the job reached its agent (does the application call pm_init?): \
             it runs without checkpoints, so it cannot be checkpointed or drained"
                .to_owned()
        } else {
            format!(
                "the job's ranks are still starting ({ready} of {} ready); try again in a moment",
                self.cfg.ranks
            )
        })
    }

    fn drain(&mut self, id: u64, node: &str, now: Instant) {
        let Some(i) = self.cfg.nodes.iter().position(|n| n.name == node) else {
            let names: Vec<&str> = self.cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            return self.refuse(
                id,
                format!("no node {node:?} in this job (nodes: {})", names.join(", ")),
            );
        };
        let n = NodeId::from_index(i);
        match self.drain_refusal(n) {
            Some(why) => self.refuse(id, why),
            None => self.start_drain(Some(id), n, now),
        }
    }

    /// Why node `n` cannot be drained now, if it cannot.
    fn drain_refusal(&self, n: NodeId) -> Option<String> {
        let node = &self.cfg.nodes[n.index()].name;
        match self.state.node(n).health {
            Health::Dead => Some(format!("node {node} is dead already")),
            Health::Drained => Some(format!("node {node} is drained already")),
            Health::Alive if self.state.usable_nodes() < 2 => {
                Some(format!("node {node} is the last usable node"))
            }
            Health::Alive if self.drain.is_some() || self.recovering.is_some() => {
                Some("another drain or recovery is in progress; try again".into())
            }
            Health::Alive => self.not_ready(),
        }
    }

    fn start_drain(&mut self, ctl: Option<u64>, n: NodeId, now: Instant) {
        let ranks = self.state.rank_count(n);
        self.say(format!(
            "draining node {}: checkpointing, then moving its {ranks} rank(s)",
            self.cfg.nodes[n.index()].name
        ));
        self.drain = Some(Drain {
            nodes: vec![n],
            started: now,
            ctl,
        });
        self.signal(RunSignal::Stop);
    }

    /// Inside an allocation, a SIGTERM after the job recovered from a
    /// node's loss is most likely Slurm ending the whole job for that node
    /// (it notices a dead node later than pmrun): say what keeps it going.
    /// Nodes lost while Slurm ends the job (their agents get its SIGTERM
    /// too) are not the cause, hence only recovered losses count.
    pub(super) fn explain_slurm_end(&mut self) {
        if !self.cfg.slurm {
            return;
        }
        let dead: Vec<&str> = self
            .recoveries
            .iter()
            .filter(|r| r.kind == RecoveryKind::NodeFailure)
            .flat_map(|r| r.nodes.iter().map(String::as_str))
            .collect();
        if !dead.is_empty() {
            let text = format!(
                "Slurm is ending the job: node {} is down. Submitted with --no-kill \
                 (#SBATCH --no-kill), a job keeps its allocation when a node fails, and pmrun \
                 goes on without the node",
                dead.join(", ")
            );
            self.say(text);
        }
    }

    /// The nodes Slurm wants emptied (drained by an administrator, failing,
    /// awaiting a reboot) are drained as `ctl drain` would, one at a time.
    /// A drain that must wait (a recovery under way, ranks starting) is
    /// said once per reason and tried again at Slurm's next look; a node
    /// already drained or dead needs nothing.
    pub(super) fn slurm_leaving(&mut self, nodes: Vec<(String, String)>, now: Instant) {
        for (node, why) in nodes {
            let Some(i) = self.cfg.nodes.iter().position(|n| n.name == node) else {
                continue;
            };
            let n = NodeId::from_index(i);
            if self.state.node(n).health != Health::Alive {
                self.slurm_refused.remove(&node);
                continue;
            }
            match self.drain_refusal(n) {
                Some(reason) => {
                    if self.slurm_refused.get(&node) != Some(&reason) {
                        self.say(format!(
                            "node {node} is {why}; it is not drained yet: {reason}"
                        ));
                        self.slurm_refused.insert(node, reason);
                    }
                }
                None => {
                    self.slurm_refused.remove(&node);
                    self.say(format!("node {node} is {why}: draining it"));
                    return self.start_drain(None, n, now);
                }
            }
        }
    }

    fn set_cpus(&mut self, id: u64, node: &str, cpus: f64) {
        let Some(i) = self.cfg.nodes.iter().position(|n| n.name == node) else {
            return self.refuse(id, format!("no node {node:?} in this job"));
        };
        if !(cpus > 0.0 && cpus.is_finite()) {
            return self.refuse(
                id,
                format!("{cpus}: expected a number of CPUs greater than 0"),
            );
        }
        let n = NodeId::from_index(i);
        if self.state.node(n).health != Health::Alive {
            return self.refuse(id, format!("node {node} is not in service"));
        }
        self.pending_cpus.push((n, id));
        self.send(n, ToAgent::SetCpus { cpus });
    }

    fn signal(&mut self, signal: RunSignal) {
        self.actions.push_back(Action::Signal {
            run: self.run,
            signal,
        });
    }
}
