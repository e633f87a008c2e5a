//! Outgoing replication: one worker thread per local rank carries out the
//! core's [`Action::Replicate`](super::core::Action::Replicate) jobs in
//! order. It exposes the snapshot's data files on the transport and asks
//! every partner agent at once to pull it (`SnapshotReady`), one thread per
//! partner, so that R partners share the link instead of taking turns; a
//! partner answers `Stored` once the replica is published in its store.
//! Every answer goes back to the core as an event as it comes (the core
//! tells pmrun and decides on retries). The worker keeps its partner
//! connections and the last few exposed snapshots between jobs.

use super::core::{Event, Target};
use super::event_loop::Input;
use super::{PARTNER_TIMEOUT, Resources, error_chain};
use pm_core::Store;
use pm_core::proto::{FromPartner, NodeId, ToPartner};
use pm_core::replicate::{ExposedSnapshot, Exposer, ReplicateError};
use pm_core::wire::{Limits, Role, Session, WireError};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

/// One replication: the rank's snapshot of `epoch` to these partners.
pub(super) struct ReplicateJob {
    pub(super) epoch: u64,
    pub(super) to: Vec<Target>,
}

/// Exposed snapshots kept registered per rank, for partners still pulling
/// (a partner that timed out may still be reading).
const KEEP_EXPOSED: usize = 2;

/// Why one partner did not store the replica (or a gossip round did not
/// reach a peer).
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("pmrun named no address for partner node {0}")]
    NoAddress(NodeId),
    #[error("partner address {addr}: {source}")]
    Address {
        addr: String,
        source: std::net::AddrParseError,
    },
    #[error("cannot reach the partner: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the partner refused: {0}")]
    Refused(String),
}

/// Starts `rank`'s worker; it ends when the sender is dropped.
pub(super) fn start(rank: u32, res: Arc<Resources>, tx: Sender<Input>) -> Sender<ReplicateJob> {
    let (jobs, rx) = channel();
    let spawned = super::spawn(&format!("pmd-replicate-{rank}"), move || {
        worker(rank, &res, &rx, &tx);
    });
    if let Err(e) = spawned {
        tracing::error!(rank, error = %e, "cannot start a replication worker");
    }
    jobs
}

fn worker(rank: u32, res: &Resources, rx: &Receiver<ReplicateJob>, tx: &Sender<Input>) {
    let mut store: Option<Store> = None;
    let mut exposer = Exposer::default();
    let mut partners: HashMap<NodeId, Partner> = HashMap::new();
    let mut exposed: VecDeque<ExposedSnapshot> = VecDeque::new();
    for job in rx {
        let epoch = job.epoch;
        let snapshot = match open(res, &mut store, &mut exposer, rank, epoch) {
            Ok(s) => s,
            Err(e) => {
                let error = Some(error_chain(&e));
                let _ = tx.send(Event::ReplicationFinished { rank, epoch, error }.into());
                continue;
            }
        };
        let announcement = snapshot.announcement();
        exposed.push_back(snapshot);
        let (kept, reported) =
            ask_partners(res, rank, epoch, job.to, &mut partners, &announcement, tx);
        partners.extend(kept);
        if !reported {
            return;
        }
        while exposed.len() > KEEP_EXPOSED {
            if let Some(old) = exposed.pop_front() {
                let _ = old.withdraw(&res.transport);
            }
        }
        let _ = tx.send(
            Event::ReplicationFinished {
                rank,
                epoch,
                error: None,
            }
            .into(),
        );
    }
    for old in exposed {
        let _ = old.withdraw(&res.transport);
    }
}

