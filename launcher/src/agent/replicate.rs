//! Replication between agents.
//!
//! Outgoing: one worker per local rank takes the rank's newest published
//! epoch, exposes its data files on the transport and asks each partner
//! agent to pull it (`SnapshotReady`); a partner answers `ReplicaStored`
//! once the replica is published in its store, and the worker tells
//! `pmrun`, which commits an epoch when every rank's partners hold it.
//! A newer epoch supersedes an older one still waiting; a partner that fails
//! is reported in the log, and `pmrun` replaces it when its node is lost.
//!
//! Incoming: partners connect to the agent's control address, say where
//! their transport listens (`AgentReady`) and send `SnapshotReady`
//! requests, which are pulled into this node's store one-sidedly.

use super::{HANDSHAKE_TIMEOUT, PARTNER_TIMEOUT, Shared, lock};
use pm_core::Store;
use pm_core::proto::{FromAgent, FromPartner, NodeId, ToPartner};
use pm_core::replicate::{ExposedSnapshot, Puller, expose};
use pm_core::wire::{Limits, Role, Session, WireErrorKind};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// What a rank's replication worker is asked to do.
pub(super) enum Work {
    /// Send the newly published `epoch` to every partner.
    Replicate { epoch: u64 },
    /// Send `epoch` (the committed one) to partners that are new.
    Fill { epoch: u64, to: Vec<NodeId> },
}

/// Exposed snapshots kept registered per rank, for partners still pulling.
const KEEP_EXPOSED: usize = 2;

pub(super) fn enqueue(shared: &Arc<Shared>, rank: u32, work: Work) {
    let mut state = lock(&shared.state);
    let tx = state.workers.entry(rank).or_insert_with(|| {
        let (tx, rx) = mpsc::channel();
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name(format!("pmd-replicate-{rank}"))
            .spawn(move || worker(&shared, rank, &rx));
        tx
    });
    let _ = tx.send(work);
}

fn worker(shared: &Shared, rank: u32, rx: &mpsc::Receiver<Work>) {
    let store = match Store::open(
        &shared.opts.store,
        &shared.opts.job,
        rank,
        Shared::store_options(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(rank, error = %e, "cannot open the rank's store; not replicating it");
            return;
        }
    };
    let mut partners: HashMap<NodeId, Partner> = HashMap::new();
    let mut exposed: VecDeque<ExposedSnapshot> = VecDeque::new();
    // Partners that failed the newest epoch are asked again, with backoff,
    // until they store it, stop being partners, or a newer epoch comes.
    let mut retry: Option<Retry> = None;
    loop {
        let first = match &retry {
            Some(r) => match rx.recv_timeout(r.delay) {
                Ok(work) => Some(work),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match rx.recv() {
                Ok(work) => Some(work),
                Err(_) => return,
            },
        };
        // Only the newest published epoch matters; fills are all kept.
        let mut newest = None;
        let mut fills = Vec::new();
        for work in first.into_iter().chain(rx.try_iter()) {
            match work {
                Work::Replicate { epoch } => newest = newest.max(Some(epoch)),
                Work::Fill { epoch, to } => fills.push((epoch, to)),
            }
        }
        let mut jobs = fills;
        let current = lock(&shared.state)
            .partners
            .get(&rank)
            .cloned()
            .unwrap_or_default();
        let mut attempt = 0;
        if let Some(r) = retry.take()
            && newest.is_none_or(|n| n <= r.epoch)
        {
            let to: Vec<NodeId> = r.to.into_iter().filter(|p| current.contains(p)).collect();
            if !to.is_empty() && r.attempt < MAX_RETRIES {
                attempt = r.attempt + 1;
                jobs.push((r.epoch, to));
            }
        }
        if let Some(epoch) = newest {
            let to = lock(&shared.state)
                .partners
                .get(&rank)
                .cloned()
                .unwrap_or_default();
            jobs.push((epoch, to));
        }
        for (epoch, to) in jobs {
            if to.is_empty() {
                continue;
            }
            let mut failed = Vec::new();
            let snapshot = match store
                .open_snapshot(epoch)
                .map_err(anyhow::Error::from)
                .and_then(|snap| Ok(expose(&shared.transport, &store, &snap)?))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(rank, epoch, error = %e, "cannot expose the snapshot to partners");
                    continue;
                }
            };
            let announcement = snapshot.announcement();
            exposed.push_back(snapshot);
            for node in to {
                let started = std::time::Instant::now();
                match send_to(shared, &mut partners, node, &announcement) {
                    Ok(()) => {
                        tracing::debug!(rank, epoch, partner = %node, ms = started.elapsed().as_millis() as u64, "replica stored");
                        shared.tell_launcher(&FromAgent::ReplicaStored {
                            rank,
                            epoch,
                            holder: node,
                        });
                    }
                    Err(e) => {
                        partners.remove(&node);
                        failed.push(node);
                        tracing::warn!(rank, epoch, partner = %node, error = %format!("{e:#}"), "replication failed");
                        shared.tell_launcher(&FromAgent::ReplicaFailed {
                            rank,
                            epoch,
                            partner: node,
                            reason: format!("{e:#}"),
                        });
                    }
                }
            }
            while exposed.len() > KEEP_EXPOSED {
                if let Some(old) = exposed.pop_front() {
                    let _ = old.withdraw(&shared.transport);
                }
            }
            if !failed.is_empty() && retry.as_ref().is_none_or(|r| r.epoch <= epoch) {
                retry = Some(Retry {
                    epoch,
                    to: failed,
                    attempt,
                    delay: RETRY_DELAY * 2u32.pow(attempt.min(3)),
                });
            }
        }
    }
}

