//! `pmbench sim balance`: placement and rebalancing of a skewed job on a
//! heterogeneous cluster, against baselines in the same run.
//!
//! Nodes have 8, 16, 32 or 64 cores (memory 4 GiB per core, one I/O slot per
//! 8 cores). Rank weights are Zipf-like (`1/k^s`, `k` uniform in
//! `1..=categories`); a fraction of ranks is I/O-bound; state sizes are
//! 64 MiB to 1 GiB.
//!
//! * `place`: initial placement from known weights (as from the history).
//! * Then the job starts as a first run would, without history: ranks laid
//!   out by core count (as `mpirun` fills slots). Phases follow, each applied
//!   to the map every policy reached in the phase before:
//!   `measured` (the weights become known), `slowdown` (1% of the nodes get
//!   half their availability), `failure` (0.1% die), `drain` (0.1% drain).
//! * Policies: `none` (only forced evacuations), `count` (MOSIX: every rank
//!   weighs 1), `greedy` (full reassignment from scratch), `pmrun` (the
//!   rebalancer with its justification).
//! * `gossip_knowledge`: at the slowdown, pmrun's planner knows the new
//!   capacities only through gossip (what node 0 learned in
//!   0, ⌈log2 N⌉ and 2⌈log2 N⌉ rounds); the step time reached vs. perfect
//!   knowledge.

use super::Timer;
use super::cluster::Cluster;
use anyhow::Context;
use clap::Args as ClapArgs;
use pm_core::balance::{
    self, BalanceConfig, MoveCostModel, NodeId, NodeInfo, NodeState, RankClass, RankInfo, Verdict,
};
use pm_core::gossip::FanoutPolicy;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    ranks: usize,
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// Zipf exponent of the rank weights.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Distinct weight levels (the heaviest rank weighs `categories^s` times the lightest).
    #[arg(long, default_value_t = 100)]
    categories: u32,
    /// Fraction of I/O-bound ranks.
    #[arg(long, default_value_t = 0.1)]
    io_fraction: f64,
    /// Optional moves per balancing round [default: 10% of the ranks].
    #[arg(long)]
    max_moves: Option<usize>,
    /// The rebalancer's noise margin (`BalanceConfig::min_improvement`).
    #[arg(long, default_value_t = BalanceConfig::default().min_improvement)]
    min_improvement: f64,
    /// Steps the job still has to run (for the justification).
    #[arg(long, default_value_t = 100_000)]
    remaining_steps: u64,
    /// Balancing rounds per phase (each bounded by `--max-moves`; they stop
    /// early once a round's moves are not justified).
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Gossip rounds before the planner decides [default: 0, ceil(log2 N) and twice that].
    #[arg(long)]
    gossip_rounds: Option<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Outcome {
    policy: &'static str,
    plan_s: f64,
    /// CPU time of the planning thread (what "on one core" means on a shared machine).
    plan_cpu_s: f64,
    step: f64,
    step_over_lower_bound: f64,
    moves: usize,
    verdict: Option<String>,
}

#[derive(Serialize)]
struct Phase {
    event: &'static str,
    lower_bound: f64,
    policies: Vec<Outcome>,
}

#[derive(Serialize)]
struct Knowledge {
    gossip_rounds: u32,
    changed_nodes: usize,
    changes_known_to_planner: usize,
    step_gossip: f64,
    step_perfect: f64,
    ratio: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    ranks: usize,
    nodes: usize,
    zipf_s: f64,
    categories: u32,
    io_fraction: f64,
    max_moves: usize,
    place: Outcome,
    phases: Vec<Phase>,
    /// One entry per number of gossip rounds before the decision.
    gossip_knowledge: Vec<Knowledge>,
}

const POLICIES: [&str; 4] = ["none", "count", "greedy", "pmrun"];

