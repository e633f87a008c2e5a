//! `pmbench sim job`: the coordinator core of `pmrun` (`coord::job::Job`)
//! driven by a simulated cluster (`coord::job::sim`) at sizes no test
//! machine has: agents heartbeat, ranks checkpoint and replicate, 1 % of
//! the nodes crash at once, a node is drained, and the job runs to its end,
//! in one process on a fake clock.
//!
//! Reported: how many calls the core handles per second of its own CPU
//! time, the messages it exchanges per commit and per recovery, the real
//! time it takes to decide a recovery (the call that moves the lost ranks
//! and sends the new placement to every node), and its heap.

use super::Timer;
use anyhow::bail;
use clap::Args as ClapArgs;
use pm_core::proto::{CtlRequest, FromAgent, Inventory, NodeId};
use pm_launcher::coord::job::sim::{Failure, SimCluster, SimConfig};
use pm_launcher::coord::job::{Action, Config, Event, Job, NodeConfig};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    #[arg(long, default_value_t = 100_000)]
    ranks: u32,
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Share of the nodes that fail at once.
    #[arg(long, default_value_t = 0.01)]
    fail: f64,
    /// How they fail: `crash` (links close at once), `hang` (only silence
    /// tells, after --fail-after) or `power-off` (ranks gone, links open).
    #[arg(long, default_value = "crash", value_parser = ["crash", "hang", "power-off"])]
    failure: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Default)]
struct Phase {
    /// Simulated seconds.
    sim_s: f64,
    messages_in: u64,
    messages_out: u64,
}

#[derive(Serialize)]
struct Report {
    nodes: usize,
    ranks: u32,
    replicas: usize,
    failed_nodes: usize,
    failure: String,
    exit_code: Option<i32>,
    /// Calls into the core per second of its CPU time (events and timeouts).
    decisions_per_s: f64,
    core_calls: u64,
    core_cpu_s: f64,
    /// Messages into / out of the coordinator per commit, heartbeats aside.
    messages_in_per_commit: f64,
    messages_out_per_commit: f64,
    /// Heartbeats per second of simulated time (one per node and second).
    heartbeats_per_s: f64,
    /// Messages of the crash's recovery, from the failure until every rank
    /// resumed.
    recovery: Phase,
    /// Real time of the call that decided the recovery: moved the lost
    /// ranks and placed the job on every live node.
    recovery_decide_s: f64,
    /// Simulated time of the recovery (detect + stop + place + resume).
    recovery_total_s: f64,
    ranks_moved: usize,
    drain: Phase,
    /// Heap of one coordinator with the job placed, one epoch committed and
    /// one in flight.
    coordinator_bytes: usize,
    placed_on_dead: u64,
    placed_off_holders: u64,
    sim_wall_s: f64,
}

fn config(args: &Args) -> SimConfig {
    SimConfig {
        nodes: args.nodes,
        spares: 0,
        ranks: args.ranks,
        replicas: args.replicas,
        heartbeat: Duration::from_secs(1),
        fail_after: Duration::from_secs(5),
        latency: Duration::from_micros(500),
        start_delay: Duration::from_secs(2),
        checkpoint_every: Duration::from_secs(10),
        replicate_delay: Duration::from_secs(1),
        abort_delay: Duration::from_millis(500),
        steps_per_checkpoint: 10,
        steps: 150,
        max_restarts: 3,
        ..SimConfig::small(args.nodes, args.ranks, args.replicas)
    }
}

