//! `pmbench recovery`: how long a job under `pmrun` takes to get going again
//! after one of its nodes dies, against the time a plain `mpirun` needs just
//! to start the same program.
//!
//! Runs `heat` under `pmrun --local-nodes K` (virtual nodes on this machine,
//! each a `pmd` agent with its own store), waits until a checkpoint is
//! committed, then kills one node the way a power cut would: SIGKILL to its
//! agent and to every rank on it. `pmrun` notices the missing heartbeats,
//! declares the node dead, stops the job, places the lost ranks on nodes that
//! hold their replicas and relaunches; `pmrun ctl status --json` then lists
//! the recovery with its phases:
//!
//! * `detect_s`: from the node's last heartbeat to its declaration as dead
//!   (bounded below by `--fail-after`);
//! * `stop_s`: from the declaration until the job had stopped;
//! * `place_s`: placing the ranks and waiting for the agents to apply it;
//! * `resume_s`: from the relaunch until every rank had restored its state
//!   and connected;
//! * `total_s`: all of it.
//!
//! The baseline, `plain_start_s`, is the median wall time of a plain
//! `mpirun -n N heat ... --no-pm --steps 0` (start, MPI init, set up the
//! plate, finalize): the floor under any relaunch through mpirun. `--starts`
//! of them are timed right before every killed run, so that both see the
//! machine in the same state; each run reports its own, and the top level
//! the median of all. `resume_over_plain_start` is `resume_s` /
//! `plain_start_s` (medians). `load_1m` is the 1-minute load average when
//! the node was killed: on a shared machine, a high one explains outliers.
//!
//! Every killed-and-recovered run must end with the checksum of an
//! undisturbed run (`mpirun ... --no-pm`, measured first); otherwise the
//! scenario fails. The kill is repeated `--repeats` times, each with its own
//! job id; medians and the per-run figures are reported.

use crate::pmjob::{self, Bins, Job, checksum, load_average, mpi_env, plain_heat, status};
use crate::util::{median, timed};
use anyhow::{Context, bail, ensure};
use clap::Args as ClapArgs;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct Args {
    /// MPI ranks.
    #[arg(short = 'n', long, default_value_t = 8)]
    ranks: u32,
    /// Virtual nodes on this machine (pmrun --local-nodes).
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// The node to kill.
    #[arg(long, default_value = "node2")]
    victim: String,
    /// Seconds between agent heartbeats (pmrun --heartbeat).
    #[arg(long, default_value_t = 0.2)]
    heartbeat: f64,
    /// Seconds without heartbeats after which a node is dead (pmrun --fail-after).
    #[arg(long, default_value_t = 1.0)]
    fail_after: f64,
    /// Checkpoint every this many steps (pmrun --every).
    #[arg(long, default_value_t = 10)]
    every: u64,
    /// Partner nodes holding a replica of every checkpoint (pmrun --replicas).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Plate rows.
    #[arg(long, default_value_t = 96)]
    rows: u64,
    /// Plate columns.
    #[arg(long, default_value_t = 64)]
    cols: u64,
    /// Time steps per run.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Sleep in every heat step, so the job is still running when the node dies.
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
    /// Runs with a killed node; medians are reported.
    #[arg(long, alias = "repeat", default_value_t = 3)]
    repeats: usize,
    /// Plain mpirun starts timed before every killed run (the baseline); medians are reported.
    #[arg(long, default_value_t = 5)]
    starts: usize,
    /// Store directory of the runs [default: /dev/shm/pmbench-recovery-<pid>].
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seconds a run may take before it is stopped and the scenario fails.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Under the project's test Slurm (slurm/cluster.sh, started and
    /// stopped by pmbench): `sbatch --no-kill` of pmrun, agents and ranks
    /// through srun, the victim's power cut by `kill-node`, and as the
    /// baseline a plain `srun` start inside an allocation.
    #[arg(long)]
    slurm: bool,
}

/// Where the runs happen: virtual nodes, or a test Slurm.
enum Place {
    Local,
    Slurm(Cluster),
}