fn cluster(args: &Args, rng: &mut SmallRng) -> (Vec<RankInfo>, Vec<NodeInfo>) {
    let nodes: Vec<NodeInfo> = (0..args.nodes)
        .map(|_| {
            let cores = [8u32, 16, 32, 64][rng.random_range(0..4)];
            NodeInfo {
                capacity: f64::from(cores),
                state: NodeState::Up,
                memory_bytes: u64::from(cores) << 32,
                io_slots: (cores / 8).max(1),
            }
        })
        .collect();
    let ranks = (0..args.ranks)
        .map(|_| {
            let k = rng.random_range(1..=args.categories);
            let state = rng.random_range(64u64 << 20..1 << 30);
            RankInfo {
                weight: 1.0 / f64::from(k).powf(args.zipf_s),
                confidence: 0.9,
                state_bytes: state,
                dirty_bytes: state / 10,
                needs_replica: false,
                class: if rng.random_bool(args.io_fraction) {
                    RankClass::Io
                } else {
                    RankClass::Cpu
                },
                node: None,
                replicas: Vec::new(),
                last_moved_round: None,
                left_node: None,
            }
        })
        .collect();
    (ranks, nodes)
}

/// What `mpirun` does without weights: fill nodes in order, ranks in
/// proportion to cores (I/O slots and memory unchecked, as mpirun would).
fn by_slots(ranks: usize, nodes: &[NodeInfo]) -> Vec<NodeId> {
    let total: f64 = nodes.iter().map(|n| n.capacity).sum();
    let mut map = Vec::with_capacity(ranks);
    let mut acc = 0.0;
    for (j, n) in nodes.iter().enumerate() {
        acc += n.capacity;
        let upto = ((acc / total) * ranks as f64).round() as usize;
        while map.len() < upto.min(ranks) {
            map.push(j as NodeId);
        }
    }
    map.resize(ranks, nodes.len() as NodeId - 1);
    map
}

/// Each rank's replica on the next node (a simple partner ring).
fn with_map(ranks: &[RankInfo], map: &[NodeId], n: usize) -> Vec<RankInfo> {
    ranks
        .iter()
        .zip(map)
        .map(|(r, &m)| RankInfo {
            node: Some(m),
            replicas: vec![(m + 1) % n as NodeId],
            ..r.clone()
        })
        .collect()
}

fn outcome(
    policy: &'static str,
    (plan_s, plan_cpu_s): (f64, f64),
    map: &[NodeId],
    ranks: &[RankInfo],
    nodes: &[NodeInfo],
    moves: usize,
    verdict: Option<Verdict>,
) -> Outcome {
    let step = balance::step_time(ranks.iter().map(|r| r.weight), map, nodes);
    Outcome {
        policy,
        plan_s,
        plan_cpu_s,
        step,
        step_over_lower_bound: step / balance::lower_bound(ranks, nodes),
        moves,
        verdict: verdict.map(|v| format!("{v:?}")),
    }
}

struct Step {
    map: Vec<NodeId>,
    plan_s: (f64, f64),
    moves: usize,
    verdict: Option<Verdict>,
}

