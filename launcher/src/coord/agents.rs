//! Starting the node agents: its own trait, so that nothing in the
//! coordinator assumes one machine. [`LocalAgents`] starts `pmd` on this
//! machine, one per node (virtual nodes bound to their own loopback
//! addresses, or this machine as one node); an `srun` starter for Slurm
//! allocations implements the same trait.
//!
//! Whatever starts them, every agent connects back to pmrun's listener,
//! authenticates with the job's secret and says where it listens
//! (`FromAgent::Ready`); that part is [`super::links`].

use crate::hosts::Host;
use crate::transport::TransportChoice;
use anyhow::Context;
use pm_core::proto::NodeId;
use pm_core::wire::JobSecret;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a node is reached and where it keeps checkpoints.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub slots: u32,
    /// The address the node's agent binds (partners, transfers).
    pub addr: IpAddr,
    /// The host its ranks run on, as the launch backend names it.
    pub host: Host,
    /// The node's store root.
    pub store: PathBuf,
    pub spare: bool,
    /// CPU cgroup for the node's ranks (virtual nodes with `--node-cpus`).
    pub cgroup: Option<PathBuf>,
    pub cpus: f64,
    /// Bytes of rank state the node may hold.
    pub memory_bytes: u64,
}

/// Everything agents are started with.
pub struct AgentLaunch<'a> {
    pub job: &'a str,
    pub run_dir: &'a Path,
    pub secret_file: &'a Path,
    pub secret: &'a JobSecret,
    pub heartbeat: Duration,
    /// Where pmrun listens for its agents.
    pub launcher: SocketAddr,
    /// The flush directory (`--flush`), the same path on every node.
    pub flush: Option<&'a Path>,
    /// The bulk transport (`--transport`).
    pub transport: &'a TransportChoice,
}

/// Starts a job's agents and ends what is left of them.
pub trait AgentStarter {
    /// The address pmrun's agent listener binds: one the agents can reach.
    fn listen_addr(&self) -> IpAddr;
    /// Starts the agent of every node.
    fn start(&mut self, nodes: &[NodeSpec], launch: &AgentLaunch<'_>) -> anyhow::Result<()>;
    /// Agents whose process ended since the last call, and how (with the
    /// end of their log), so that an agent that dies before it connects is
    /// reported rather than waited for.
    fn poll_exited(&mut self) -> Vec<(NodeId, String)>;
    /// The Unix socket the ranks of `node` reach its agent on.
    fn rank_socket(&self, node: NodeId) -> PathBuf;
    /// The file the ranks of `node` read the job's secret from.
    fn rank_secret_file(&self, node: NodeId) -> PathBuf;
    /// The agent's log, if this starter keeps one.
    fn log(&self, node: NodeId) -> Option<PathBuf>;
    /// Waits (up to `patience`) for every agent to end, then ends the
    /// rest. With `delete`, removes what the job left on `dead` nodes,
    /// whose agents cannot do it any more.
    fn finish(&mut self, patience: Duration, delete: bool, dead: &[NodeId]);
}

/// `pmd` processes on this machine.
pub struct LocalAgents {
    job: String,
    /// The store root: virtual nodes' roots below it are pmrun's own.
    root: PathBuf,
    nodes: Vec<NodeSpec>,
    /// Per node: the process (until it is reaped), its socket and its log.
    agents: Vec<(Option<Child>, PathBuf, PathBuf)>,
    secret_file: PathBuf,
}

impl LocalAgents {
    pub fn new(job: &str, root: &Path) -> Self {
        Self {
            job: job.to_owned(),
            root: root.to_owned(),
            nodes: Vec::new(),
            agents: Vec::new(),
            secret_file: PathBuf::new(),
        }
    }
}

/// `pmd`'s arguments for node `id` (all but the secret).
fn pmd_args(id: usize, node: &NodeSpec, launch: &AgentLaunch<'_>, socket: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut arg = |name: &str, value: &OsStr| {
        args.push(name.into());
        args.push(value.to_owned());
    };
    arg("--node", node.name.as_ref());
    arg("--node-id", id.to_string().as_ref());
    arg("--addr", node.addr.to_string().as_ref());
    arg("--store", node.store.as_os_str());
    arg("--job", launch.job.as_ref());
    arg("--launcher", launch.launcher.to_string().as_ref());
    arg("--socket", socket.as_os_str());
    arg(
        "--heartbeat",
        launch.heartbeat.as_secs_f64().to_string().as_ref(),
    );
    arg("--cpus", node.cpus.to_string().as_ref());
    if let Some(cg) = &node.cgroup {
        arg("--cgroup", cg.as_os_str());
    }
    if let Some(dir) = launch.flush {
        arg("--flush", dir.as_os_str());
    }
    arg("--transport", launch.transport.to_string().as_ref());
    args
}

