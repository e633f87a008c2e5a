//! `pmrun`'s one event loop around the coordinator core ([`super::job`]).
//!
//! Agent links, the launch backend's process, `pmrun ctl` connections and
//! SIGINT/SIGTERM arrive on one channel as [`Input`]s; the timer is the
//! core's [`Job::poll_timeout`]. Every action the core returns is carried
//! out here without blocking: messages go through each link's writer
//! queue, the run is a child process watched by a thread, replies go back
//! to the waiting ctl connection. No rule of the job lives in this file.

use super::agents::{AgentLaunch, AgentStarter};
use super::job::{Action, Config, Event, FlushSettings, Job, NodeConfig, RunPlan, RunSignal};
use super::links::{self, AgentLink};
use super::{JobSpec, cgroup, console::Console, control, exit_code};
use crate::backend::{LaunchBackend, LaunchPlan};
use anyhow::{Context, bail};
use pm_core::proto::{CtlReply, CtlRequest, FromAgent, Health, NodeId};
use pm_core::wire::JobSecret;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What reaches the loop.
pub enum Input {
    /// An agent authenticated and said `Ready`.
    Connected {
        node: NodeId,
        link: AgentLink,
        ready: FromAgent,
    },
    /// An event for the core as it is.
    Core(Event),
    /// A `pmrun ctl` request and where its answer goes.
    Ctl {
        req: CtlRequest,
        reply: mpsc::Sender<CtlReply>,
    },
    /// The run's process ended.
    Exited { run: u64, status: ExitStatus },
}

impl Input {
    pub fn agent(node: NodeId, msg: FromAgent) -> Self {
        Self::Core(Event::FromAgent { node, msg })
    }

    pub fn lost(node: NodeId, reason: String) -> Self {
        Self::Core(Event::LinkLost { node, reason })
    }
}

/// How often the loop looks at signals and agent processes when nothing
/// else happens.
const TICK: Duration = Duration::from_millis(50);
/// How long agents may take to exit at the end of the job.
const AGENT_EXIT: Duration = Duration::from_secs(10);

