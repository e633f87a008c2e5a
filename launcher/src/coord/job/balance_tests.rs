//! Balancing on the simulated cluster: ranks report their loads, nodes
//! their capacities by gossip, and the run goes as fast as its placement.

use super::sim::{Failure, SimCluster, SimConfig};
use super::*;
use pm_core::proto::RecoveryKind;

const LIMIT: Duration = Duration::from_secs(3600);

/// How many ranks the job places on `node`.
fn ranks_on(sim: &SimCluster, node: NodeId) -> usize {
    sim.job
        .state()
        .placement
        .iter()
        .filter(|&&n| n == node)
        .count()
}

fn moves(sim: &SimCluster) -> usize {
    sim.job
        .recoveries()
        .iter()
        .filter(|r| r.kind == RecoveryKind::Rebalance)
        .count()
}

fn log(sim: &SimCluster) -> String {
    sim.said.join("\n")
}

fn done(sim: &mut SimCluster) -> f64 {
    let start = sim.now;
    assert_eq!(sim.run_until_done(LIMIT), Some(0), "{}", log(sim));
    assert_eq!(sim.stats.placed_on_dead, 0);
    assert_eq!(sim.stats.placed_off_holders, 0);
    assert_eq!(sim.stats.spins, 0);
    sim.now.duration_since(start).as_secs_f64()
}

/// Node 1 at a quarter of the others' speed, 8 ranks of equal work.
fn slow_node(mode: BalanceMode) -> SimConfig {
    let mut cfg = SimConfig::balancing(&[0.25, 1.0, 1.0, 1.0], 8, 0.01);
    cfg.steps = 3000;
    cfg.balance.mode = mode;
    cfg
}

#[test]
fn a_slow_node_s_ranks_move_away_and_the_job_finishes_sooner() {
    let mut sim = SimCluster::new(slow_node(BalanceMode::Auto));
    let balanced = done(&mut sim);
    assert!(moves(&sim) >= 1, "{}", log(&sim));
    let on_slow = ranks_on(&sim, NodeId(0));
    assert!(on_slow < 2, "{:?}", sim.job.state().placement);
    let decision = sim.job.balancer.last.clone().unwrap();
    assert!(decision.lower_bound_s > 0.0 && decision.step_s > 0.0);

    let mut static_run = SimCluster::new(slow_node(BalanceMode::Off));
    let fixed = done(&mut static_run);
    assert_eq!(moves(&static_run), 0);
    assert!(
        balanced < fixed * 0.8,
        "balanced {balanced:.1} s, static {fixed:.1} s"
    );
}

#[test]
fn a_balanced_job_makes_no_move_even_with_noise() {
    let mut cfg = SimConfig::balancing(&[1.0, 1.0, 1.0, 1.0], 8, 0.01);
    cfg.steps = 3000;
    cfg.noise = 0.05;
    let mut sim = SimCluster::new(cfg);
    done(&mut sim);
    assert_eq!(moves(&sim), 0, "{}", log(&sim));
    // It did decide, many times.
    assert!(sim.job.balancer.round >= 5, "{}", sim.job.balancer.round);
}

#[test]
fn a_job_near_its_end_does_not_move() {
    let mut cfg = slow_node(BalanceMode::Auto);
    cfg.steps = 60;
    let mut sim = SimCluster::new(cfg);
    done(&mut sim);
    assert_eq!(moves(&sim), 0, "{}", log(&sim));
    let last = sim.job.balancer.last.clone().expect("a decision");
    assert!(last.outcome.starts_with("not worth it"), "{last:?}");
    assert!(last.gain_s < 2.0 * last.freeze_s, "{last:?}");
}

#[test]
fn a_dry_run_decides_and_moves_nothing() {
    let mut sim = SimCluster::new(slow_node(BalanceMode::DryRun));
    done(&mut sim);
    assert_eq!(moves(&sim), 0);
    // The plans were said, with their moves.
    let plans: Vec<&String> = sim
        .said
        .iter()
        .filter(|l| l.contains("dry run: would move"))
        .collect();
    assert!(!plans.is_empty(), "{}", log(&sim));
    assert!(plans[0].contains("node1→"), "{}", plans[0]);
}

#[test]
fn a_node_slowed_mid_run_is_followed_within_a_few_decisions() {
    let mut cfg = SimConfig::balancing(&[1.0, 1.0, 1.0, 1.0], 8, 0.01);
    cfg.steps = 4000;
    let every = cfg.balance.every;
    let mut sim = SimCluster::new(cfg);
    sim.slow_down(NodeId(2), 0.2, Duration::from_secs(10));
    sim.advance(Duration::from_secs(10));
    assert_eq!(moves(&sim), 0, "nothing to move before the slowdown");
    // A few decision periods: the estimates follow a change in 2 samples.
    sim.advance(every * 5 + Duration::from_secs(2));
    assert!(moves(&sim) >= 1, "{}", log(&sim));
    done(&mut sim);
}

#[test]
fn ctl_set_cpus_slows_a_node_and_ctl_balance_moves_at_once() {
    let mut cfg = SimConfig::balancing(&[1.0, 1.0, 1.0, 1.0], 8, 0.01);
    cfg.steps = 4000;
    cfg.balance.every = Duration::from_secs(3600);
    let mut sim = SimCluster::new(cfg);
    let set = sim.ctl(
        CtlRequest::SetCpus {
            node: "node3".into(),
            cpus: 0.2,
        },
        Duration::from_secs(3),
    );
    let balance = sim.ctl(CtlRequest::Balance, Duration::from_secs(6));
    sim.advance(Duration::from_secs(7));
    let reply = |id: u64| {
        sim.replies
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r.clone())
    };
    assert!(
        matches!(reply(set), Some(CtlReply::CpusSet { .. })),
        "{:?}",
        reply(set)
    );
    let Some(CtlReply::Balanced(d)) = reply(balance) else {
        panic!("{:?}", reply(balance));
    };
    assert_eq!(d.outcome, "moving", "{d:?}");
    done(&mut sim);
    assert!(moves(&sim) >= 1);
}

#[test]
fn known_weights_give_a_weighted_first_placement_that_needs_no_move() {
    let mut cfg = slow_node(BalanceMode::Auto);
    cfg.balance.initial = Some(vec![
        pm_core::estimate::Estimate::from_history(0.01, 0.0, 5);
        8
    ]);
    cfg.balance.initial_source = "a test".into();
    let mut sim = SimCluster::new(cfg);
    let on_slow = ranks_on(&sim, NodeId(0));
    assert!(on_slow < 2, "{:?}", sim.job.state().placement);
    done(&mut sim);
    assert_eq!(moves(&sim), 0, "{}", log(&sim));
}

#[test]
fn a_node_lost_during_a_move_is_recovered_from_the_committed_epoch() {
    let mut sim = SimCluster::new(slow_node(BalanceMode::Auto));
    sim.fail_during_next_move(NodeId(3), Failure::Crash);
    done(&mut sim);
    assert!(
        sim.said.iter().any(|l| l.contains("node node4")),
        "{}",
        log(&sim)
    );
    assert!(!sim.job.state().placement.contains(&NodeId(3)));
}