/// The `pmd` next to this `pmrun`, else the one on PATH.
fn pmd_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("pmd"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("pmd"))
}

impl AgentStarter for LocalAgents {
    fn listen_addr(&self) -> IpAddr {
        // Agents run on this machine: loopback is enough.
        IpAddr::from([127, 0, 0, 1])
    }

    fn start(&mut self, nodes: &[NodeSpec], launch: &AgentLaunch<'_>) -> anyhow::Result<()> {
        self.nodes = nodes.to_vec();
        self.secret_file = launch.secret_file.to_owned();
        for (id, node) in nodes.iter().enumerate() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&node.store)
                .with_context(|| {
                    format!(
                        "cannot create the store {} of node {} (is --store writable?)",
                        node.store.display(),
                        node.name
                    )
                })?;
            let socket = launch.run_dir.join(format!("{}.sock", node.name));
            let log = launch.run_dir.join(format!("{}.log", node.name));
            let log_file = std::fs::File::create(&log)
                .with_context(|| format!("cannot create the agent log {}", log.display()))?;
            let mut cmd = Command::new(pmd_program());
            cmd.args(pmd_args(id, node, launch, &socket))
                .arg("--secret-file")
                .arg(launch.secret_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file);
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start pmd for node {}", node.name))?;
            self.agents.push((Some(child), socket, log));
        }
        Ok(())
    }

    fn poll_exited(&mut self) -> Vec<(NodeId, String)> {
        poll_children(&mut self.agents, "pmd")
    }

    fn rank_socket(&self, node: NodeId) -> PathBuf {
        self.agents[node.index()].1.clone()
    }

    fn rank_secret_file(&self, _: NodeId) -> PathBuf {
        self.secret_file.clone()
    }

    fn log(&self, node: NodeId) -> Option<PathBuf> {
        self.agents.get(node.index()).map(|a| a.2.clone())
    }

    fn finish(&mut self, patience: Duration, delete: bool, dead: &[NodeId]) {
        end_children(&mut self.agents, patience);
        if !delete {
            return;
        }
        // Stores of this machine's nodes are local: what a dead agent
        // cannot delete, its starter can.
        for &n in dead {
            let dir = self.nodes[n.index()].store.join(&self.job);
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the job's checkpoints");
            }
        }
        for node in &self.nodes {
            if node.store != self.root {
                // A virtual node's root, made by pmrun: removed once empty.
                let _ = std::fs::remove_dir(&node.store);
            }
        }
    }
}

/// `pmd` on the nodes of a Slurm allocation: one `srun` step per node, so
/// that losing a node ends only that node's agent (a step that loses a
/// node dies whole). Each step overlaps the ranks' steps instead of taking
/// CPUs from them. The secret travels in the step's environment
/// (`PM_SECRET`): Slurm carries it to the node over its authenticated
/// RPCs, no shared file system is needed, and a process's environment is
/// readable by its user only, as the 0600 file it becomes on the node (for
/// the ranks, beside the agent's socket).
pub struct SrunAgents {
    srun: PathBuf,
    job: String,
    /// The address of the node pmrun runs on, which every agent can reach.
    listen: IpAddr,
    /// Per node: the srun step (until it is reaped), the rank socket on
    /// the node, and the agent's log here (srun forwards its stderr).
    agents: Vec<(Option<Child>, PathBuf, PathBuf)>,
}

