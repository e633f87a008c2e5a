//! `pmbench sim gossip`: how fast one node's load change spreads.
//!
//! Every node gossips every round; after `--warmup` rounds (so that the
//! initial records are old news), node 0 publishes a new load, while
//! `--churn` other nodes publish new loads every round and compete for the
//! bounded windows and messages. (The news rate the cluster can carry is
//! bounded: every node forwards at most fan-out × 21 records per round, so a
//! churn that grows with N drowns any single change: in a trial run with
//! 0.1 % of 10⁵ nodes changing every round, MOSIX did not reach 50 % in 200
//! rounds and adaptive did not reach 99 % in the ~60 rounds before it was
//! stopped.) Reported per policy and cluster size:
//! rounds until 50% and 99% of the nodes know node 0's new version, and the
//! messages and bytes each node sends per round.

use super::cluster::Cluster;
use anyhow::bail;
use clap::Args as ClapArgs;
use pm_core::gossip::{FanoutPolicy, MAX_MESSAGE_BYTES};
use serde::Serialize;
use std::time::Instant;

#[derive(ClapArgs)]
pub struct Args {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100usize, 1000, 10_000, 100_000])]
    nodes: Vec<usize>,
    /// `mosix`, `adaptive` or `both`.
    #[arg(long, default_value = "both")]
    policy: String,
    /// Other nodes that publish a new load each round (background news that
    /// competes for the bounded windows and messages).
    #[arg(long, default_value_t = 10)]
    churn: usize,
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Give up after this many rounds.
    #[arg(long, default_value_t = 100)]
    max_rounds: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Run {
    nodes: usize,
    policy: &'static str,
    fanout: usize,
    rounds_to_50pct: Option<u32>,
    rounds_to_99pct: Option<u32>,
    /// 2·log2 N, the target for the adaptive policy.
    target_rounds: f64,
    messages_per_node_round: f64,
    bytes_per_node_round: f64,
    max_message_bytes: usize,
    sim_s: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    churn: usize,
    warmup: u32,
    message_bound_bytes: usize,
    runs: Vec<Run>,
}

fn policies(p: &str) -> anyhow::Result<Vec<(FanoutPolicy, &'static str)>> {
    Ok(match p {
        "mosix" => vec![(FanoutPolicy::Mosix, "mosix")],
        "adaptive" => vec![(FanoutPolicy::Adaptive, "adaptive")],
        "both" => vec![
            (FanoutPolicy::Mosix, "mosix"),
            (FanoutPolicy::Adaptive, "adaptive"),
        ],
        other => bail!("unknown policy {other:?}: use mosix, adaptive or both"),
    })
}

fn simulate(
    n: usize,
    policy: FanoutPolicy,
    name: &'static str,
    args: &Args,
) -> anyhow::Result<Run> {
    if n < 2 {
        bail!("a cluster needs at least 2 nodes");
    }
    let t = Instant::now();
    let churn = args.churn;
    let mut c = Cluster::new(n, policy, args.seed);
    for _ in 0..args.warmup {
        c.round(churn, |_, _| {})?;
    }
    c.nodes[0].publish(3.0, 8.0);
    let version = c.nodes[0].own().version;
    let mut knows = vec![false; n];
    knows[0] = true;
    let mut known = 1usize;
    let (mut r50, mut r99) = (None, None);
    c.reset_counters();
    let mut rounds = 0;
    while rounds < args.max_rounds && r99.is_none() {
        rounds += 1;
        c.round(churn, |p, rec| {
            if rec.node == 0 && rec.version == version && !knows[p as usize] {
                knows[p as usize] = true;
                known += 1;
            }
        })?;
        if r50.is_none() && known * 2 >= n {
            r50 = Some(rounds);
        }
        if known * 100 >= n * 99 {
            r99 = Some(rounds);
        }
    }
    let node_rounds = (n as u64 * u64::from(rounds)) as f64;
    Ok(Run {
        nodes: n,
        policy: name,
        fanout: policy.fanout(n),
        rounds_to_50pct: r50,
        rounds_to_99pct: r99,
        target_rounds: 2.0 * (n as f64).log2(),
        messages_per_node_round: c.messages as f64 / node_rounds,
        bytes_per_node_round: c.bytes as f64 / node_rounds,
        max_message_bytes: c.max_message_bytes,
        sim_s: t.elapsed().as_secs_f64(),
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for &n in &args.nodes {
        for (policy, name) in policies(&args.policy)? {
            eprintln!("sim gossip: {n} nodes, {name} ...");
            let run = simulate(n, policy, name, args)?;
            eprintln!(
                "  50%: {:?} rounds, 99%: {:?} rounds, {:.0} B/node/round ({:.1} s)",
                run.rounds_to_50pct, run.rounds_to_99pct, run.bytes_per_node_round, run.sim_s
            );
            runs.push(run);
        }
    }
    let report = Report {
        scenario: "sim gossip",
        churn: args.churn,
        warmup: args.warmup,
        message_bound_bytes: MAX_MESSAGE_BYTES,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:>8} {:>9} {:>6} {:>6} {:>6} {:>7} {:>9} {:>9}",
            "nodes", "policy", "fanout", "r50", "r99", "target", "msg/n/r", "B/n/r"
        );
        for r in &report.runs {
            let f = |x: Option<u32>| x.map_or("-".to_string(), |v| v.to_string());
            println!(
                "{:>8} {:>9} {:>6} {:>6} {:>6} {:>7.1} {:>9.2} {:>9.0}",
                r.nodes,
                r.policy,
                r.fanout,
                f(r.rounds_to_50pct),
                f(r.rounds_to_99pct),
                r.target_rounds,
                r.messages_per_node_round,
                r.bytes_per_node_round
            );
        }
    }
    Ok(())
}
