//! The rank runtime: registration, the per-step decision, coordinated
//! checkpoints with a job-wide commit, and restart from the committed epoch.
//!
//! Every fallible step that involves more than one rank ends in an agreement
//! (an allreduce of success), so all ranks return an error together and none
//! is left waiting in a collective.

use crate::PmError;
use crate::agent::{AgentConfig, AgentLink};
use crate::comm::Comm;
use crate::config::{Config, Schedule};
use crate::load::{Counters, LoadWindow};
use crate::region::{Entry, Region, Slot, Source, Value};
use crate::timing::{StepStats, StepTimer};
use bytemuck::Pod;
use mpi::ffi::MPI_Comm;
use mpi::raw::AsRaw;
use pm_core::proto::{FromRank, RankLoad};
use pm_core::store::commit::{self, CommitRecord};
use pm_core::store::data_file_len;
use pm_core::{RegionBuf, RegionRef, Snapshot, Store, StoreOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the application does after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// A checkpoint was just taken and the job is asked to stop (to be
    /// moved, or by SIGUSR1): leave the time loop, skip the final output,
    /// call [`Runtime::finalize`] (which keeps the checkpoint) and end the
    /// process successfully; `pmrun`, or the same command run again,
    /// resumes here. Every later [`Runtime::step`] returns `Exit` again.
    Exit,
}

/// How often, at most, rank 0 is consulted about checkpoints and requests.
const POLL_PERIOD: Duration = Duration::from_millis(50);

const CHECKPOINT: u64 = 1;
const EXIT: u64 = 2;

/// What one checkpoint did, as seen by this rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckpointReport {
    pub epoch: u64,
    pub step: u64,
    pub state_bytes: u64,
    pub bytes_written: u64,
    /// Time the checkpoint blocked the application: the write (with
    /// asynchronous checkpoints, the copy), the agreements, and the commit
    /// (or the hand-off to the node agent); asynchronous ones add any wait
    /// for their background publish and their commit, when they end.
    pub blocked: Duration,
}

pub struct Runtime {
    comm: Comm,
    cfg: Config,
    store: Store,
    /// The node agent, when `pmrun` runs the job: it replicates every
    /// snapshot and `pmrun` commits; otherwise the ranks commit themselves.
    agent: Option<AgentLink>,
    entries: Vec<Entry>,
    /// The snapshot regions are restored from, until the first step.
    restore: Option<Snapshot>,
    restored_step: Option<u64>,
    /// Steps completed by the application (including those before a restart).
    step: u64,
    /// Newest epoch taken or restored (0: none yet). Committed when the
    /// ranks commit themselves; under `pmrun`, handed to the agent, which
    /// commits it once it is replicated.
    epoch: u64,
    /// Lowest number the next epoch may have (see `AgentConfig::first_epoch`).
    first_epoch: u64,
    next_poll: u64,
    /// Steps between the last two decisions.
    poll_gap: u64,
    last_checkpoint: Instant,
    last_report: Option<CheckpointReport>,
    timer: StepTimer,
    /// Under `pmrun`: the steps since the last load report to the agent.
    load: LoadWindow,
    /// A load report failed (logged once as a warning).
    load_failed: bool,
    /// Steps the job has in all, as the application declared them.
    total_steps: Option<u64>,
    exit_requested: Arc<AtomicBool>,
    checkpoint_requested: Arc<AtomicBool>,
    /// The epoch and step this rank stopped at after [`Action::Exit`].
    stopped: Option<(u64, u64)>,
    /// Whether the store's data files are being pre-faulted (from the first step on).
    prefaulting: bool,
    /// The epoch being written (read by the `PM_FAULT_PAUSE_IN` hook).
    writing: Arc<AtomicU64>,
    /// An asynchronous checkpoint copied and being published in the background.
    in_flight: Option<InFlight>,
}

/// An asynchronous checkpoint between its copy and its commit.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    epoch: u64,
    step: u64,
    /// Time the ranks were blocked: the copy and its agreement.
    blocked: Duration,
}

