//! The partner side: source agents connect to this agent's control
//! address, say where their transport listens and send `SnapshotReady`
//! requests. One thread per connection reads a request, asks the event
//! loop (the core decides whether to import it), runs the import when told
//! to, and writes the answer; it then reads the next request. Peers'
//! gossip rounds (`Gossip`, not answered) come on the same port, usually on
//! connections of their own, and go to the core as they arrive. The snapshot
//! is pulled into this node's store one-sidedly with a [`Puller`], which
//! keeps the store's files registered between pulls.

use super::core::{ConnId, Event, ImportRequest};
use super::event_loop::Input;
use super::{ConnError, HANDSHAKE_TIMEOUT, Resources, error_chain, lock};
use crate::transport::{NodePeer, NodeTransport};
use pm_core::proto::{FromPartner, ToPartner};
use pm_core::replicate::{ExposedSnapshot, Puller, ReplicateError};
use pm_core::wire::{Limits, Role, Session, WireErrorKind};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// What the event loop tells a partner connection.
pub(super) enum PartnerCommand {
    /// Import the pending request's snapshot.
    Import,
    /// Answer the pending request.
    Answer(FromPartner),
}

/// Why an import failed (sent back to the source as the reason).
#[derive(Debug, thiserror::Error)]
enum ImportError {
    #[error(transparent)]
    Store(#[from] pm_core::StoreError),
    #[error(transparent)]
    Replicate(#[from] ReplicateError),
    #[error("this node refuses replicas (PMD_FAULT_REFUSE_IMPORTS)")]
    Refused,
}

pub(super) fn listen(
    listener: TcpListener,
    res: Arc<Resources>,
    tx: Sender<Input>,
) -> std::io::Result<()> {
    super::serve_each(
        "pmd-partners",
        std::iter::from_fn(move || Some(listener.accept().map(|(s, _)| s))),
        move |conn, stream: TcpStream| {
            let peer = stream
                .peer_addr()
                .map_or("unknown".into(), |a| a.to_string());
            let result = serve(conn, &res, stream, &peer, &tx);
            let _ = tx.send(Event::PartnerClosed { conn }.into());
            if let Err(e) = result {
                tracing::warn!(peer = %peer, error = %e, "partner connection rejected or broken");
            }
        },
    )
}

fn serve(
    conn: ConnId,
    res: &Resources,
    mut stream: TcpStream,
    peer: &str,
    tx: &Sender<Input>,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    // A peer that stalls in the handshake must not hold a thread for ever.
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut session = Session::accept(
        &mut stream,
        &res.opts.secret,
        peer,
        &res.opts.node,
        Limits::default(),
    )?;
    if session.remote_role() != Role::Agent {
        return Err(ConnError::Role {
            role: session.remote_role(),
            socket: "partner port",
        });
    }
    let ToPartner::Hello { transport, .. } = session.recv(&mut stream)? else {
        return Err(ConnError::NoHello);
    };
    let source = NodePeer::from_wire(&transport)?;
    // Between requests the source may be quiet for long; answers are small
    // and keep the write timeout.
    stream.set_read_timeout(None)?;
    let (commands_tx, commands) = channel();
    if tx
        .send(Input::PartnerConnected {
            conn,
            commands: commands_tx,
        })
        .is_err()
    {
        return Ok(());
    }
    let mut puller = Puller::new(&res.transport);
    loop {
        let msg: ToPartner = match session.recv(&mut stream) {
            Ok(m) => m,
            Err(e) if matches!(e.kind, WireErrorKind::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if let ToPartner::Gossip { message } = msg {
            if tx.send(Event::Gossip { message }.into()).is_err() {
                return Ok(());
            }
            continue;
        }
        let snapshot = ExposedSnapshot::from_announcement(&msg);
        let request = match &snapshot {
            Ok(s) => Ok(ImportRequest {
                job: s.manifest.job.clone(),
                rank: s.manifest.rank,
                epoch: s.manifest.epoch,
                bytes: s.manifest.state_bytes(),
            }),
            Err(e) => Err(e.to_string()),
        };
        if tx
            .send(Event::ImportRequested { conn, request }.into())
            .is_err()
        {
            return Ok(());
        }
        let Some(reply) = answer(
            conn,
            res,
            &mut puller,
            &source,
            snapshot.ok(),
            &commands,
            tx,
        ) else {
            return Ok(());
        };
        session.send(&mut stream, &reply)?;
    }
}

/// Waits for the core's decision on the pending request, importing when
/// told to; the answer, or `None` when the event loop is gone.
fn answer(
    conn: ConnId,
    res: &Resources,
    puller: &mut Puller<'_, NodeTransport>,
    source: &NodePeer,
    snapshot: Option<ExposedSnapshot>,
    commands: &Receiver<PartnerCommand>,
    tx: &Sender<Input>,
) -> Option<FromPartner> {
    loop {
        match commands.recv().ok()? {
            PartnerCommand::Answer(reply) => return Some(reply),
            PartnerCommand::Import => {
                let mut progress = Progress::new(conn, tx);
                let result = match &snapshot {
                    Some(s) => {
                        import(res, puller, source, s, &mut progress).map_err(|e| error_chain(&e))
                    }
                    None => Err("no snapshot to import".into()),
                };
                tx.send(Event::ImportFinished { conn, result }.into())
                    .ok()?;
            }
        }
    }
}

/// How often a running import reports the bytes it has left (they go
/// into heartbeats, which come no faster).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Reports an import's progress to the core, at most every
/// [`PROGRESS_EVERY`] (and always once the bytes to move are known).
struct Progress<'a> {
    conn: ConnId,
    tx: &'a Sender<Input>,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(conn: ConnId, tx: &'a Sender<Input>) -> Self {
        Self {
            conn,
            tx,
            last: None,
        }
    }

    fn report(&mut self, moved: u64, total: u64) {
        let now = Instant::now();
        if moved != 0 && self.last.is_some_and(|t| now - t < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(now);
        let bytes_left = total.saturating_sub(moved);
        let _ = self.tx.send(
            Event::ImportProgress {
                conn: self.conn,
                bytes_left,
            }
            .into(),
        );
    }
}

/// Pulls the announced snapshot into this node's store.
fn import(
    res: &Resources,
    puller: &mut Puller<'_, NodeTransport>,
    source: &NodePeer,
    snapshot: &ExposedSnapshot,
    progress: &mut Progress<'_>,
) -> Result<(), ImportError> {
    let rank = snapshot.manifest.rank;
    let cached = lock(&res.import_stores).remove(&rank);
    let mut store = match cached {
        Some(s) => s,
        None => res.open_store(rank)?,
    };
    let result = pull(res, puller, source, snapshot, &mut store, progress);
    // Back before the core hears the import ended: it may then forget it.
    lock(&res.import_stores).insert(rank, store);
    let report = result?;
    tracing::debug!(
        rank,
        epoch = snapshot.manifest.epoch,
        bytes = report.bytes_fetched,
        "replica imported"
    );
    Ok(())
}

fn pull(
    res: &Resources,
    puller: &mut Puller<'_, NodeTransport>,
    source: &NodePeer,
    snapshot: &ExposedSnapshot,
    store: &mut pm_core::Store,
    progress: &mut Progress<'_>,
) -> Result<pm_core::store::ImportReport, ImportError> {
    if !res.opts.import_delay.is_zero() {
        std::thread::sleep(res.opts.import_delay);
    }
    if res.opts.refuse_imports {
        return Err(ImportError::Refused);
    }
    let manifest = &snapshot.manifest;
    let mut report = |moved, total| progress.report(moved, total);
    Ok(puller.pull_with_progress(source, manifest, &snapshot.data_keys, store, &mut report)?)
}