/// Runs `sim` until `done` holds; the phase's messages.
fn phase(sim: &mut SimCluster, done: impl Fn(&SimCluster) -> bool) -> anyhow::Result<Phase> {
    let (t0, in0, out0) = (sim.now, sim.stats.messages_in, sim.job.stats.messages_out);
    let (hb0,) = (sim.stats.heartbeats,);
    let mut left = 4000;
    while !done(sim) {
        if sim.exit.is_some() || left == 0 {
            bail!(
                "the simulated job ended or stalled before the phase did:\n{}",
                sim.said.join("\n")
            );
        }
        sim.advance(Duration::from_millis(250));
        left -= 1;
    }
    Ok(Phase {
        sim_s: sim.now.duration_since(t0).as_secs_f64(),
        messages_in: sim.stats.messages_in - in0 - (sim.stats.heartbeats - hb0),
        messages_out: sim.job.stats.messages_out - out0,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.nodes < 2 || args.ranks == 0 || args.replicas >= args.nodes {
        bail!("need at least 2 nodes, 1 rank, and fewer replicas than nodes");
    }
    let coordinator_bytes = coordinator_heap(args);
    let wall = Instant::now();
    let mut sim = SimCluster::new(config(args));
    // Steady state: commits of an undisturbed run.
    let commits = |s: &SimCluster| s.job.stats.commits;
    phase(&mut sim, |s| commits(s) >= 1)?;
    let (c0, hb0, t0) = (commits(&sim), sim.stats.heartbeats, sim.now);
    let steady = phase(&mut sim, |s| commits(s) >= c0 + 3)?;
    let per_commit = (commits(&sim) - c0) as f64;
    let heartbeats_per_s =
        (sim.stats.heartbeats - hb0) as f64 / sim.now.duration_since(t0).as_secs_f64();

    let failure = match args.failure.as_str() {
        "hang" => Failure::Hang,
        "power-off" => Failure::PowerOff,
        _ => Failure::Crash,
    };
    let failed = ((args.nodes as f64 * args.fail).round() as usize).clamp(1, args.nodes - 1);
    // Spread over the cluster, as independent failures would be.
    let stride = args.nodes / failed;
    for k in 0..failed {
        sim.fail(NodeId::from_index(k * stride), failure, Duration::ZERO);
    }
    let recoveries = |s: &SimCluster| s.job.recoveries().len();
    let recovery = phase(&mut sim, |s| recoveries(s) >= 1)?;
    let record = sim.job.recoveries()[0].clone();

    let victim = (0..args.nodes)
        .map(NodeId::from_index)
        .find(|&n| sim.job.state().node(n).usable())
        .expect("live nodes are left");
    let node = sim.job.config().nodes[victim.index()].name.clone();
    sim.ctl(CtlRequest::Drain { node }, Duration::ZERO);
    let drain = phase(&mut sim, |s| recoveries(s) >= 2)?;
    let exit = sim.run_until_done(Duration::from_secs(3600));
    let report = Report {
        nodes: args.nodes,
        ranks: args.ranks,
        replicas: args.replicas,
        failed_nodes: failed,
        failure: args.failure.clone(),
        exit_code: exit,
        decisions_per_s: sim.stats.core_calls as f64 / sim.stats.core_time.as_secs_f64(),
        core_calls: sim.stats.core_calls,
        core_cpu_s: sim.stats.core_time.as_secs_f64(),
        messages_in_per_commit: steady.messages_in as f64 / per_commit,
        messages_out_per_commit: steady.messages_out as f64 / per_commit,
        heartbeats_per_s,
        recovery_decide_s: sim
            .stats
            .recovery_decisions
            .iter()
            .max()
            .map_or(0.0, Duration::as_secs_f64),
        recovery_total_s: record.total_s,
        ranks_moved: record.moved.len(),
        recovery,
        drain,
        coordinator_bytes,
        placed_on_dead: sim.stats.placed_on_dead,
        placed_off_holders: sim.stats.placed_off_holders,
        sim_wall_s: wall.elapsed().as_secs_f64(),
    };
    if exit != Some(0) {
        bail!(
            "the simulated job ended with {exit:?}:\n{}",
            sim.said.join("\n")
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "coordinator core: {} nodes, {} ranks, R={}",
            report.nodes, report.ranks, report.replicas
        );
        println!(
            "  {:.0} calls/s of core CPU ({} calls in {:.2} s)",
            report.decisions_per_s, report.core_calls, report.core_cpu_s
        );
        println!(
            "  per commit: {:.0} messages in, {:.0} out; {:.0} heartbeats/s",
            report.messages_in_per_commit, report.messages_out_per_commit, report.heartbeats_per_s
        );
        println!(
            "  {} nodes failed ({}): decided in {:.1} ms, {} ranks moved, {:.1} s simulated, {} messages in, {} out",
            report.failed_nodes,
            report.failure,
            report.recovery_decide_s * 1e3,
            report.ranks_moved,
            report.recovery_total_s,
            report.recovery.messages_in,
            report.recovery.messages_out
        );
        println!(
            "  drain: {} messages in, {} out; coordinator heap {:.1} MB; wall {:.1} s",
            report.drain.messages_in,
            report.drain.messages_out,
            report.coordinator_bytes as f64 / 1e6,
            report.sim_wall_s
        );
    }
    Ok(())
}

/// The live heap of one coordinator with the job placed, epoch 1 committed
/// and epoch 2 in flight (every rank published, no replica yet).
fn coordinator_heap(args: &Args) -> usize {
    let timer = Timer::start();
    let before = crate::heap::live_bytes();
    let now = Instant::now();
    let nodes = (0..args.nodes)
        .map(|i| NodeConfig {
            name: format!("node{}", i + 1),
            slots: 1,
            spare: false,
            addr: String::new(),
            store: String::new(),
            log: None,
            cpus: 1.0,
            memory_bytes: u64::MAX,
        })
        .collect();
    let mut job = Job::new(
        Config {
            job: "heap".into(),
            ranks: args.ranks,
            nodes,
            replicas: args.replicas,
            fail_after: Duration::from_secs(5),
            keep: false,
            max_restarts: 0,
            verbose: false,
            store: String::new(),
            asynchronous: false,
            balance: Default::default(),
            placement: None,
            launcher_lingers: false,
            slurm: false,
            flush: None,
        },
        now,
    )
    .expect("nodes to run on");
    let all: Vec<NodeId> = (0..args.nodes).map(NodeId::from_index).collect();
    let say = |job: &mut Job, node: NodeId, msg: FromAgent| {
        job.handle(Event::FromAgent { node, msg }, now);
        while let Some(a) = job.poll_action() {
            drop::<Action>(a);
        }
    };
    for &n in &all {
        let ready = FromAgent::Ready {
            control: String::new(),
            transport: String::new(),
            provider: "tcp".into(),
            pid: 0,
        };
        say(&mut job, n, ready);
    }
    for &n in &all {
        say(&mut job, n, FromAgent::Inventory(Inventory::default()));
    }
    for &n in &all {
        say(&mut job, n, FromAgent::PlacementApplied { generation: 1 });
    }
    for epoch in 1..=2 {
        for r in 0..args.ranks {
            let home = job.state().placement[r as usize];
            let published = FromAgent::Published {
                rank: r,
                epoch,
                step: epoch * 10,
                state_bytes: 1,
                written_bytes: 1,
            };
            say(&mut job, home, published);
            if epoch == 1 {
                for p in job.state().partners[r as usize].clone() {
                    let stored = FromAgent::ReplicaStored {
                        rank: r,
                        epoch,
                        holder: p,
                    };
                    say(&mut job, home, stored);
                }
            }
        }
    }
    assert!(job.state().committed.is_some(), "epoch 1 commits");
    let bytes = crate::heap::live_bytes().saturating_sub(before);
    let _ = timer;
    drop(job);
    bytes
}