/// One policy's decision from `map`: the new map.
fn decide(
    policy: &str,
    ranks: &[RankInfo],
    nodes: &[NodeInfo],
    map: &[NodeId],
    cfg: &BalanceConfig,
    args: &Args,
    phase: u64,
) -> anyhow::Result<Step> {
    let t = Timer::start();
    let placed = with_map(ranks, map, nodes.len());
    let cost = MoveCostModel::default();
    let (new_map, verdict) = match policy {
        "greedy" => (balance::place(ranks, nodes)?, None),
        "none" | "count" | "pmrun" => {
            let mut input = placed;
            let mut cfg = *cfg;
            match policy {
                "none" => cfg.max_moves = 0,
                "count" => input.iter_mut().for_each(|r| r.weight = 1.0),
                _ => {}
            }
            let remaining = if policy == "count" {
                u64::MAX / 4
            } else {
                args.remaining_steps
            };
            // Balancing rounds within the phase, while they are justified.
            let mut verdict = None;
            for r in 0..args.rounds.max(1) {
                let round = phase * 100 + r;
                let plan = balance::rebalance(&input, nodes, &cost, remaining, round, &cfg)?;
                for mv in plan.to_execute() {
                    let rank = &mut input[mv.rank as usize];
                    rank.left_node = rank.node;
                    rank.node = Some(mv.to);
                    rank.last_moved_round = Some(round);
                }
                verdict = Some(plan.verdict);
                if plan.verdict != Verdict::Execute {
                    break;
                }
            }
            let m = input.iter().map(|r| r.node.expect("placed")).collect();
            (m, verdict)
        }
        other => anyhow::bail!("unknown policy {other}"),
    };
    let plan_s = t.elapsed();
    let moves = new_map.iter().zip(map).filter(|(a, b)| a != b).count();
    Ok(Step {
        map: new_map,
        plan_s,
        moves,
        verdict,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.nodes >= 2 && args.ranks >= 1,
        "need at least 2 nodes and 1 rank"
    );
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let (ranks, mut nodes) = cluster(args, &mut rng);
    let cfg = BalanceConfig {
        max_moves: args.max_moves.unwrap_or(args.ranks / 10).max(1),
        ..BalanceConfig::default()
    };
    eprintln!("sim balance: {} ranks on {} nodes", args.ranks, args.nodes);

    let t = Timer::start();
    let initial = balance::place(&ranks, &nodes).context("initial placement")?;
    let place = outcome(
        "place",
        t.elapsed(),
        &initial,
        &ranks,
        &nodes,
        args.ranks,
        None,
    );
    eprintln!(
        "  initial placement: {:.3} s ({:.3} s CPU), step/lower bound {:.4}",
        place.plan_s, place.plan_cpu_s, place.step_over_lower_bound
    );

    let start = by_slots(args.ranks, &nodes);
    let mut maps: Vec<Vec<NodeId>> = vec![start; POLICIES.len()];
    let mut phases = Vec::new();
    let mut knowledge = None;
    let n = args.nodes;
    let mut victims: Vec<usize> = (0..n).collect();
    victims.shuffle(&mut rng);
    let (slow, rest) = victims.split_at((n / 100).max(1));
    let (dead, rest) = rest.split_at((n / 1000).max(1));
    let drain = &rest[..(n / 1000).max(1)];
    for (round, event) in ["measured", "slowdown", "failure", "drain"]
        .into_iter()
        .enumerate()
    {
        let before = nodes.clone();
        match event {
            "slowdown" => slow.iter().for_each(|&j| nodes[j].capacity *= 0.5),
            "failure" => dead.iter().for_each(|&j| nodes[j].state = NodeState::Dead),
            "drain" => drain
                .iter()
                .for_each(|&j| nodes[j].state = NodeState::Draining),
            _ => {}
        }
        if event == "slowdown" {
            knowledge = Some(gossip_knowledge(
                args,
                &ranks,
                &before,
                &nodes,
                slow,
                &maps[3],
                &cfg,
                round as u64,
            )?);
        }
        let mut outcomes = Vec::new();
        for (p, &policy) in POLICIES.iter().enumerate() {
            let step = decide(policy, &ranks, &nodes, &maps[p], &cfg, args, round as u64)?;
            let o = outcome(
                policy,
                step.plan_s,
                &step.map,
                &ranks,
                &nodes,
                step.moves,
                step.verdict,
            );
            eprintln!(
                "  {event:>9} {policy:>7}: step/lb {:.4}, {} moves, {:.3} s",
                o.step_over_lower_bound, o.moves, o.plan_s
            );
            outcomes.push(o);
            maps[p] = step.map;
        }
        phases.push(Phase {
            event,
            lower_bound: balance::lower_bound(&ranks, &nodes),
            policies: outcomes,
        });
    }
    let report = Report {
        scenario: "sim balance",
        ranks: args.ranks,
        nodes: args.nodes,
        zipf_s: args.zipf_s,
        categories: args.categories,
        io_fraction: args.io_fraction,
        max_moves: cfg.max_moves,
        place,
        phases,
        gossip_knowledge: knowledge.context("no slowdown phase")?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "initial placement: {:.3} s, step/lower bound {:.4}",
            report.place.plan_s, report.place.step_over_lower_bound
        );
        println!(
            "{:>9} {:>7} {:>10} {:>9} {:>8}",
            "event", "policy", "step/lb", "moves", "plan s"
        );
        for ph in &report.phases {
            for o in &ph.policies {
                println!(
                    "{:>9} {:>7} {:>10.4} {:>9} {:>8.3}",
                    ph.event, o.policy, o.step_over_lower_bound, o.moves, o.plan_s
                );
            }
        }
        for k in &report.gossip_knowledge {
            println!(
                "gossip-known vs perfect knowledge: step ratio {:.4} ({} of {} changes known after {} rounds)",
                k.ratio, k.changes_known_to_planner, k.changed_nodes, k.gossip_rounds
            );
        }
    }
    Ok(())
}