/// Runs the job to its end; the application's exit code.
pub fn run(
    spec: JobSpec,
    backend: Box<dyn LaunchBackend>,
    mut starter: Box<dyn AgentStarter>,
) -> anyhow::Result<i32> {
    let run_dir = control::run_dir(&spec.store, &spec.job);
    let ctl_path = run_dir.join("ctl.sock");
    if ctl_path.exists() && std::os::unix::net::UnixStream::connect(&ctl_path).is_ok() {
        bail!(
            "job {} is already running (its control socket {} answers)",
            spec.job,
            ctl_path.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&run_dir)
        .with_context(|| {
            format!(
                "cannot create the job's run directory {} (is --store writable?)",
                run_dir.display()
            )
        })?;
    let cleanup = |e: anyhow::Error| {
        let _ = std::fs::remove_dir_all(&run_dir);
        e
    };
    let secret = JobSecret::generate().context("no random bytes for the job's secret")?;
    let secret_file = run_dir.join("secret");
    write_secret(&secret_file, &secret).map_err(cleanup)?;

    let (tx, rx) = mpsc::channel();
    let listener = TcpListener::bind(SocketAddr::new(starter.listen_addr(), 0))
        .context("cannot listen for agents")
        .map_err(cleanup)?;
    let launcher = listener.local_addr()?;
    let names = spec.nodes.iter().map(|n| n.name.clone()).collect();
    links::accept(listener, secret.clone(), names, tx.clone())?;
    let _ = std::fs::remove_file(&ctl_path);
    let ctl = std::os::unix::net::UnixListener::bind(&ctl_path)
        .with_context(|| format!("cannot create the control socket {}", ctl_path.display()))
        .map_err(cleanup)?;
    {
        let (tx, secret) = (tx.clone(), secret.clone());
        std::thread::Builder::new()
            .name("pmrun-ctl-accept".into())
            .spawn(move || control::serve(ctl, secret, tx))?;
    }
    if let Some(every) = spec.slurm_watch {
        let names = spec.nodes.iter().map(|n| n.name.clone()).collect();
        super::slurm_watch::start("scontrol".into(), names, every, tx.clone())?;
    }
    starter
        .start(
            &spec.nodes,
            &AgentLaunch {
                job: &spec.job,
                run_dir: &run_dir,
                secret_file: &secret_file,
                secret: &secret,
                heartbeat: spec.heartbeat,
                launcher,
                flush: spec.flush.as_ref().map(|(dir, _)| dir.as_path()),
                transport: &spec.transport,
            },
        )
        .map_err(|e| {
            starter.finish(Duration::ZERO, false, &[]);
            cleanup(e)
        })?;

    let cfg = Config {
        job: spec.job.clone(),
        ranks: spec.ranks,
        nodes: spec
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| NodeConfig {
                name: n.name.clone(),
                slots: n.slots,
                spare: n.spare,
                addr: n.addr.to_string(),
                store: n.store.display().to_string(),
                log: starter
                    .log(NodeId::from_index(i))
                    .map(|p| p.display().to_string()),
                cpus: n.cpus,
                memory_bytes: n.memory_bytes,
            })
            .collect(),
        replicas: spec.replicas,
        fail_after: spec.fail_after,
        keep: spec.keep,
        max_restarts: spec.max_restarts,
        verbose: spec.verbose,
        store: spec.store.display().to_string(),
        // What the ranks will see, whether it came from --async, -x or Slurm's --pm-async.
        asynchronous: spec
            .env
            .iter()
            .any(|(k, v)| k == "PM_ASYNC" && v.trim() == "1"),
        balance: spec.balance.clone(),
        placement: spec.placement.clone(),
        launcher_lingers: backend.lingers_after_node_loss(),
        slurm: spec.slurm_watch.is_some(),
        flush: match &spec.flush {
            Some((dir, every)) => Some(FlushSettings {
                dir: dir.display().to_string(),
                every: *every,
                recorded: flushed_record(dir, &spec.job).map_err(|e| {
                    starter.finish(Duration::ZERO, false, &[]);
                    cleanup(e)
                })?,
            }),
            None => None,
        },
    };
    let job = match Job::new(cfg, Instant::now()) {
        Ok(job) => job,
        Err(e) => {
            starter.finish(Duration::ZERO, false, &[]);
            return Err(cleanup(e.into()));
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let stop_asked = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, stop_asked.clone())?;
    let mut driver = Driver {
        links: (0..spec.nodes.len()).map(|_| None).collect(),
        spec,
        job,
        starter,
        backend,
        inputs: tx,
        run_dir,
        child: None,
        replies: HashMap::new(),
        next_ctl: 0,
        console: Console::new(),
        interrupted,
        stop_asked,
    };
    driver.run_loop(&rx)
}

/// The flush directory's record of `job` (epoch, step, ranks), if any.
fn flushed_record(dir: &Path, job: &str) -> anyhow::Result<Option<(u64, u64, u32)>> {
    let record = pm_core::store::flush::read_job_record(dir, job).with_context(|| {
        format!(
            "the flushed copy of job {job} in {} cannot be used: restore its record, or remove \
             {} to resume from the nodes' stores only",
            dir.display(),
            dir.join(job).display()
        )
    })?;
    Ok(record.map(|r| (r.epoch, r.step, r.ranks)))
}

fn write_secret(path: &Path, secret: &JobSecret) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the job's secret {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok(())
}

struct Driver {
    spec: JobSpec,
    job: Job,
    starter: Box<dyn AgentStarter>,
    backend: Box<dyn LaunchBackend>,
    links: Vec<Option<AgentLink>>,
    inputs: mpsc::Sender<Input>,
    run_dir: PathBuf,
    /// The current run: its number and process id.
    child: Option<(u64, u32)>,
    replies: HashMap<u64, mpsc::Sender<CtlReply>>,
    next_ctl: u64,
    console: Console,
    interrupted: Arc<AtomicBool>,
    /// SIGUSR1: stop at a checkpoint and keep the job.
    stop_asked: Arc<AtomicBool>,
}