/// Asks every target to pull the announced snapshot, all at once, and
/// reports each answer as it comes. Returns the connections still good,
/// and whether the core could be told (false: the agent is ending).
fn ask_partners(
    res: &Resources,
    rank: u32,
    epoch: u64,
    targets: Vec<Target>,
    partners: &mut HashMap<NodeId, Partner>,
    announcement: &ToPartner,
    tx: &Sender<Input>,
) -> (Vec<(NodeId, Partner)>, bool) {
    std::thread::scope(|s| {
        let asks: Vec<_> = targets
            .into_iter()
            .map(|target| {
                let conn = partners.remove(&target.node);
                let tx = tx.clone();
                s.spawn(move || {
                    let partner = target.node;
                    let started = std::time::Instant::now();
                    let (conn, result) = send_to(res, conn, &target, announcement);
                    match &result {
                        Ok(()) => {
                            tracing::debug!(rank, epoch, partner = %partner, ms = started.elapsed().as_millis() as u64, "replica stored");
                        }
                        Err(e) => {
                            tracing::warn!(rank, epoch, partner = %partner, error = %error_chain(e), "replication failed");
                        }
                    }
                    let result = result.map_err(|e| error_chain(&e));
                    let ev = Event::Replicated {
                        rank,
                        epoch,
                        partner,
                        result,
                    };
                    (partner, conn, tx.send(ev.into()).is_ok())
                })
            })
            .collect();
        let mut kept = Vec::new();
        let mut reported = true;
        for ask in asks {
            match ask.join() {
                Ok((node, conn, told)) => {
                    reported &= told;
                    kept.extend(conn.map(|c| (node, c)));
                }
                Err(_) => tracing::error!(rank, epoch, "a replication thread panicked"),
            }
        }
        (kept, reported)
    })
}

/// Opens the rank's store (once) and exposes its snapshot of `epoch`
/// (mapping only data files not mapped already).
fn open(
    res: &Resources,
    store: &mut Option<Store>,
    exposer: &mut Exposer,
    rank: u32,
    epoch: u64,
) -> Result<ExposedSnapshot, ReplicateError> {
    let store = match store {
        Some(s) => s,
        None => store.insert(res.open_store(rank)?),
    };
    let snap = store.open_snapshot(epoch)?;
    exposer.expose(&res.transport, store, &snap)
}

/// A connection to a partner agent, used request by request.
pub(super) struct Partner {
    pub(super) stream: TcpStream,
    pub(super) session: Session,
}

/// An authenticated connection to the agent of a partner (or a gossip
/// peer: the same port), every wait on it bounded by `timeout`.
pub(super) fn connect(
    res: &Resources,
    target: &Target,
    timeout: Duration,
) -> Result<Partner, SendError> {
    let addr = target
        .addr
        .as_deref()
        .ok_or(SendError::NoAddress(target.node))?;
    let sock: SocketAddr = addr.parse().map_err(|source| SendError::Address {
        addr: addr.to_owned(),
        source,
    })?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut session = Session::connect(
        &mut stream,
        &res.opts.secret,
        addr,
        &res.opts.node,
        Role::Agent,
        Limits::default(),
    )?;
    session.send(
        &mut stream,
        &ToPartner::Hello {
            node: res.opts.node_id,
            transport: res.transport.address().to_wire(),
        },
    )?;
    Ok(Partner { stream, session })
}

/// Asks the partner to pull the announced snapshot over `conn` (or a new
/// connection) and waits for its answer; the connection, unless it failed.
fn send_to(
    res: &Resources,
    conn: Option<Partner>,
    target: &Target,
    announcement: &ToPartner,
) -> (Option<Partner>, Result<(), SendError>) {
    let mut p = match conn {
        Some(p) => p,
        None => match connect(res, target, PARTNER_TIMEOUT) {
            Ok(p) => p,
            Err(e) => return (None, Err(e)),
        },
    };
    let answer = p
        .session
        .send(&mut p.stream, announcement)
        .and_then(|()| p.session.recv(&mut p.stream));
    match answer {
        Ok(FromPartner::Stored { .. }) => (Some(p), Ok(())),
        // A refusal is an answer: the connection stays good.
        Ok(FromPartner::Refused { reason }) => (Some(p), Err(SendError::Refused(reason))),
        Err(e) => (None, Err(e.into())),
    }
}
