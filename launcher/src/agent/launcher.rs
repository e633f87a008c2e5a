//! The link to pmrun: connected and authenticated before the loop starts,
//! then one reader thread that posts pmrun's messages as events and one
//! writer thread that sends the loop's messages. Writes are bounded twice,
//! so that a stalled pmrun can never stall the loop: the loop only ever
//! puts a message into a bounded queue (a full queue means pmrun stopped
//! reading: the link counts as lost), and the writer's socket has a write
//! timeout (a write that times out loses the link too).

use super::core::Event;
use super::event_loop::Input;
use super::{AgentError, AgentOptions, HANDSHAKE_TIMEOUT, io_err};
use crate::transport::NodeTransport;
use pm_core::proto::{FromAgent, ToAgent};
use pm_core::wire::{Limits, Role, Session, SessionReceiver, SessionSender, WireErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// How long one write to pmrun may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for pmrun at most (heartbeats, replicas, publishes:
/// many seconds' worth).
const QUEUE: usize = 1024;

/// An authenticated link to pmrun that has said `Ready`.
pub(super) struct Link {
    stream: TcpStream,
    sender: SessionSender,
    receiver: SessionReceiver,
}

/// Connects to pmrun, authenticates and says where this agent listens.
pub(super) fn connect(
    opts: &AgentOptions,
    control: SocketAddr,
    transport: &NodeTransport,
) -> Result<Link, AgentError> {
    let mut stream = TcpStream::connect_timeout(&opts.launcher, HANDSHAKE_TIMEOUT)
        .map_err(io_err(format!("reach pmrun at {}", opts.launcher)))?;
    let setup = |s: &TcpStream| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
    };
    setup(&stream).map_err(io_err("set up the link to pmrun"))?;
    let session = Session::connect(
        &mut stream,
        &opts.secret,
        &opts.launcher.to_string(),
        &opts.node,
        Role::Agent,
        Limits::default(),
    )?;
    let (mut sender, receiver) = session.split();
    sender.send(
        &mut stream,
        &FromAgent::Ready {
            control: control.to_string(),
            transport: transport.address().to_wire(),
            provider: transport.describe(),
            pid: std::process::id(),
        },
    )?;
    // pmrun may be quiet for as long as it likes; the loop learns that it
    // died from the connection, and that it stalled from the writes.
    stream
        .set_read_timeout(None)
        .map_err(io_err("set up the link to pmrun"))?;
    Ok(Link {
        stream,
        sender,
        receiver,
    })
}

/// The loop's end of the writer thread.
pub(super) struct LauncherWriter {
    queue: SyncSender<FromAgent>,
    done: Receiver<()>,
}

impl LauncherWriter {
    /// Queues a message; `Err` (the reason) when the link is to be taken as lost.
    pub(super) fn send(&self, msg: FromAgent) -> Result<(), String> {
        match self.queue.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!(
                "pmrun has not read the last {QUEUE} messages: it is stalled"
            )),
            // The writer ended on an error it reported itself.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Lets the queued messages go out, waiting at most `limit`.
    pub(super) fn flush(self, limit: Duration) {
        drop(self.queue);
        match self.done.recv_timeout(limit) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!("messages to pmrun were left unsent at exit");
            }
        }
    }
}

impl Link {
    /// Starts the reader and the writer; pmrun's messages and the link's
    /// loss arrive on `tx`.
    pub(super) fn start(self, tx: &Sender<Input>) -> std::io::Result<LauncherWriter> {
        let Link {
            stream,
            mut sender,
            mut receiver,
        } = self;
        let mut reader = stream.try_clone()?;
        let events = tx.clone();
        super::spawn("pmd-launcher-read", move || {
            let reason = loop {
                match receiver.recv::<ToAgent, _>(&mut reader) {
                    Ok(msg) => {
                        if events.send(Event::Launcher(msg).into()).is_err() {
                            return;
                        }
                    }
                    Err(e) if matches!(e.kind, WireErrorKind::Closed) => {
                        break "pmrun closed the connection".to_owned();
                    }
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(Event::LauncherLost { reason }.into());
        })?;
        let (queue, rx) = sync_channel::<FromAgent>(QUEUE);
        let (done_tx, done) = sync_channel(1);
        let events = tx.clone();
        let mut stream = stream;
        super::spawn("pmd-launcher-write", move || {
            for msg in rx {
                if let Err(e) = sender.send(&mut stream, &msg) {
                    let reason = format!("cannot write to pmrun: {e}");
                    let _ = events.send(Event::LauncherLost { reason }.into());
                    return;
                }
            }
            let _ = done_tx.send(());
        })?;
        Ok(LauncherWriter { queue, done })
    }
}