/// Partners to ask again for an epoch they failed to store.
struct Retry {
    epoch: u64,
    to: Vec<NodeId>,
    attempt: u32,
    delay: std::time::Duration,
}

const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
const MAX_RETRIES: u32 = 8;

/// A connection to a partner agent, used request by request.
struct Partner {
    stream: TcpStream,
    session: Session,
}

/// An authenticated connection to the agent of partner `node`.
fn connect(shared: &Shared, node: NodeId) -> anyhow::Result<Partner> {
    let Some(addr) = lock(&shared.state).peers.get(&node).cloned() else {
        anyhow::bail!("pmrun named no address for partner node {node}");
    };
    let sock: SocketAddr = addr.parse()?;
    let mut stream = TcpStream::connect_timeout(&sock, PARTNER_TIMEOUT)?;
    stream.set_read_timeout(Some(PARTNER_TIMEOUT))?;
    stream.set_write_timeout(Some(PARTNER_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut session = Session::connect(
        &mut stream,
        &shared.opts.secret,
        &addr,
        &shared.opts.node,
        Role::Agent,
        Limits::default(),
    )?;
    session.send(
        &mut stream,
        &ToPartner::Hello {
            node: shared.opts.node_id,
            transport: shared.transport.local_addr().to_string(),
        },
    )?;
    Ok(Partner { stream, session })
}

/// Asks the partner `node` to pull the announced snapshot and waits for
/// its answer.
fn send_to(
    shared: &Shared,
    partners: &mut HashMap<NodeId, Partner>,
    node: NodeId,
    announcement: &ToPartner,
) -> anyhow::Result<()> {
    let p = match partners.entry(node) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(connect(shared, node)?),
    };
    p.session.send(&mut p.stream, announcement)?;
    match p.session.recv(&mut p.stream)? {
        FromPartner::Stored { .. } => Ok(()),
        FromPartner::Refused { reason } => anyhow::bail!("the partner refused: {reason}"),
    }
}

pub(super) fn serve_partners(shared: Arc<Shared>, listener: TcpListener) {
    super::serve_each(
        listener.incoming(),
        "pmd-partner",
        move |stream: TcpStream| {
            let peer = stream
                .peer_addr()
                .map_or("unknown".into(), |a| a.to_string());
            if let Err(e) = serve_partner(&shared, stream, &peer) {
                tracing::warn!(peer = %peer, error = %e, "partner connection rejected or broken");
            }
        },
    );
}

fn serve_partner(shared: &Shared, mut stream: TcpStream, peer: &str) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // A peer that stalls in the handshake must not hold a thread for ever.
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut session = Session::accept(
        &mut stream,
        &shared.opts.secret,
        peer,
        &shared.opts.node,
        Limits::default(),
    )?;
    if session.remote_role() != Role::Agent {
        anyhow::bail!(
            "a {:?} connected to the partner port",
            session.remote_role()
        );
    }
    let ToPartner::Hello { transport, .. } = session.recv(&mut stream)? else {
        anyhow::bail!("the partner did not say where its transport listens");
    };
    let source: SocketAddr = transport.parse()?;
    stream.set_read_timeout(None)?;
    let mut puller = Puller::new(&shared.transport);
    loop {
        let msg: ToPartner = match session.recv(&mut stream) {
            Ok(m) => m,
            Err(e) if matches!(e.kind, WireErrorKind::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let reply = match import(shared, &mut puller, &source, &msg) {
            Ok((rank, epoch)) => FromPartner::Stored { rank, epoch },
            Err(e) => {
                tracing::warn!(peer = %peer, error = %format!("{e:#}"), "replica not stored");
                FromPartner::Refused {
                    reason: format!("{e:#}"),
                }
            }
        };
        session.send(&mut stream, &reply)?;
    }
}

/// Pulls the announced snapshot into this node's store.
fn import(
    shared: &Shared,
    puller: &mut Puller<'_, pm_core::transport::TcpTransport>,
    source: &SocketAddr,
    msg: &ToPartner,
) -> anyhow::Result<(u32, u64)> {
    let snapshot = ExposedSnapshot::from_announcement(msg)?;
    let manifest = &snapshot.manifest;
    let (rank, epoch) = (manifest.rank, manifest.epoch);
    if manifest.job != shared.opts.job {
        anyhow::bail!(
            "snapshot of job {:?}, this agent serves {:?}",
            manifest.job,
            shared.opts.job
        );
    }
    if lock(&shared.state).local.contains(&rank) {
        anyhow::bail!("rank {rank} runs on this node; it is not a partner for it");
    }
    let slot = lock(&shared.imports)
        .entry(rank)
        .or_insert_with(|| Arc::new(Mutex::new(None)))
        .clone();
    let mut store = lock(&slot);
    if store.is_none() {
        *store = Some(Store::open(
            &shared.opts.store,
            &shared.opts.job,
            rank,
            Shared::store_options(),
        )?);
    }
    let store = store.as_mut().expect("opened above");
    if !shared.opts.import_delay.is_zero() {
        std::thread::sleep(shared.opts.import_delay);
    }
    if shared.opts.refuse_imports {
        anyhow::bail!("this node refuses replicas (PMD_FAULT_REFUSE_IMPORTS)");
    }
    let report = puller.pull(source, manifest, &snapshot.data_keys, store)?;
    if lock(&shared.state).committed == Some(epoch) {
        store.mark_committed(epoch, 0)?;
    }
    tracing::debug!(
        rank,
        epoch,
        bytes = report.bytes_fetched,
        "replica imported"
    );
    Ok((rank, epoch))
}
