//! `SetCpus`: the node's CPUs change. With a cgroup its CFS quota is
//! rewritten (a file job: the quota file is the agent's own group's);
//! without one the agent enforces the CPUs itself with a duty cycle: in
//! every [`DUTY_PERIOD`] the node's ranks run for the fraction `cpus /
//! offered` and are stopped (SIGSTOP) for the rest, then resumed (SIGCONT).
//! Either way the node's capacity, and so its gossip record and the ranks'
//! shares, follows the CPUs in force.
//!
//! A rank is never left stopped: the cycle resumes every rank before the
//! agent kills ranks, exits, or goes on without pmrun (whose ranks it then
//! kills).

use super::{Action, AgentCore, FileJob};
use pm_core::proto::FromAgent;
use std::time::{Duration, Instant};

/// The duty cycle's period: short against a step of most jobs, so the
/// ranks' progress is even, long against a signal's delivery.
pub const DUTY_PERIOD: Duration = Duration::from_millis(100);

/// What the event loop sends the processes behind rank connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankSignal {
    Stop,
    Continue,
}

#[derive(Debug)]
pub(super) struct DutyCycle {
    /// The fraction of each period the ranks run, in (0, 1).
    run: f64,
    /// Whether the ranks are stopped now.
    stopped: bool,
    /// When the current phase ends.
    switch_at: Instant,
}

impl DutyCycle {
    fn new(run: f64, now: Instant) -> Self {
        let mut d = Self {
            run,
            stopped: false,
            switch_at: now,
        };
        d.switch_at = now + d.phase();
        d
    }

    /// The length of the current phase.
    fn phase(&self) -> Duration {
        let fraction = if self.stopped {
            1.0 - self.run
        } else {
            self.run
        };
        DUTY_PERIOD.mul_f64(fraction)
    }

    /// Enters the other phase; the signal that does it.
    fn switch(&mut self, now: Instant) -> RankSignal {
        self.stopped = !self.stopped;
        // Keeps the cycle's rhythm; a loop that fell far behind starts the
        // phase now rather than catching up with a burst of signals.
        let next = self.switch_at + self.phase();
        self.switch_at = if next > now { next } else { now + self.phase() };
        if self.stopped {
            RankSignal::Stop
        } else {
            RankSignal::Continue
        }
    }

    pub(super) fn switch_at(&self) -> Instant {
        self.switch_at
    }
}

impl AgentCore {
    pub(super) fn set_cpus(&mut self, cpus: f64, now: Instant) {
        if !(cpus > 0.0 && cpus.is_finite()) {
            let enforced = Err(format!("{cpus} CPUs: expected a number greater than 0"));
            return self.cpus_set(enforced);
        }
        tracing::info!(cpus, cgroup = self.cfg.cgroup, "setting the node's CPUs");
        if self.cfg.cgroup {
            return self.file_job(FileJob::SetQuota { cpus });
        }
        self.end_duty_cycle();
        let offered = self.load.offered;
        let run = cpus / offered;
        let how = if run >= 1.0 {
            // Without a quota the node cannot give more than it offers.
            self.load.cpus = offered;
            format!("duty cycle off: the ranks run all the time, on the {offered} CPUs offered")
        } else {
            self.load.cpus = cpus;
            let d = DutyCycle::new(run, now);
            let how = format!(
                "duty cycle: the ranks run {:.1} ms of every {} ms ({cpus} of {offered} CPUs)",
                d.phase().as_secs_f64() * 1e3,
                DUTY_PERIOD.as_millis()
            );
            self.duty = Some(d);
            how
        };
        self.cpus_set(Ok(how));
    }

    /// The quota file job is done: `cpus` are in force unless it failed.
    pub(super) fn quota_set(&mut self, cpus: f64, result: Result<String, String>) {
        if result.is_ok() {
            self.load.cpus = cpus;
        }
        self.cpus_set(result);
    }

    /// Answers a `SetCpus` with the CPUs in force now.
    fn cpus_set(&mut self, enforced: Result<String, String>) {
        let cpus = self.load.cpus;
        match &enforced {
            Ok(how) => tracing::info!(cpus, how = %how, "the node's CPUs are set"),
            Err(e) => tracing::warn!(cpus, error = %e, "cannot set the node's CPUs"),
        }
        self.send(FromAgent::CpusSet { cpus, enforced });
    }

    /// The duty cycle's next phase, when due.
    pub(super) fn duty_timeout(&mut self, now: Instant) {
        let Some(d) = self.duty.as_mut().filter(|d| now >= d.switch_at) else {
            return;
        };
        let signal = d.switch(now);
        self.signal_ranks(signal);
    }

    /// Resumes the ranks if the duty cycle has them stopped, and starts
    /// the cycle's period again with them running (before a kill: the
    /// cycle goes on for the next run's ranks).
    pub(super) fn resume_ranks(&mut self, now: Instant) {
        if let Some(d) = self.duty.as_mut().filter(|d| d.stopped) {
            *d = DutyCycle::new(d.run, now);
            self.signal_ranks(RankSignal::Continue);
        }
    }

    /// Ends the duty cycle, resuming the ranks if it has them stopped.
    pub(super) fn end_duty_cycle(&mut self) {
        if self.duty.take().is_some_and(|d| d.stopped) {
            self.signal_ranks(RankSignal::Continue);
        }
    }

    fn signal_ranks(&mut self, signal: RankSignal) {
        let (conns, _) = self.open_ranks();
        self.actions.push_back(Action::Signal { conns, signal });
    }
}