impl SrunAgents {
    pub fn new(srun: &Path, job: &str, listen: IpAddr) -> Self {
        Self {
            srun: srun.to_owned(),
            job: job.to_owned(),
            listen,
            agents: Vec::new(),
        }
    }
}

impl AgentStarter for SrunAgents {
    fn listen_addr(&self) -> IpAddr {
        self.listen
    }

    fn start(&mut self, nodes: &[NodeSpec], launch: &AgentLaunch<'_>) -> anyhow::Result<()> {
        let secret = crate::agent::hex_secret(launch.secret);
        for (id, node) in nodes.iter().enumerate() {
            // On the node: its own run directory, made by its agent.
            let socket = super::control::run_dir(&node.store, &self.job).join("agent.sock");
            let log = launch.run_dir.join(format!("{}.log", node.name));
            let log_file = std::fs::File::create(&log)
                .with_context(|| format!("cannot create the agent log {}", log.display()))?;
            let mut cmd = Command::new(&self.srun);
            cmd.args([
                "--overlap",
                "--nodes=1",
                "--ntasks=1",
                "--kill-on-bad-exit=0",
                "--quiet",
            ])
            .arg(format!("--nodelist={}", node.name))
            .arg(format!("--job-name=pmd-{}", self.job))
            .arg(pmd_program())
            .args(pmd_args(id, node, launch, &socket))
            .env(crate::agent::SECRET_VAR, &secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
            let child = cmd.spawn().with_context(|| {
                format!(
                    "cannot start `{}` for the agent of node {} (is Slurm's srun on PATH?)",
                    self.srun.display(),
                    node.name
                )
            })?;
            self.agents.push((Some(child), socket, log));
        }
        Ok(())
    }

    fn poll_exited(&mut self) -> Vec<(NodeId, String)> {
        poll_children(&mut self.agents, "the agent's srun step")
    }

    fn rank_socket(&self, node: NodeId) -> PathBuf {
        self.agents[node.index()].1.clone()
    }

    fn rank_secret_file(&self, node: NodeId) -> PathBuf {
        self.rank_socket(node).with_file_name("secret")
    }

    fn log(&self, node: NodeId) -> Option<PathBuf> {
        self.agents.get(node.index()).map(|a| a.2.clone())
    }

    fn finish(&mut self, patience: Duration, _delete: bool, _dead: &[NodeId]) {
        // A live agent deletes its node's files itself; what a dead node
        // left is out of reach from here (the allocation's epilog's work).
        end_children(&mut self.agents, patience);
    }
}

/// Agents whose process ended since the last call, with their log's end.
fn poll_children(
    agents: &mut [(Option<Child>, PathBuf, PathBuf)],
    what: &str,
) -> Vec<(NodeId, String)> {
    let mut ended = Vec::new();
    for (i, (child, _, log)) in agents.iter_mut().enumerate() {
        let Some(c) = child else { continue };
        if let Ok(Some(status)) = c.try_wait() {
            ended.push((
                NodeId::from_index(i),
                format!("{what} exited ({status}):\n{}", log_tail(log)),
            ));
            *child = None;
        }
    }
    ended
}

/// Waits up to `patience` for every agent process to end; then SIGTERM
/// (which srun passes on to its task) and, a moment later, SIGKILL.
fn end_children(agents: &mut [(Option<Child>, PathBuf, PathBuf)], patience: Duration) {
    let mut deadline = Instant::now() + patience;
    for (child, _, _) in agents {
        let Some(c) = child else { continue };
        let mut terminated = false;
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                if terminated {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our own unreaped child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                terminated = true;
                deadline = Instant::now() + Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The last lines of an agent's log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