/// The project's test Slurm, stopped when dropped.
struct Cluster {
    script: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    fn start(nodes: u32) -> anyhow::Result<Cluster> {
        // target/<profile>/pmbench -> the repository's slurm/cluster.sh.
        let exe = std::env::current_exe()?;
        let script = exe
            .ancestors()
            .nth(3)
            .map(|root| root.join("slurm/cluster.sh"))
            .filter(|p| p.exists())
            .context(
                "slurm/cluster.sh not found: run pmbench from the repository's target directory",
            )?;
        let dir = std::env::temp_dir().join(format!("pmbench-slurm-{}", std::process::id()));
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .env("PM_SLURM_NODES", nodes.to_string())
            .env("PM_SLURM_PORT", "19817")
            .output()
            .context("cannot run slurm/cluster.sh")?;
        let cluster = Cluster { script, dir };
        ensure!(
            out.status.success(),
            "the test Slurm did not start (make test installs slurm-wlm and munge):\n{}",
            crate::util::output_text(&out)
        );
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", self.dir.join("etc/slurm.conf"));
        cmd
    }

    /// `sbatch --wait` of `body` with `args`; its output goes to `out`.
    fn sbatch(&self, args: &[String], body: &str, out: &Path) -> anyhow::Result<Command> {
        let script = out.with_extension("sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/bash\n# Several slurmds on one machine: Open MPI over TCP on loopback.\n\
                 export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo\n{body}\n"
            ),
        )?;
        let mut cmd = self.command("sbatch");
        cmd.args(["--wait", "--quiet"])
            .arg(format!("--output={}", out.display()))
            .args(args)
            .arg(&script);
        Ok(cmd)
    }

    /// `slurm/cluster.sh kill-node` or `revive-node` (`what`) of `node`.
    fn node(&self, what: &str, node: &str) -> anyhow::Result<()> {
        let out = Command::new(&self.script)
            .args([what, node])
            .arg(&self.dir)
            .output()?;
        ensure!(
            out.status.success(),
            "{what} {node}: {}",
            crate::util::output_text(&out)
        );
        Ok(())
    }

    /// Seconds of `starts` plain `srun --mpi=pmix` starts of heat --steps 0
    /// inside one allocation of `nodes` nodes.
    fn srun_starts(&self, args: &Args, heat: &Path, starts: usize) -> anyhow::Result<Vec<f64>> {
        let out = self.dir.join(format!("starts-{}.out", std::process::id()));
        let body = format!(
            "for i in $(seq {starts}); do a=$(date +%s.%N); srun --mpi=pmix -n {} {} {} --no-pm \
             >/dev/null || exit 1; b=$(date +%s.%N); awk -v a=$a -v b=$b 'BEGIN {{ print \"start\", b - a }}'; done",
            args.ranks,
            heat.display(),
            heat_args(args, 0).join(" ")
        );
        let status = mpi_env(&mut self.sbatch(
            &[
                format!("-N{}", args.nodes),
                format!("-n{}", args.ranks),
                "-O".into(),
            ],
            &body,
            &out,
        )?)
        .status()?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        ensure!(status.success(), "the plain srun starts failed:\n{text}");
        let times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("start "))
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        ensure!(
            times.len() == starts,
            "the plain srun starts printed:\n{text}"
        );
        Ok(times)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Serialize, Clone)]
struct Run {
    job: String,
    /// Median of the plain mpirun starts timed just before this run.
    plain_start_s: f64,
    resume_over_plain_start: f64,
    load_1m: Option<f64>,
    /// The committed checkpoint when the node was killed.
    committed_at_kill: Value,
    #[serde(flatten)]
    timings: Timings,
    /// The epoch and step the job resumed from.
    epoch: u64,
    step: u64,
    /// [rank, from, to] for every rank that moved.
    moved: Value,
    /// Wall time of the whole pmrun, start to exit.
    run_s: f64,
    checksum: String,
}

/// The parts of one recovery (or their medians).
#[derive(Serialize, Clone, Copy)]
struct Timings {
    detect_s: f64,
    stop_s: f64,
    place_s: f64,
    resume_s: f64,
    total_s: f64,
    /// Seen from outside: SIGKILL until `ctl status` listed the recovery
    /// (includes up to one status poll).
    kill_to_reported_s: f64,
}

