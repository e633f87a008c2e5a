//! Starting the node agents and talking to them.
//!
//! On virtual nodes and on this machine, `pmrun` starts `pmd` itself, one
//! per node, each bound to the node's address with its own store root and
//! log file. Every agent connects back to `pmrun` over TCP, authenticates
//! with the job's secret and says where it listens; a reader thread per
//! agent turns its messages into coordinator events.

use super::Event;
use anyhow::{Context, bail};
use pm_core::proto::{FromAgent, ToAgent};
use pm_core::wire::{
    JobSecret, Limits, Role, Session, SessionReceiver, SessionSender, WireErrorKind,
};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How a node is reached and where it keeps checkpoints.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub slots: u32,
    pub addr: IpAddr,
    /// The node's store root.
    pub store: PathBuf,
    pub spare: bool,
    /// CPU cgroup for the node's ranks (virtual nodes with `--node-cpus`).
    pub cgroup: Option<PathBuf>,
    pub cpus: f64,
}

/// A connected agent.
pub struct Agent {
    pub sender: SessionSender,
    pub stream: TcpStream,
    /// Where partner agents reach it.
    pub control: String,
    pub pid: u32,
    pub child: Child,
    /// The Unix socket its ranks connect to.
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// What an agent said when it connected.
struct Greeting {
    node: usize,
    sender: SessionSender,
    receiver: SessionReceiver,
    stream: TcpStream,
    control: String,
    pid: u32,
}

impl Agent {
    pub fn send(&mut self, msg: &ToAgent) -> bool {
        self.sender.send(&mut self.stream, msg).is_ok()
    }
}

/// Everything agents are started with.
pub struct AgentLaunch<'a> {
    pub job: &'a str,
    pub run_dir: &'a Path,
    pub secret_file: &'a Path,
    pub secret: &'a JobSecret,
    pub heartbeat: Duration,
    pub listener: &'a TcpListener,
}

/// The `pmd` next to this `pmrun`, else the one on PATH.
fn pmd_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("pmd"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pmd"))
}

/// Starts one agent per node and waits until each has connected and
/// authenticated; then every agent's messages arrive on `events`.
pub fn start(
    launch: &AgentLaunch<'_>,
    nodes: &[NodeSpec],
    events: &mpsc::Sender<Event>,
    timeout: Duration,
) -> anyhow::Result<Vec<Agent>> {
    let launcher = launch.listener.local_addr()?;
    let mut children = Vec::with_capacity(nodes.len());
    for (id, node) in nodes.iter().enumerate() {
        let socket = launch.run_dir.join(format!("{}.sock", node.name));
        let log = launch.run_dir.join(format!("{}.log", node.name));
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create the agent log {}", log.display()))?;
        let mut cmd = Command::new(pmd_program());
        cmd.args(["--node", &node.name])
            .args(["--node-id", &id.to_string()])
            .args(["--addr", &node.addr.to_string()])
            .arg("--store")
            .arg(&node.store)
            .args(["--job", launch.job])
            .args(["--launcher", &launcher.to_string()])
            .arg("--secret-file")
            .arg(launch.secret_file)
            .arg("--socket")
            .arg(&socket)
            .args(["--heartbeat", &launch.heartbeat.as_secs_f64().to_string()])
            .args(["--cpus", &node.cpus.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(cg) = &node.cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start pmd for node {}", node.name))?;
        children.push(Some((child, socket, log)));
    }

    let mut agents: Vec<Option<Agent>> = (0..nodes.len()).map(|_| None).collect();
    let deadline = Instant::now() + timeout;
    launch.listener.set_nonblocking(true)?;
    while agents.iter().any(Option::is_none) {
        for (i, slot) in children.iter_mut().enumerate() {
            if let Some((child, _, log)) = slot
                && let Some(status) = child.try_wait()?
            {
                let tail = log_tail(log);
                bail!(
                    "the agent of node {} exited ({status}) before connecting:\n{tail}",
                    nodes[i].name
                );
            }
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = agents
                .iter()
                .zip(nodes)
                .filter(|(a, _)| a.is_none())
                .map(|(_, n)| n.name.as_str())
                .collect();
            bail!(
                "the agents of {} did not connect within {} s",
                missing.join(", "),
                timeout.as_secs()
            );
        }
        let (stream, peer) = match launch.listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match handshake(stream, peer, launch.secret, nodes) {
            Ok(g) => match children[g.node].take() {
                Some((child, socket, log)) => {
                    let agent = Agent {
                        sender: g.sender,
                        stream: g.stream,
                        control: g.control,
                        pid: g.pid,
                        child,
                        socket,
                        log,
                    };
                    spawn_reader(g.node, &agent, g.receiver, events)?;
                    agents[g.node] = Some(agent);
                }
                None => {
                    tracing::warn!(node = %nodes[g.node].name, "a second agent for the node; refused")
                }
            },
            Err(e) => {
                tracing::warn!(peer = %peer, error = %format!("{e:#}"), "connection to pmrun rejected")
            }
        }
    }
    launch.listener.set_nonblocking(false)?;
    Ok(agents
        .into_iter()
        .map(|a| a.expect("all connected"))
        .collect())
}

fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    secret: &JobSecret,
    nodes: &[NodeSpec],
) -> anyhow::Result<Greeting> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let mut session = Session::accept(
        &mut stream,
        secret,
        &peer.to_string(),
        "pmrun",
        Limits::default(),
    )?;
    if session.remote_role() != Role::Agent {
        bail!("a {:?} connected, not an agent", session.remote_role());
    }
    let name = session.remote_node().to_owned();
    let Some(i) = nodes.iter().position(|n| n.name == name) else {
        bail!("an agent for unknown node {name:?} connected");
    };
    let FromAgent::Ready { control, pid, .. } = session.recv(&mut stream)? else {
        bail!("agent {name} did not start with Ready");
    };
    stream.set_read_timeout(None)?;
    let (sender, receiver) = session.split();
    Ok(Greeting {
        node: i,
        sender,
        receiver,
        stream,
        control,
        pid,
    })
}

fn spawn_reader(
    node: usize,
    agent: &Agent,
    mut receiver: SessionReceiver,
    events: &mpsc::Sender<Event>,
) -> anyhow::Result<()> {
    let mut stream = agent.stream.try_clone()?;
    let events = events.clone();
    std::thread::Builder::new()
        .name(format!("pmrun-agent-{node}"))
        .spawn(move || {
            loop {
                match receiver.recv::<FromAgent, _>(&mut stream) {
                    Ok(msg) => {
                        if events.send(Event::Agent { node, msg }).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let reason = match e.kind {
                            WireErrorKind::Closed => "closed its connection".to_owned(),
                            _ => e.to_string(),
                        };
                        let _ = events.send(Event::AgentLost { node, reason });
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// The last lines of an agent's log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