impl Driver {
    fn run_loop(&mut self, rx: &mpsc::Receiver<Input>) -> anyhow::Result<i32> {
        let mut last_status = Instant::now();
        let mut told_interrupt = false;
        loop {
            let now = Instant::now();
            let wait = self
                .job
                .poll_timeout()
                .map_or(TICK, |t| t.saturating_duration_since(now))
                .min(TICK);
            match rx.recv_timeout(wait) {
                Ok(input) => self.input(input),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the coordinator lost its event sources")
                }
            }
            if self.interrupted.load(Ordering::Relaxed) && !told_interrupt {
                told_interrupt = true;
                self.console.clear();
                self.job.handle(Event::Interrupted, Instant::now());
            }
            if self.stop_asked.swap(false, Ordering::Relaxed) {
                self.job.handle(Event::StopRequested, Instant::now());
            }
            for (node, reason) in self.starter.poll_exited() {
                if self.links[node.index()].is_none() {
                    self.job
                        .handle(Event::LinkLost { node, reason }, Instant::now());
                }
            }
            let now = Instant::now();
            if self.job.poll_timeout().is_some_and(|t| t <= now) {
                self.job.handle_timeout(now);
            }
            if let Some(code) = self.carry_out() {
                return Ok(code);
            }
            if last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                if self.job.current_run().is_some() {
                    let line = self.job.status_line(last_status);
                    self.console.status(&line);
                }
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Connected { node, link, ready } => {
                if self.links[node.index()].is_some() {
                    tracing::warn!(node = %self.spec.nodes[node.index()].name, "a second agent for the node; refused");
                    link.close();
                    return;
                }
                self.links[node.index()] = Some(link);
                self.job.handle(Event::FromAgent { node, msg: ready }, now);
            }
            Input::Core(event) => self.job.handle(event, now),
            Input::Ctl { req, reply } => {
                self.next_ctl += 1;
                self.replies.insert(self.next_ctl, reply);
                self.job.handle(
                    Event::Ctl {
                        id: self.next_ctl,
                        req,
                    },
                    now,
                );
            }
            Input::Exited { run, status } => {
                if self.child.is_some_and(|(r, _)| r == run) {
                    self.child = None;
                }
                let code = exit_code(status);
                self.job.handle(Event::RunExited { run, code }, now);
            }
        }
    }

    /// Carries out the core's actions; the exit code once the job is over.
    fn carry_out(&mut self) -> Option<i32> {
        while let Some(action) = self.job.poll_action() {
            match action {
                Action::Send { node, msg } => {
                    if let Some(link) = &self.links[node.index()] {
                        link.send(msg);
                    }
                }
                Action::Disconnect { node } => {
                    if let Some(link) = self.links[node.index()].take() {
                        link.close();
                    }
                }
                Action::Launch { run, plan } => self.launch(run, &plan),
                Action::Signal { run, signal } => self.signal(run, signal),
                Action::Reply { id, reply } => {
                    if let Some(tx) = self.replies.remove(&id) {
                        let _ = tx.send(reply);
                    }
                }
                Action::Say(text) => {
                    self.console.say(&text);
                    // Already on stderr: a log line at info would repeat it.
                    tracing::debug!("{text}");
                }
                Action::RecordFlush { epoch, step } => self.record_flush(epoch, step),
                Action::Exit { code, delete } => {
                    if code == 0 {
                        self.remember();
                    }
                    if delete && let Some((dir, _)) = &self.spec.flush {
                        let copy = dir.join(&self.spec.job);
                        if let Err(e) = std::fs::remove_dir_all(&copy)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::error!(dir = %copy.display(), error = %e, "cannot delete the flushed copy");
                        }
                    }
                    self.shut_down(delete);
                    return Some(code);
                }
            }
        }
        None
    }

    /// Writes the flush directory's record of `epoch` on a thread of its
    /// own (a shared file system may be slow); reports
    /// [`Event::FlushRecorded`].
    fn record_flush(&mut self, epoch: u64, step: u64) {
        let Some((dir, _)) = self.spec.flush.clone() else {
            return;
        };
        let (job, ranks, tx) = (self.spec.job.clone(), self.spec.ranks, self.inputs.clone());
        let record = pm_core::store::CommitRecord { epoch, step, ranks };
        let spawned = std::thread::Builder::new()
            .name("pmrun-flush-record".into())
            .spawn(move || {
                let result = pm_core::store::flush::record_job_commit(&dir, &job, record, ranks);
                let error = result.err().map(|e| e.to_string());
                let _ = tx.send(Input::Core(Event::FlushRecorded { epoch, error }));
            });
        if let Err(e) = spawned {
            let error = Some(format!("no thread to write it: {e}"));
            self.job
                .handle(Event::FlushRecorded { epoch, error }, Instant::now());
        }
    }

    /// Starts run `run` with the backend; its end arrives as [`Input::Exited`].
    fn launch(&mut self, run: u64, plan: &RunPlan) {
        let join = |parts: Vec<String>| parts.join(":");
        let mut env = self.spec.env.clone();
        env.push(("PM_JOB".into(), self.spec.job.clone()));
        let map: Vec<String> = plan.placement.iter().map(|n| n.0.to_string()).collect();
        env.push(("PM_NODE_MAP".into(), map.join(",")));
        env.push((
            "PM_NODE_STORES".into(),
            join(
                self.spec
                    .nodes
                    .iter()
                    .map(|n| n.store.display().to_string())
                    .collect(),
            ),
        ));
        env.push((
            "PM_NODE_AGENTS".into(),
            join(
                (0..self.spec.nodes.len())
                    .map(|i| {
                        let socket = self.starter.rank_socket(NodeId::from_index(i));
                        socket.display().to_string()
                    })
                    .collect(),
            ),
        ));
        env.push((
            "PM_SECRET_FILE".into(),
            join(
                (0..self.spec.nodes.len())
                    .map(|i| {
                        let file = self.starter.rank_secret_file(NodeId::from_index(i));
                        file.display().to_string()
                    })
                    .collect(),
            ),
        ));
        env.push(("PM_RESTORE_EPOCH".into(), plan.restore_epoch.to_string()));
        env.push(("PM_FIRST_EPOCH".into(), plan.first_epoch.to_string()));
        let hosts: Vec<&crate::hosts::Host> = plan
            .placement
            .iter()
            .map(|n| &self.spec.nodes[n.index()].host)
            .collect();
        let launch = LaunchPlan::new(&hosts, self.spec.app.clone(), env);
        let started = self
            .backend
            .command(&launch)
            .map_err(|e| e.to_string())
            .and_then(|mut cmd| {
                cmd.spawn().map_err(|e| {
                    format!(
                        "cannot start {}: {e} (is it installed and on PATH?)",
                        self.backend.name()
                    )
                })
            });
        let now = Instant::now();
        let mut child = match started {
            Ok(child) => child,
            Err(reason) => {
                return self
                    .job
                    .handle(Event::RunFailedToStart { run, reason }, now);
            }
        };
        let pid = child.id();
        self.child = Some((run, pid));
        self.job.handle(Event::RunStarted { run, pid }, now);
        let inputs = self.inputs.clone();
        let watch = std::thread::Builder::new()
            .name("pmrun-run".into())
            .spawn(move || {
                if let Ok(status) = child.wait() {
                    let _ = inputs.send(Input::Exited { run, status });
                }
            });
        if let Err(e) = watch {
            tracing::error!(error = %e, "cannot watch the run's process");
        }
        let inputs = self.inputs.clone();
        let orphans = std::thread::Builder::new()
            .name("pmrun-orphans".into())
            .spawn(move || {
                super::orphan_watch::watch(run, pid, |e| {
                    let _ = inputs.send(Input::Core(e));
                })
            });
        if let Err(e) = orphans {
            tracing::warn!(error = %e, "cannot watch the run's launcher for a hang after its ranks");
        }
    }

    fn signal(&self, run: u64, signal: RunSignal) {
        let Some((current, pid)) = self.child else {
            return;
        };
        if current != run {
            return;
        }
        let sig = match signal {
            RunSignal::Checkpoint => libc::SIGUSR2,
            RunSignal::Stop => libc::SIGUSR1,
            RunSignal::Terminate => libc::SIGTERM,
            RunSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child's, which is not reaped before its exit is reported.
        unsafe { libc::kill(pid as i32, sig) };
    }

    /// A finished job's weights and steps go into the history, for the
    /// next run's first placement.
    fn remember(&mut self) {
        let (Some((path, sig)), Some(run)) = (&self.spec.history, self.job.run_record()) else {
            return;
        };
        if let Err(e) = super::history::record(path, *sig, run) {
            self.console
                .say(&format!("cannot record this run in the history: {e}"));
        }
    }

    /// Ends the job: the agents got `DeleteJob` or `Exit` from the core;
    /// wait for them, then remove pmrun's own files.
    fn shut_down(&mut self, delete: bool) {
        self.console.clear();
        if let Some((_, pid)) = self.child.take() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let status = self.job.status(Instant::now());
        let dead: Vec<NodeId> = (0..status.nodes.len())
            .filter(|&i| status.nodes[i].health == Health::Dead)
            .map(NodeId::from_index)
            .collect();
        self.starter.finish(AGENT_EXIT, delete, &dead);
        for link in self.links.iter().flatten() {
            link.close();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        if let Some(parent) = self.run_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        cgroup::remove(&self.spec.job);
    }
}