impl Timings {
    fn median(runs: &[Timings]) -> Timings {
        let med = |f: fn(&Timings) -> f64| median(runs.iter().map(f).collect());
        Timings {
            detect_s: med(|t| t.detect_s),
            stop_s: med(|t| t.stop_s),
            place_s: med(|t| t.place_s),
            resume_s: med(|t| t.resume_s),
            total_s: med(|t| t.total_s),
            kill_to_reported_s: med(|t| t.kill_to_reported_s),
        }
    }
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    /// How agents and ranks were started: `mpirun` (virtual nodes) or `srun` (test Slurm).
    launcher: &'static str,
    ranks: u32,
    nodes: u32,
    victim: String,
    heartbeat_s: f64,
    fail_after_s: f64,
    every: u64,
    replicas: usize,
    rows: u64,
    cols: u64,
    steps: u64,
    pause_ms: u64,
    repeats: usize,
    reference_checksum: String,
    checksums_match: bool,
    plain_start_s: f64,
    plain_start_runs_s: Vec<f64>,
    #[serde(flatten)]
    timings: Timings,
    resume_over_plain_start: f64,
    runs: Vec<Run>,
}

fn heat_args(args: &Args, steps: u64) -> Vec<String> {
    pmjob::heat_args(args.rows, args.cols, steps, args.pause_ms)
}

fn f(v: &Value, key: &str) -> anyhow::Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("recovery entry without {key}: {v}"))
}