/// The slowdown decided from pmrun's map before it: with the true
/// capacities, and with the capacities node 0 knows through gossip after 0,
/// ⌈log2 N⌉ and 2⌈log2 N⌉ rounds (or `--gossip-rounds`).
#[allow(clippy::too_many_arguments)]
fn gossip_knowledge(
    args: &Args,
    ranks: &[RankInfo],
    before: &[NodeInfo],
    after: &[NodeInfo],
    changed: &[usize],
    map: &[NodeId],
    cfg: &BalanceConfig,
    round: u64,
) -> anyhow::Result<Vec<Knowledge>> {
    let n = args.nodes;
    let log_n = (n as f64).log2().ceil() as u32;
    let checkpoints: Vec<u32> = match args.gossip_rounds {
        Some(r) => vec![r],
        None => vec![0, log_n, 2 * log_n],
    };
    let rounds = checkpoints.iter().copied().max().unwrap_or(0);
    eprintln!(
        "  gossip: {} capacity changes, {rounds} rounds on {n} nodes ...",
        changed.len()
    );
    let mut c = Cluster::new(n, FanoutPolicy::Adaptive, args.seed ^ 0x9e37);
    // Warm-up, so the initial records are old news (not needed for 0 rounds).
    for _ in 0..if rounds > 0 { 10 } else { 0 } {
        c.round(0, |_, _| {})?;
    }
    for &j in changed {
        c.nodes[j].publish(1.0, after[j].capacity as f32);
    }
    let perfect = decide("pmrun", ranks, after, map, cfg, args, round)?;
    let weights = || ranks.iter().map(|r| r.weight);
    let step_perfect = balance::step_time(weights(), &perfect.map, after);
    let mut view: Vec<NodeInfo> = before.to_vec();
    let mut known = 0;
    let mut out = Vec::new();
    for r in 0..=rounds {
        if r > 0 {
            c.round(0, |p, rec| {
                let j = rec.node as usize;
                if p == 0
                    && f64::from(rec.capacity) == after[j].capacity
                    && view[j].capacity != after[j].capacity
                {
                    view[j].capacity = after[j].capacity;
                    known += 1;
                }
            })?;
        }
        if checkpoints.contains(&r) {
            let gossip = decide("pmrun", ranks, &view, map, cfg, args, round)?;
            let step_gossip = balance::step_time(weights(), &gossip.map, after);
            out.push(Knowledge {
                gossip_rounds: r,
                changed_nodes: changed.len(),
                changes_known_to_planner: known,
                step_gossip,
                step_perfect,
                ratio: step_gossip / step_perfect,
            });
        }
    }
    Ok(out)
}