impl Runtime {
    /// Initialises the runtime on (a duplicate of) `comm`: reads the
    /// configuration, opens this rank's store and, if the job has a committed
    /// checkpoint, prepares to restore it. Collective.
    pub fn init<C: AsRaw<Raw = MPI_Comm>>(comm: &C) -> Result<Self, PmError> {
        // SAFETY: an rsmpi communicator is valid while it is borrowed.
        unsafe { Self::init_raw(comm.as_raw()) }
    }

    /// [`Runtime::init`] for a raw communicator (the C ABI).
    ///
    /// # Safety
    /// `comm` must be a valid communicator of an initialised MPI.
    pub unsafe fn init_raw(comm: MPI_Comm) -> Result<Self, PmError> {
        install_log_subscriber();
        let comm = unsafe { Comm::dup(comm)? };
        let placement = comm.agree("read its placement", AgentConfig::from_env(comm.rank))?;
        let writing = Arc::new(AtomicU64::new(0));
        let local = Config::from_env().and_then(|mut cfg| {
            if let Some(p) = &placement {
                cfg.store = p.store.clone();
            }
            let opts = StoreOptions {
                keep: cfg.keep,
                auto_commit: false,
                phase_hook: pause_hook(&cfg, comm.rank, &writing),
                ..StoreOptions::default()
            };
            let store = Store::open(&cfg.store, &cfg.job, comm.rank, opts)?;
            Ok((cfg, store))
        });
        let (cfg, store) = comm.agree("open its checkpoint store", local)?;
        // Before the agent learns of this rank: from then on pmrun may
        // signal it, and SIGUSR1/SIGUSR2 would otherwise end it.
        let exit_requested = Arc::new(AtomicBool::new(false));
        let checkpoint_requested = Arc::new(AtomicBool::new(false));
        let handlers = if cfg.signals {
            install_signal_handlers(&exit_requested, &checkpoint_requested)
        } else {
            Ok(())
        };
        comm.agree("install its signal handlers", handlers)?;
        let agent = placement
            .as_ref()
            .map(|p| {
                comm.agree(
                    "connect to its node agent",
                    AgentLink::connect(p, comm.rank),
                )
            })
            .transpose()?;

        let [found, epoch, step, ranks] = match &placement {
            // Under pmrun, pmrun names the committed epoch.
            Some(p) if p.restore_epoch > 0 => {
                let manifest = store.manifest(p.restore_epoch).map_err(PmError::from);
                let manifest = comm.agree("read its manifest of the committed epoch", manifest)?;
                [1, p.restore_epoch, manifest.step, u64::from(comm.size)]
            }
            Some(_) => [0; 4],
            None => {
                let job_record = store.job_dir().join("committed");
                let record = if comm.rank == 0 {
                    commit::read_record(&job_record).map_err(PmError::from)
                } else {
                    Ok(None)
                };
                let record = comm.agree("read the job's commit record", record)?;
                let mut words = record.map_or([0; 4], |r| [1, r.epoch, r.step, u64::from(r.ranks)]);
                comm.bcast(&mut words)?;
                words
            }
        };

        let mut rt = Self {
            comm,
            cfg,
            store,
            agent,
            entries: Vec::new(),
            restore: None,
            restored_step: None,
            step: 0,
            epoch: 0,
            first_epoch: placement.as_ref().map_or(1, |p| p.first_epoch),
            next_poll: 1,
            poll_gap: 1,
            last_checkpoint: Instant::now(),
            last_report: None,
            timer: StepTimer::new(),
            load: LoadWindow::new(Instant::now(), Counters::now()),
            load_failed: false,
            total_steps: None,
            exit_requested,
            checkpoint_requested,
            stopped: None,
            prefaulting: false,
            writing,
            in_flight: None,
        };
        if found == 1 {
            if ranks != u64::from(rt.comm.size) {
                // A rank the checkpoint does not know leaves no empty
                // directory behind (it would look like part of the job).
                let _ = std::fs::remove_dir(rt.store.dir());
                return Err(PmError::RankCount {
                    job: rt.cfg.job.clone(),
                    written: ranks as u32,
                    now: rt.comm.size,
                });
            }
            let snapshot = rt.store.open_snapshot(epoch).map_err(PmError::from);
            let snapshot = rt
                .comm
                .agree("open its snapshot of the committed epoch", snapshot)?;
            rt.restore = Some(snapshot);
            rt.restored_step = Some(step);
            rt.step = step;
            rt.epoch = epoch;
            rt.next_poll = step + 1;
            tracing::info!(
                rank = rt.comm.rank,
                epoch,
                step,
                "resuming from the committed checkpoint"
            );
        } else {
            // A fresh start: snapshots of an earlier run that never committed are void.
            let cleared = rt.store.clear().map_err(PmError::from);
            rt.comm.agree("clear stale snapshots", cleared)?;
        }
        rt.timer.start_step();
        Ok(rt)
    }

