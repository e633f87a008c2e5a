//! The links to the agents. An acceptor authenticates every connecting
//! agent (job secret, role, a node of this job, `Ready` first); then a
//! reader per link turns its messages into events, and a writer per link
//! drains a queue with a write timeout, so that no agent — stalled,
//! stopped or gone — can block the coordinator's loop.

use super::driver::Input;
use pm_core::proto::{FromAgent, NodeId, ToAgent};
use pm_core::wire::{JobSecret, Limits, Role, Session, WireErrorKind};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// How long a connecting agent may take to authenticate and say `Ready`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to an agent may block its writer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator's end of one agent's connection.
pub struct AgentLink {
    queue: mpsc::Sender<ToAgent>,
    stream: TcpStream,
}

impl AgentLink {
    /// Queues `msg`; never blocks.
    pub fn send(&self, msg: ToAgent) {
        let _ = self.queue.send(msg);
    }

    /// Ends the link: the agent sees its launcher go away.
    pub fn close(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Accepts agents on `listener` until the process ends; each one that
/// authenticates arrives as [`Input::Connected`].
pub fn accept(
    listener: TcpListener,
    secret: JobSecret,
    nodes: Vec<String>,
    inputs: mpsc::Sender<Input>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("pmrun-accept".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (secret, nodes, inputs) = (secret.clone(), nodes.clone(), inputs.clone());
                let _ = std::thread::Builder::new()
                    .name("pmrun-handshake".into())
                    .spawn(move || {
                        let peer = stream
                            .peer_addr()
                            .map_or("unknown".into(), |a| a.to_string());
                        if let Err(e) = connect(stream, &peer, &secret, &nodes, &inputs) {
                            tracing::warn!(peer = %peer, error = %format!("{e:#}"), "connection to pmrun rejected");
                        }
                    });
            }
        })
        .map(|_| ())
}

fn connect(
    mut stream: TcpStream,
    peer: &str,
    secret: &JobSecret,
    nodes: &[String],
    inputs: &mpsc::Sender<Input>,
) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut session = Session::accept(&mut stream, secret, peer, "pmrun", Limits::default())?;
    if session.remote_role() != Role::Agent {
        anyhow::bail!("a {:?} connected, not an agent", session.remote_role());
    }
    let name = session.remote_node().to_owned();
    let Some(i) = nodes.iter().position(|n| *n == name) else {
        anyhow::bail!("an agent for unknown node {name:?} connected");
    };
    let node = NodeId::from_index(i);
    let ready: FromAgent = session.recv(&mut stream)?;
    if !matches!(ready, FromAgent::Ready { .. }) {
        anyhow::bail!("agent {name} did not start with Ready");
    }
    stream.set_read_timeout(None)?;
    let (mut sender, mut receiver) = session.split();
    let (queue, pending) = mpsc::channel::<ToAgent>();
    let link = AgentLink {
        queue,
        stream: stream.try_clone()?,
    };
    inputs.send(Input::Connected { node, link, ready })?;

    let mut writer = stream.try_clone()?;
    let lost = inputs.clone();
    std::thread::Builder::new()
        .name(format!("pmrun-write-{i}"))
        .spawn(move || {
            for msg in pending {
                if let Err(e) = sender.send(&mut writer, &msg) {
                    let _ = lost.send(Input::lost(node, e.to_string()));
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
            }
        })?;
    let inputs = inputs.clone();
    std::thread::Builder::new()
        .name(format!("pmrun-read-{i}"))
        .spawn(move || {
            loop {
                match receiver.recv::<FromAgent, _>(&mut stream) {
                    Ok(msg) => {
                        if inputs.send(Input::agent(node, msg)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let reason = match e.kind {
                            WireErrorKind::Closed => "it closed its connection".to_owned(),
                            _ => e.to_string(),
                        };
                        let _ = inputs.send(Input::lost(node, reason));
                        return;
                    }
                }
            }
        })?;
    Ok(())
}