/// One run: start the job, kill `--victim` after the first commit, wait for
/// the recovery, let the job finish and check its checksum.
#[allow(clippy::too_many_arguments)]
fn killed_run(
    args: &Args,
    bins: &Bins,
    place: &Place,
    store: &Path,
    job: &str,
    reference: &str,
    plain_start_s: f64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Run> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let started = Instant::now();
    let pmrun_args: Vec<String> = [
        "-n".to_string(),
        args.ranks.to_string(),
        "--store".into(),
        store.display().to_string(),
        "--job".into(),
        job.into(),
        "--every".into(),
        args.every.to_string(),
        "--replicas".into(),
        args.replicas.to_string(),
        "--heartbeat".into(),
        args.heartbeat.to_string(),
        "--fail-after".into(),
        args.fail_after.to_string(),
    ]
    .into();
    let victim = victim(args, place);
    let mut output_file = None;
    let mut cmd = match place {
        Place::Local => {
            let mut cmd = Command::new(&bins.pmrun);
            cmd.args(&pmrun_args)
                .args(["--local-nodes", &args.nodes.to_string()])
                .arg(&bins.heat)
                .args(heat_args(args, args.steps));
            cmd
        }
        Place::Slurm(cluster) => {
            let out = cluster.dir.join(format!("{job}.out"));
            let body = format!(
                "exec {} {} {} {}",
                bins.pmrun.display(),
                pmrun_args.join(" "),
                bins.heat.display(),
                heat_args(args, args.steps).join(" ")
            );
            let cmd = cluster.sbatch(
                &[
                    "--no-kill".into(),
                    format!("-N{}", args.nodes),
                    format!("-n{}", args.ranks),
                ],
                &body,
                &out,
            )?;
            output_file = Some(out);
            cmd
        }
    };
    let mut run = Job::spawn(mpi_env(&mut cmd))?;

    // Wait for a committed checkpoint and the victim's process ids.
    let (committed, pids) = loop {
        if run.child.try_wait()?.is_some() {
            let (_, text) = run.finish(deadline)?;
            bail!("pmrun ended before a checkpoint was committed:\n{text}");
        }
        if Instant::now() > deadline {
            let text = run.output_after_stop();
            bail!("no checkpoint committed within --timeout:\n{text}");
        }
        if let Some(s) = status(&bins.pmrun, store, job)
            && !s["committed"].is_null()
            && s["running"] == Value::Bool(true)
        {
            let node = s["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|n| n["name"] == victim.as_str()))
                .with_context(|| format!("the job has no node {victim:?}"))?;
            let ranks = node["ranks"].as_array().map_or(0, Vec::len);
            let rank_pids: Vec<i32> = node["rank_pids"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p.as_i64())
                        .map(|p| p as i32)
                        .collect()
                })
                .unwrap_or_default();
            ensure!(
                ranks > 0,
                "{victim} runs no ranks: nothing to recover (choose another --victim)"
            );
            if rank_pids.len() == ranks
                && let Some(agent) = node["agent_pid"].as_i64()
            {
                let mut pids = vec![agent as i32];
                pids.extend(rank_pids);
                break (s["committed"].clone(), pids);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    progress(&format!(
        "  committed {committed}; killing {victim} (agent and ranks: pids {pids:?})"
    ));
    let load_1m = load_average();
    let killed = Instant::now();
    match place {
        Place::Local => {
            for &pid in &pids {
                // SAFETY: plain kill(2); the pids are the victim's agent and
                // ranks, which pmrun reported a moment ago.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Its slurmd and slurmstepds too: a power cut.
        Place::Slurm(cluster) => cluster.node("kill-node", &victim)?,
    }

    // Wait for the recovery to be listed.
    let (recovery, kill_to_reported_s) = loop {
        if run.child.try_wait()?.is_some() {
            let (_, text) = run.finish(deadline)?;
            bail!("pmrun ended without reporting the recovery of {victim}:\n{text}");
        }
        if Instant::now() > deadline {
            let text = run.output_after_stop();
            bail!("the recovery of {victim} was not reported within --timeout:\n{text}");
        }
        if let Some(s) = status(&bins.pmrun, store, job)
            && let Some(r) = s["recoveries"].as_array().and_then(|rs| {
                rs.iter().find(|r| {
                    r["kind"] == "node failure"
                        && r["nodes"]
                            .as_array()
                            .is_some_and(|n| n.iter().any(|n| n == victim.as_str()))
                })
            })
        {
            break (r.clone(), killed.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    progress(&format!(
        "  recovered: detect {:.3} s, stop {:.3} s, place {:.3} s, resume {:.3} s, total {:.3} s; waiting for the job to finish",
        f(&recovery, "detect_s")?,
        f(&recovery, "stop_s")?,
        f(&recovery, "place_s")?,
        f(&recovery, "resume_s")?,
        f(&recovery, "total_s")?,
    ));

    let (ok, mut text) = run.finish(deadline)?;
    if let Place::Slurm(cluster) = place {
        // Power back, for the next run's allocation.
        cluster.node("revive-node", &victim)?;
    }
    let run_s = started.elapsed().as_secs_f64();
    if let Some(out) = &output_file {
        text = std::fs::read_to_string(out).unwrap_or_default();
    }
    ensure!(ok, "pmrun failed after the recovery:\n{text}");
    ensure!(
        text.contains("heat: resumed from step"),
        "the job never resumed from a checkpoint:\n{text}"
    );
    let sum = checksum(&text).with_context(|| format!("heat printed no checksum:\n{text}"))?;
    if sum != reference {
        bail!(
            "CHECKSUM MISMATCH in job {job}: the recovered run ended with {sum}, the undisturbed \
             run with {reference}\n{text}"
        );
    }
    progress(&format!("  checksum {sum} matches the undisturbed run"));
    let resume_s = f(&recovery, "resume_s")?;
    Ok(Run {
        job: job.into(),
        plain_start_s,
        resume_over_plain_start: resume_s / plain_start_s,
        load_1m,
        committed_at_kill: committed,
        timings: Timings {
            detect_s: f(&recovery, "detect_s")?,
            stop_s: f(&recovery, "stop_s")?,
            place_s: f(&recovery, "place_s")?,
            resume_s,
            total_s: f(&recovery, "total_s")?,
            kill_to_reported_s,
        },
        epoch: recovery["epoch"].as_u64().unwrap_or(0),
        step: recovery["step"].as_u64().unwrap_or(0),
        moved: recovery["moved"].clone(),
        run_s,
        checksum: sum,
    })
}

/// The node to kill, as the job names it (Slurm's test nodes are n1, n2, …).
fn victim(args: &Args, place: &Place) -> String {
    match place {
        Place::Local => args.victim.clone(),
        Place::Slurm(_) => args.victim.replace("node", "n"),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        args.repeats > 0 && args.starts > 0,
        "--repeats and --starts must be at least 1"
    );
    ensure!(
        args.fail_after > args.heartbeat && args.heartbeat > 0.0,
        "--fail-after must be longer than --heartbeat, which must be positive"
    );
    let bins = Bins::find()?;
    let store = args.store.clone().unwrap_or_else(|| {
        PathBuf::from(format!("/dev/shm/pmbench-recovery-{}", std::process::id()))
    });
    // Shown even with --json: the scenario runs for about a minute.
    let progress = crate::util::progress("recovery", false);

    progress(&format!(
        "undisturbed reference: mpirun -n {} heat {} --no-pm",
        args.ranks,
        heat_args(args, args.steps).join(" ")
    ));
    let reference = checksum(&plain_heat(
        args.ranks,
        &bins.heat,
        &heat_args(args, args.steps),
    )?)
    .context("the reference run printed no checksum")?;
    progress(&format!("  checksum {reference}"));

    let place = if args.slurm {
        progress(&format!(
            "starting a test Slurm of {} nodes (slurm/cluster.sh)",
            args.nodes
        ));
        Place::Slurm(Cluster::start(args.nodes)?)
    } else {
        Place::Local
    };
    let launcher = if args.slurm { "srun" } else { "mpirun" };
    let mut starts = Vec::new();
    let mut runs = Vec::new();
    let result = (|| {
        for i in 0..args.repeats {
            progress(&format!(
                "relaunch floor: {} plain starts of {launcher} -n {} heat --steps 0 --no-pm",
                args.starts, args.ranks
            ));
            let mut these = Vec::new();
            match &place {
                Place::Local => {
                    for _ in 0..args.starts {
                        these.push(timed(|| {
                            plain_heat(args.ranks, &bins.heat, &heat_args(args, 0)).map(drop)
                        })?);
                    }
                }
                Place::Slurm(cluster) => {
                    these = cluster.srun_starts(args, &bins.heat, args.starts)?
                }
            }
            starts.extend(&these);
            let plain = median(these);
            progress(&format!("  median {plain:.3} s"));
            let job = format!("pmbench-recovery-{}-{}", std::process::id(), i + 1);
            progress(&format!(
                "run {}/{}: pmrun -n {} on {} {} nodes --every {} --heartbeat {} --fail-after {} heat ..., then kill {}",
                i + 1,
                args.repeats,
                args.ranks,
                args.nodes,
                if args.slurm { "Slurm" } else { "virtual" },
                args.every,
                args.heartbeat,
                args.fail_after,
                args.victim
            ));
            runs.push(killed_run(
                args, &bins, &place, &store, &job, &reference, plain, &progress,
            )?);
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&store);
    result?;

    let plain_start_s = median(starts.clone());
    let timings = Timings::median(&runs.iter().map(|r| r.timings).collect::<Vec<_>>());
    let report = Report {
        scenario: "recovery",
        launcher,
        ranks: args.ranks,
        nodes: args.nodes,
        victim: args.victim.clone(),
        heartbeat_s: args.heartbeat,
        fail_after_s: args.fail_after,
        every: args.every,
        replicas: args.replicas,
        rows: args.rows,
        cols: args.cols,
        steps: args.steps,
        pause_ms: args.pause_ms,
        repeats: args.repeats,
        reference_checksum: reference,
        checksums_match: true,
        plain_start_s,
        plain_start_runs_s: starts,
        timings,
        resume_over_plain_start: timings.resume_s / plain_start_s,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "heat {}x{} on {} ranks over {} virtual nodes; {} killed after a commit, {} runs (medians)",
            args.rows, args.cols, args.ranks, args.nodes, args.victim, args.repeats
        );
        println!(
            "detect    {:8.3} s  (heartbeat {} s, fail after {} s)",
            report.timings.detect_s, args.heartbeat, args.fail_after
        );
        println!("stop      {:8.3} s", report.timings.stop_s);
        println!("place     {:8.3} s", report.timings.place_s);
        println!(
            "resume    {:8.3} s  = {:.2}x a plain mpirun start ({plain_start_s:.3} s)",
            report.timings.resume_s, report.resume_over_plain_start
        );
        println!(
            "total     {:8.3} s  (kill to reported, seen from outside: {:.3} s)",
            report.timings.total_s, report.timings.kill_to_reported_s
        );
        println!(
            "every run ended with the undisturbed checksum {}",
            report.reference_checksum
        );
    }
    Ok(())
}