    /// The step the application resumes at after a restart (the number of
    /// steps completed when the checkpoint was taken); `None` on a fresh start.
    pub fn restored_step(&self) -> Option<u64> {
        self.restored_step
    }

    /// Steps completed so far, counting those before a restart.
    pub fn current_step(&self) -> u64 {
        self.step
    }

    /// The newest checkpoint epoch (0 before the first): committed when the
    /// ranks commit themselves; under `pmrun`, handed to the node agent,
    /// and committed once replicated.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn rank(&self) -> u32 {
        self.comm.rank
    }

    pub fn size(&self) -> u32 {
        self.comm.size
    }

    pub fn job(&self) -> &str {
        &self.cfg.job
    }

    /// Per-step timing summary of this rank.
    pub fn stats(&self) -> StepStats {
        self.timer.stats()
    }

    /// What the newest checkpoint did on this rank. With `PM_ASYNC=1`, the
    /// newest one published: one still publishing shows once it is (see
    /// [`Runtime::wait_for_checkpoint`]).
    pub fn last_checkpoint(&self) -> Option<CheckpointReport> {
        self.last_report
    }

    /// Waits until an asynchronous checkpoint still publishing is published
    /// and handed on (under `pmrun`) or committed; returns at once when
    /// none is in flight (always, without `PM_ASYNC=1`). Collective: call
    /// it on every rank at the same step. [`Runtime::finalize`] does it too.
    pub fn wait_for_checkpoint(&mut self) -> Result<(), PmError> {
        self.finish_in_flight()
    }

    /// Declares how many steps the job has in all (counting those before a
    /// restart). Under `pmrun` it goes with the rank's load reports, so
    /// that pmrun can judge whether moving a rank pays off before the job
    /// ends; otherwise it has no effect. Local: call it on every rank.
    pub fn set_total_steps(&mut self, steps: u64) {
        self.total_steps = Some(steps);
    }

    /// Asks for a checkpoint at the next decision point. Only rank 0's
    /// requests count (it decides for everyone); SIGUSR2 does the same.
    pub fn request_checkpoint(&self) {
        self.checkpoint_requested.store(true, Ordering::Relaxed);
    }

    /// Asks for a checkpoint followed by [`Action::Exit`]. Only rank 0's
    /// requests count; SIGUSR1 does the same.
    pub fn request_exit(&self) {
        self.exit_requested.store(true, Ordering::Relaxed);
    }

    /// Registers a region of `len` elements of `T`, zeroed on a fresh start
    /// and restored from the committed checkpoint on a restart. Register
    /// every region before the first [`Runtime::step`].
    pub fn region<T: Pod>(&mut self, name: &str, len: usize) -> Result<Region<T>, PmError> {
        self.check_new_name(name)?;
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|_| std::mem::size_of::<T>() > 0)
            .ok_or_else(|| {
                PmError::InvalidArgument(format!(
                    "region {name:?}: {len} elements do not fit in memory"
                ))
            })?;
        let mut buf = RegionBuf::new(bytes).map_err(|e| {
            PmError::InvalidArgument(format!("region {name:?}: cannot map {bytes} bytes: {e}"))
        })?;
        if let Some(snapshot) = &self.restore {
            snapshot.read_region(name, &mut buf)?;
        }
        let slot: Slot = Rc::new(RefCell::new(buf));
        self.entries.push(Entry {
            name: name.to_owned(),
            source: Source::Owned(slot.clone()),
        });
        Ok(Region::new(slot))
    }

    /// Registers memory the application owns, restoring it on a restart.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as
    /// the runtime lives, and not be written while [`Runtime::step`] runs.
    pub unsafe fn register_raw(
        &mut self,
        name: &str,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), PmError> {
        self.check_new_name(name)?;
        if ptr.is_null() && len > 0 {
            return Err(PmError::InvalidArgument(format!(
                "region {name:?}: null pointer"
            )));
        }
        if let Some(snapshot) = &self.restore {
            // SAFETY: the caller guarantees `len` writable bytes at `ptr`.
            let dst = unsafe { raw_slice_mut(ptr, len) };
            snapshot.read_region(name, dst)?;
        }
        self.entries.push(Entry {
            name: name.to_owned(),
            source: Source::Raw { ptr, len },
        });
        Ok(())
    }

    /// Registers a small serde value kept in every checkpoint: `init` on a
    /// fresh start, the checkpointed value on a restart.
    pub fn value<T: Serialize + DeserializeOwned + 'static>(
        &mut self,
        name: &str,
        init: T,
    ) -> Result<Value<T>, PmError> {
        let region = format!("value.{name}");
        self.check_new_name(&region)?;
        let value = match &self.restore {
            None => init,
            Some(snapshot) => {
                let len = snapshot
                    .manifest()
                    .region(&region)
                    .map_or(0, |r| r.len as usize);
                let mut bytes = vec![0; len];
                snapshot.read_region(&region, &mut bytes)?;
                postcard::from_bytes(&bytes).map_err(|e| PmError::Value {
                    name: name.to_owned(),
                    action: "restored",
                    reason: e.to_string(),
                })?
            }
        };
        let cell = Rc::new(RefCell::new(value));
        self.entries.push(Entry {
            name: region,
            source: Source::Value(cell.clone()),
        });
        Ok(Value::new(cell))
    }

    /// Ends a time step. Call it on every rank once per step, at a point
    /// where the registered state is consistent. Collective.
    ///
    /// Called while a region is inside [`Region::with_mut`] or a value is
    /// behind a live [`Value::borrow_mut`], it returns an error on this rank
    /// (a bug in the program, found before anything is read or sent) and
    /// the step does not count: finish the borrow and call it again.
    pub fn step(&mut self) -> Result<Action, PmError> {
        self.entries.iter().try_for_each(Entry::check_unborrowed)?;
        if self.stopped.is_some() {
            return Ok(Action::Exit);
        }
        self.timer.end_step();
        self.load.record(self.timer.last_compute());
        if let Some(snapshot) = self.restore.take() {
            let unregistered = snapshot
                .manifest()
                .regions
                .iter()
                .find(|r| !self.entries.iter().any(|e| e.name == r.name))
                .map(|r| PmError::UnregisteredRegion {
                    epoch: snapshot.epoch(),
                    region: r.name.clone(),
                });
            self.comm
                .agree("restore every region", unregistered.map_or(Ok(()), Err))?;
        }
        if !self.prefaulting {
            self.start_prefault();
        }
        self.step += 1;
        let mut action = Action::Continue;
        if self.step >= self.next_poll {
            if self.in_flight.is_some() {
                self.poll_in_flight()?;
            }
            let decision = self.decide()?;
            self.report_load();
            if decision & CHECKPOINT != 0 {
                self.checkpoint()?;
            }
            if decision & EXIT != 0 {
                self.finish_in_flight()?;
                self.stop()?;
                action = Action::Exit;
            }
        }
        self.timer.start_step();
        Ok(action)
    }

    /// Whether this rank stopped at a checkpoint ([`Action::Exit`]) rather
    /// than running to the end.
    pub fn stopped(&self) -> bool {
        self.stopped.is_some()
    }

    /// Releases pm at the end of the program. Collective.
    ///
    /// After [`Action::Exit`] the job stopped at a checkpoint: everything is
    /// kept for the resume. Otherwise the job is done: every rank deletes its
    /// checkpoints, since a finished job has nothing to resume (under
    /// `pmrun`, the agents delete them and their replicas on every node once
    /// all ranks are done).
    pub fn finalize(mut self) -> Result<(), PmError> {
        self.finish_in_flight()?;
        if let Some((epoch, step)) = self.stopped {
            if self.comm.rank == 0 {
                tracing::info!(
                    epoch,
                    step,
                    "stopped at a checkpoint; its snapshots are kept for the resume"
                );
            }
            return Ok(());
        }
        let Runtime {
            comm, store, agent, ..
        } = self;
        if let Some(mut agent) = agent {
            let rank = comm.rank;
            let told = agent.send(&FromRank::Finished { rank });
            comm.agree("tell its node agent it finished", told)?;
            return Ok(());
        }
        if comm.rank == 0 {
            // First, so that a crash from here on starts the job afresh.
            let record = store.job_dir().join("committed");
            match std::fs::remove_file(&record) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(path = %record.display(), error = %e, "cannot remove the job's commit record");
                }
                _ => {}
            }
        }
        comm.all(true)?;
        let job_dir = store.job_dir().to_owned();
        let removed = store.destroy().map_err(PmError::from);
        comm.agree("remove its checkpoints", removed)?;
        // Every rank's directory is gone now; ranks racing on it above may all have lost.
        let _ = std::fs::remove_dir(job_dir);
        Ok(())
    }

    /// The job was asked to stop and this step's checkpoint is taken: from
    /// now on the rank keeps its checkpoints, and under `pmrun` its agent
    /// knows it stopped rather than finished, so the job is resumed and
    /// never reported done.
    fn stop(&mut self) -> Result<(), PmError> {
        self.stopped = Some((self.epoch, self.step));
        if let Some(agent) = &mut self.agent {
            let told = agent.send(&FromRank::Stopped {
                rank: self.comm.rank,
                epoch: self.epoch,
                step: self.step,
            });
            self.comm.agree("tell its node agent it stopped", told)?;
        }
        Ok(())
    }

    /// Rank 0 decides whether this step checkpoints and when to ask next;
    /// one broadcast tells everyone.
    fn decide(&mut self) -> Result<u64, PmError> {
        let mut words = [0u64; 2];
        if self.comm.rank == 0 {
            let mut flags = 0;
            let due = match self.cfg.schedule {
                Schedule::Every(n) => self.step % n == 0,
                Schedule::Interval(d) => self.last_checkpoint.elapsed() >= d,
            };
            // Under pmrun, a scheduled checkpoint waits until the previous
            // one is replicated and committed: epochs in flight stay few, so
            // pruning never removes one that partners are still copying.
            let due = due && !self.replication_pending();
            if due || self.checkpoint_requested.swap(false, Ordering::Relaxed) {
                flags |= CHECKPOINT;
            }
            if self.exit_requested.swap(false, Ordering::Relaxed) {
                flags |= CHECKPOINT | EXIT;
            }
            words = [flags, self.step + self.poll_distance()];
        }
        self.comm.bcast(&mut words)?;
        self.next_poll = words[1];
        Ok(words[0])
    }

    /// At a decision point under `pmrun`: the load window goes to the agent
    /// once `PM_LOAD_PERIOD` has passed since it began. Each rank reports
    /// on its own clock and nothing here is collective or an error of the
    /// step: a report the socket cannot take at once (the agent is behind)
    /// waits for the next decision point, with the window still open; one
    /// that fails is logged and its window dropped.
    fn report_load(&mut self) {
        let now = Instant::now();
        if self.agent.is_none() || !self.load.due(now, self.cfg.load_period) {
            return;
        }
        let counters = Counters::now();
        let sums = self.load.sums(counters);
        let load = FromRank::Load(RankLoad {
            rank: self.comm.rank,
            step: self.step,
            window_steps: sums.steps,
            compute_s: sums.compute_s,
            compute_sq_s2: sums.compute_sq_s2,
            cpu_s: sums.cpu_s,
            io_wait_s: sums.io_wait_s,
            state_bytes: self.entries.iter().map(Entry::bytes).sum(),
            total_steps: self.total_steps,
        });
        let Some(agent) = &mut self.agent else {
            return;
        };
        match agent.try_send(&load) {
            Ok(true) => self.load.reset(now, counters),
            Ok(false) => {
                tracing::debug!("the node agent is behind; the load report waits a window");
            }
            Err(e) => {
                if !self.load_failed {
                    tracing::warn!(error = %e, "cannot report the rank's load to its node agent");
                }
                self.load_failed = true;
                self.load.reset(now, counters);
            }
        }
    }

    /// Whether this rank's newest epoch is still waiting for `pmrun` to
    /// commit it (the node agent records each commit in the job's record).
    fn replication_pending(&self) -> bool {
        if self.agent.is_none() {
            return false;
        }
        // An asynchronous checkpoint still publishing is not handed on yet.
        if self.in_flight.is_some() {
            return true;
        }
        if self.epoch == 0 {
            return false;
        }
        let record = commit::read_record(&self.store.job_dir().join("committed"));
        match record {
            Ok(Some(r)) => r.epoch < self.epoch,
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job's commit record");
                false
            }
        }
    }

    /// Steps until the next decision: about every `POLL_PERIOD` of wall time,
    /// and exactly on the multiples of `PM_EVERY`. The gap at most doubles
    /// per decision, so a few unusually short steps cannot push the next
    /// decision (and so the next checkpoint) far into the future.
    fn poll_distance(&mut self) -> u64 {
        let wall = self.timer.wall_mean().max(1e-9);
        let by_time = ((POLL_PERIOD.as_secs_f64() / wall) as u64).max(1);
        self.poll_gap = by_time.min(self.poll_gap.saturating_mul(2)).max(1);
        match self.cfg.schedule {
            Schedule::Every(n) => self.poll_gap.min(n - self.step % n),
            Schedule::Interval(_) => self.poll_gap,
        }
    }

    /// Writes this rank's snapshot, agrees that all ranks did, records the
    /// commit (rank 0, job-wide), then marks it committed locally. With
    /// `PM_ASYNC=1` the ranks agree once their regions are copied, and the
    /// rest follows when every rank's snapshot is published
    /// ([`Runtime::poll_in_flight`]).
    fn checkpoint(&mut self) -> Result<(), PmError> {
        self.finish_in_flight()?;
        let started = Instant::now();
        let epoch = (self.epoch + 1).max(self.first_epoch);
        self.writing.store(epoch, Ordering::Relaxed);
        if self.cfg.asynchronous {
            let step = self.step;
            let staged = self
                .with_regions(|store, regions| store.write_async(epoch, step, regions).map(|_| ()));
            self.comm.agree("copy its snapshot", staged)?;
            self.in_flight = Some(InFlight {
                epoch,
                step: self.step,
                blocked: started.elapsed(),
            });
            return Ok(());
        }
        let step = self.step;
        let written = self.with_regions(|store, regions| store.write(epoch, step, regions));
        let report = self.comm.agree("write its snapshot", written)?;
        self.complete(epoch, step, &report, Duration::ZERO, started)
    }

    /// At a decision point with an asynchronous checkpoint in flight: once
    /// every rank's snapshot is published, hands it on (or commits it).
    fn poll_in_flight(&mut self) -> Result<(), PmError> {
        let published = self.store.staged_done();
        if self.comm.all(published)? {
            self.finish_in_flight()?;
        }
        Ok(())
    }

    /// Waits for the asynchronous checkpoint in flight, if any, and hands
    /// it on (or commits it). Collective.
    fn finish_in_flight(&mut self) -> Result<(), PmError> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let finished = self
            .store
            .finish_staged()
            .map_err(PmError::from)
            .and_then(|r| {
                r.ok_or_else(|| PmError::InvalidArgument("no checkpoint was in flight".into()))
            });
        let report = self.comm.agree("publish its snapshot", finished)?;
        self.complete(f.epoch, f.step, &report, f.blocked, started)
    }

    /// A published snapshot of every rank: to the agent (which replicates
    /// it; pmrun commits), or committed here. The checkpoint blocked the
    /// rank for `blocked` before `since`, and from then until this returns.
    fn complete(
        &mut self,
        epoch: u64,
        step: u64,
        report: &pm_core::WriteReport,
        blocked: Duration,
        since: Instant,
    ) -> Result<(), PmError> {
        if let Some(agent) = &mut self.agent {
            let published = FromRank::Published {
                rank: self.comm.rank,
                epoch,
                step,
                state_bytes: report.state_bytes,
                written_bytes: report.bytes_written,
            };
            let told = agent.send(&published);
            self.comm
                .agree("hand its snapshot to its node agent", told)?;
        } else {
            self.commit(epoch, step)?;
        }

        // Over for this rank: what the next checkpoint writes into is made
        // ready in the background.
        self.store.top_up_pool();
        self.epoch = epoch;
        self.last_checkpoint = Instant::now();
        let blocked = blocked + since.elapsed();
        self.last_report = Some(CheckpointReport {
            epoch,
            step,
            state_bytes: report.state_bytes,
            bytes_written: report.bytes_written,
            blocked,
        });
        if self.comm.rank == 0 {
            tracing::info!(
                epoch,
                step,
                bytes_written = report.bytes_written,
                blocked_ms = blocked.as_secs_f64() * 1e3,
                asynchronous = self.cfg.asynchronous,
                "checkpoint taken"
            );
        }
        Ok(())
    }

    /// Records the commit of `epoch` (rank 0, job-wide), then marks it
    /// committed locally; every step is agreed on.
    fn commit(&mut self, epoch: u64, step: u64) -> Result<(), PmError> {
        let record = CommitRecord {
            epoch,
            step,
            ranks: self.comm.size,
        };
        let recorded = if self.comm.rank == 0 {
            if self.cfg.pause_before_commit == Some(epoch) {
                eprintln!(
                    "pm: pausing before committing epoch {epoch} (PM_FAULT_PAUSE_BEFORE_COMMIT)"
                );
                loop {
                    std::thread::park();
                }
            }
            let path = self.store.job_dir().join("committed");
            commit::write_record(&path, record, self.store.is_durable()).map_err(PmError::from)
        } else {
            Ok(())
        };
        self.comm.agree("record the commit", recorded)?;
        let marked = self
            .store
            .commit(epoch, self.comm.size)
            .map(|_| ())
            .map_err(PmError::from);
        self.comm.agree("mark the epoch committed", marked)?;
        Ok(())
    }

    /// Hands every registered region (values encoded) to `write`, which
    /// writes this rank's snapshot with them.
    fn with_regions<R>(
        &mut self,
        write: impl FnOnce(&mut Store, &[RegionRef]) -> Result<R, pm_core::StoreError>,
    ) -> Result<R, PmError> {
        // Values first: their encoding runs the application's Serialize
        // code, which must not run while the regions below are borrowed.
        let mut encoded = Vec::new();
        for e in &self.entries {
            if let Source::Value(value) = &e.source {
                let bytes = value
                    .encode()
                    .ok_or_else(|| PmError::ValueBorrowed(e.value_name().to_owned()))?
                    .map_err(|err| PmError::Value {
                        name: e.value_name().to_owned(),
                        action: "encoded",
                        reason: err.to_string(),
                    })?;
                encoded.push(bytes);
            }
        }
        // `step()` checked these borrows, and only the Serialize code above
        // has run since (its own borrows end with it); `try_borrow` keeps
        // even a surprise an error rather than an aliased read.
        let mut owned = Vec::new();
        for e in &self.entries {
            if let Source::Owned(slot) = &e.source {
                let buf = slot
                    .try_borrow()
                    .map_err(|_| PmError::RegionBorrowed(e.name.clone()))?;
                owned.push(buf);
            }
        }
        let (mut values, mut owned) = (encoded.iter(), owned.iter());
        let regions: Vec<RegionRef> = self
            .entries
            .iter()
            .map(|e| {
                let bytes: &[u8] = match &e.source {
                    Source::Owned(_) => owned.next().expect("one borrow per region"),
                    // SAFETY: guaranteed by the caller of `register_raw`.
                    Source::Raw { ptr, len } => unsafe { raw_slice(*ptr, *len) },
                    Source::Value(_) => values.next().expect("one encoding per value"),
                };
                RegionRef::new(&e.name, bytes)
            })
            .collect();
        Ok(write(&mut self.store, &regions)?)
    }

    /// Every region is registered by the first step: from then on the
    /// store makes its data files ready in the background, so that no
    /// checkpoint (the first included) pays for faulting pages in.
    fn start_prefault(&mut self) {
        self.prefaulting = true;
        let len = data_file_len(self.entries.iter().map(Entry::bytes));
        if let Err(error) = self.store.prefault(len) {
            tracing::warn!(%error, "cannot pre-fault the checkpoint store; checkpoints fault their pages in themselves");
        }
    }

    fn check_new_name(&self, name: &str) -> Result<(), PmError> {
        pm_core::names::validate_region_name(name)?;
        if self.entries.iter().any(|e| e.name == name) {
            return Err(PmError::DuplicateRegion(name.to_owned()));
        }
        Ok(())
    }
}

