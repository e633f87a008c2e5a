//! The agent's one event loop: everything that happens arrives on one
//! channel and goes to the core, with the time; the core's actions are
//! carried out here without ever blocking (every write, import,
//! replication and file job is handed to a thread that reports back).
//! Heartbeats come from the core's timer, so an agent whose loop is stuck
//! stops heartbeating.

use super::core::{Action, AgentCore, ConnId, Event, FileJob, RankSignal};
use super::flush::FlushJob;
use super::gossip_sender::{GossipRound, GossipSender};
use super::launcher::LauncherWriter;
use super::partners::PartnerCommand;
use super::ranks::RankHandle;
use super::replicate::ReplicateJob;
use super::{Resources, lock, replicate};
use rustix::process::Signal;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// What the loop's channel carries: the core's events, and the handles
/// that come with a new connection (the loop keeps them, the core only
/// learns the connection's number).
pub(super) enum Input {
    Core(Event),
    RankConnected {
        conn: ConnId,
        handle: RankHandle,
    },
    PartnerConnected {
        conn: ConnId,
        commands: Sender<PartnerCommand>,
    },
}

impl From<Event> for Input {
    fn from(ev: Event) -> Self {
        Self::Core(ev)
    }
}

/// How long the loop waits when the core wants no timer (it always does
/// while running; this only bounds a wait).
const IDLE: Duration = Duration::from_secs(1);
/// How long pending messages to pmrun may take to go out at exit.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// The workers that live as long as the agent, by what they are handed.
pub(super) struct Workers {
    pub(super) files: Sender<FileJob>,
    pub(super) flush: Sender<FlushJob>,
    pub(super) gossip: GossipSender,
    /// The ranks' processes, once a heartbeat period.
    pub(super) availability: Sender<Vec<u32>>,
}

pub(super) struct EventLoop {
    core: AgentCore,
    res: Arc<Resources>,
    /// For the threads the loop starts.
    tx: Sender<Input>,
    launcher: Option<LauncherWriter>,
    workers: Workers,
    ranks: HashMap<ConnId, RankHandle>,
    partners: HashMap<ConnId, Sender<PartnerCommand>>,
    replicators: HashMap<u32, Sender<ReplicateJob>>,
    /// The duty cycle stopped ranks at some point (see `Drop`).
    stopped_ranks: bool,
}

impl EventLoop {
    pub(super) fn new(
        core: AgentCore,
        res: Arc<Resources>,
        tx: Sender<Input>,
        launcher: LauncherWriter,
        workers: Workers,
    ) -> Self {
        Self {
            core,
            res,
            tx,
            launcher: Some(launcher),
            workers,
            ranks: HashMap::new(),
            partners: HashMap::new(),
            replicators: HashMap::new(),
            stopped_ranks: false,
        }
    }

    /// Runs until the core says exit.
    pub(super) fn run(mut self, rx: Receiver<Input>) {
        loop {
            self.core.handle_timeout(Instant::now());
            if self.act() {
                return;
            }
            let wait = self
                .core
                .poll_timeout()
                .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()));
            match rx.recv_timeout(wait) {
                Ok(input) => self.input(input),
                Err(RecvTimeoutError::Timeout) => {}
                // Never: the loop holds a sender itself.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn input(&mut self, input: Input) {
        let ev = match input {
            Input::Core(ev) => ev,
            Input::RankConnected { conn, handle } => {
                let peer_pid = handle.pid;
                self.ranks.insert(conn, handle);
                Event::RankConnected { conn, peer_pid }
            }
            Input::PartnerConnected { conn, commands } => {
                self.partners.insert(conn, commands);
                return;
            }
        };
        match &ev {
            Event::RankClosed { conn } => {
                self.ranks.remove(conn);
            }
            Event::PartnerClosed { conn } => {
                self.partners.remove(conn);
            }
            _ => {}
        }
        self.core.handle(ev, Instant::now());
    }

    /// Carries out the core's actions; true once it said exit.
    fn act(&mut self) -> bool {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send(msg) => {
                    let sent = self.launcher.as_ref().map(|l| l.send(msg));
                    if let Some(Err(reason)) = sent {
                        self.core
                            .handle(Event::LauncherLost { reason }, Instant::now());
                    }
                }
                Action::CloseRank { conn } => {
                    if let Some(h) = self.ranks.remove(&conn) {
                        h.close();
                    }
                }
                Action::Kill { conns } => {
                    for conn in conns {
                        if let Some(h) = self.ranks.get(&conn) {
                            h.kill();
                        }
                    }
                }
                Action::StartImport { conn } => self.partner(conn, PartnerCommand::Import),
                Action::Answer { conn, reply } => {
                    self.partner(conn, PartnerCommand::Answer(reply));
                }
                Action::Replicate { rank, epoch, to } => {
                    let job = ReplicateJob { epoch, to };
                    let worker = self.replicators.entry(rank).or_insert_with(|| {
                        replicate::start(rank, self.res.clone(), self.tx.clone())
                    });
                    if let Err(e) = worker.send(job) {
                        // The worker could not start: the replication is over.
                        self.replicators.remove(&rank);
                        let error = Some(format!("no replication worker for rank {rank}"));
                        let ev = Event::ReplicationFinished {
                            rank,
                            epoch: e.0.epoch,
                            error,
                        };
                        self.core.handle(ev, Instant::now());
                    }
                }
                Action::StopReplicating { rank } => {
                    // The worker ends once its current replication is done.
                    self.replicators.remove(&rank);
                }
                Action::ForgetImportStores { ranks } => {
                    let mut stores = lock(&self.res.import_stores);
                    for rank in ranks {
                        stores.remove(&rank);
                    }
                }
                Action::Files(job) => {
                    // The worker lives as long as the process; if it died,
                    // the core's exit deadline still ends the agent.
                    if self.workers.files.send(job).is_err() {
                        tracing::error!("the file worker is gone");
                    }
                }
                Action::CopyFlush { way, epoch, ranks } => {
                    let job = FlushJob { way, epoch, ranks };
                    if self.workers.flush.send(job).is_err() {
                        tracing::error!("the flush worker is gone");
                    }
                }
                Action::Gossip { to, message } => {
                    self.workers.gossip.send(GossipRound { to, message });
                }
                Action::MeasureAvailability { pids } => {
                    if self.workers.availability.send(pids).is_err() {
                        tracing::error!("the availability worker is gone");
                    }
                }
                Action::Signal { conns, signal } => {
                    let sig = match signal {
                        RankSignal::Stop => Signal::STOP,
                        RankSignal::Continue => Signal::CONT,
                    };
                    self.stopped_ranks |= signal == RankSignal::Stop;
                    for conn in conns {
                        if let Some(h) = self.ranks.get(&conn) {
                            h.signal(sig);
                        }
                    }
                }
                Action::Exit => {
                    if let Some(l) = self.launcher.take() {
                        l.flush(FLUSH_AT_EXIT);
                    }
                    return true;
                }
            }
        }
        false
    }

    fn partner(&mut self, conn: ConnId, cmd: PartnerCommand) {
        let gone = self
            .partners
            .get(&conn)
            .is_none_or(|c| c.send(cmd).is_err());
        if gone {
            self.partners.remove(&conn);
            self.core
                .handle(Event::PartnerClosed { conn }, Instant::now());
        }
    }
}

/// The core resumes every rank it stopped before it exits; should the loop
/// end otherwise (a panic), the ranks are resumed here all the same.
impl Drop for EventLoop {
    fn drop(&mut self) {
        if self.stopped_ranks {
            for h in self.ranks.values() {
                h.signal(Signal::CONT);
            }
        }
    }
}
