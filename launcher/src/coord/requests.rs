//! `pmrun ctl` requests (status, checkpoint, drain), and the signals
//! through which they reach the ranks.

use super::*;

impl Coordinator {
    pub(super) fn handle_control(&mut self, req: CtlRequest, reply: Reply) {
        // Signals reach ranks through mpirun; a rank that has not reached
        // its agent yet may not handle them.
        let starting = (self.pids.len() < self.spec.ranks as usize).then(|| {
            if self.said_no_pm && self.pids.is_empty() {
                "no rank of the job reached its agent (does the application call pm_init?): \
                 it runs without checkpoints, so it cannot be checkpointed or drained"
                    .to_owned()
            } else {
                format!(
                    "the job's ranks are still starting ({} of {} ready); try again in a moment",
                    self.pids.len(),
                    self.spec.ranks
                )
            }
        });
        match req {
            CtlRequest::Status => {
                let _ = reply.send(CtlReply::Status(Box::new(status::report(self))));
            }
            CtlRequest::Checkpoint => {
                if self.mpirun_pid.is_none() {
                    let _ = reply.send(refused("the job is not running right now"));
                    return;
                }
                if let Some(why) = starting {
                    let _ = reply.send(refused(why));
                    return;
                }
                let after = self.state.newest_published().unwrap_or(0);
                self.signal_job(libc::SIGUSR2);
                self.pending_checkpoints.push((after, reply));
            }
            CtlRequest::Drain { node } => {
                let Some(i) = self.spec.nodes.iter().position(|n| n.name == node) else {
                    let names: Vec<&str> =
                        self.spec.nodes.iter().map(|n| n.name.as_str()).collect();
                    let _ = reply.send(refused(format!(
                        "no node {node:?} in this job (nodes: {})",
                        names.join(", ")
                    )));
                    return;
                };
                let usable = self.state.usable_nodes();
                let refusal = match self.state.nodes[i].health {
                    Health::Dead => Some(format!("node {node} is dead already")),
                    Health::Drained => Some(format!("node {node} is drained already")),
                    Health::Alive if usable < 2 => {
                        Some(format!("node {node} is the last usable node"))
                    }
                    Health::Alive if self.drain.is_some() || self.recovering.is_some() => {
                        Some("another drain or recovery is in progress; try again".into())
                    }
                    Health::Alive if self.mpirun_pid.is_none() => {
                        Some("the job is not running right now".into())
                    }
                    Health::Alive => starting,
                };
                if let Some(why) = refusal {
                    let _ = reply.send(refused(why));
                    return;
                }
                self.say(&format!(
                    "draining node {node}: checkpointing, then moving its {} rank(s)",
                    self.state.ranks_on(i).len()
                ));
                self.drain = Some(Drain {
                    nodes: vec![i],
                    started: Instant::now(),
                    reply,
                });
                self.signal_job(libc::SIGUSR1);
            }
        }
    }

    /// Sends `sig` to mpirun, which forwards SIGUSR1/SIGUSR2/SIGTERM to the ranks.
    pub(super) fn signal_job(&self, sig: i32) {
        if let Some(pid) = self.mpirun_pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGKILLs the processes of `ranks` that agents reported.
    pub(super) fn kill_ranks(&self, ranks: &[u32]) {
        for pid in ranks.iter().filter_map(|r| self.pids.get(r)) {
            // SAFETY: as above.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

/// A refusal with its reason.
pub(super) fn refused(reason: impl Into<String>) -> CtlReply {
    CtlReply::Refused {
        reason: reason.into(),
    }
}