/// The `PM_FAULT_PAUSE_IN` test hook: rank 0 stops for good when the write
/// of the chosen epoch enters the chosen phase, so a test can kill it there.
fn pause_hook(
    cfg: &Config,
    rank: u32,
    writing: &Arc<AtomicU64>,
) -> Option<pm_core::store::PhaseHook> {
    let (phase, epoch) = cfg.pause_in.filter(|_| rank == 0)?;
    let writing = writing.clone();
    Some(Arc::new(move |now| {
        if now == phase && writing.load(Ordering::Relaxed) == epoch {
            eprintln!("pm: pausing in {phase:?} of epoch {epoch} (PM_FAULT_PAUSE_IN)");
            loop {
                std::thread::park();
            }
        }
    }))
}

/// SIGUSR1 asks for a checkpoint and exit, SIGUSR2 for a checkpoint.
fn install_signal_handlers(
    exit_requested: &Arc<AtomicBool>,
    checkpoint_requested: &Arc<AtomicBool>,
) -> Result<(), PmError> {
    use signal_hook::consts::{SIGUSR1, SIGUSR2};
    let install = |sig, flag: &Arc<AtomicBool>| {
        signal_hook::flag::register(sig, flag.clone())
            .map(|_| ())
            .map_err(|e| PmError::InvalidArgument(format!("cannot install a signal handler: {e}")))
    };
    install(SIGUSR1, exit_requested)?;
    install(SIGUSR2, checkpoint_requested)
}

/// Logs to stderr, filtered by `PM_LOG` (warnings by default), unless the
/// application installed its own tracing subscriber.
fn install_log_subscriber() {
    let filter = std::env::var("PM_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

unsafe fn raw_slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees `len` readable bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }
}

unsafe fn raw_slice_mut<'a>(ptr: *mut u8, len: usize) -> &'a mut [u8] {
    if len == 0 {
        &mut []
    } else {
        // SAFETY: the caller guarantees `len` writable bytes at `ptr`.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}
