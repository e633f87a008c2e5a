//! The coordinator core on a fake clock: every recovery path, driven by the
//! simulated cluster of [`super::sim`] (no processes, no sockets).

use super::sim::{Failure, SimCluster, SimConfig};
use super::*;
use proptest::prelude::*;

const LIMIT: Duration = Duration::from_secs(600);

fn said(sim: &SimCluster, text: &str) -> usize {
    sim.said.iter().filter(|l| l.contains(text)).count()
}

fn log(sim: &SimCluster) -> String {
    sim.said.join("\n")
}

/// A finished job: exit 0, no rank ever placed on a dead node or away
/// from the holders of its committed snapshot.
fn assert_done(sim: &SimCluster) {
    assert_eq!(sim.exit, Some(0), "{}", log(sim));
    assert_eq!(sim.stats.placed_on_dead, 0, "{}", log(sim));
    assert_eq!(sim.stats.placed_off_holders, 0, "{}", log(sim));
    assert_eq!(
        sim.stats.spins, 0,
        "the core asked to be woken at once, again and again"
    );
}

fn n(i: u32) -> NodeId {
    NodeId(i)
}

#[test]
fn an_undisturbed_job_runs_to_its_end_and_deletes_its_checkpoints() {
    // Longer than every timer of a run (the no-pm notice comes at 15 s).
    let mut cfg = SimConfig::small(4, 8, 1);
    cfg.steps = 500;
    let mut sim = SimCluster::new(cfg);
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(sim.stats.launches, 1);
    assert!(sim.job.stats.commits >= 5, "{:?}", sim.job.stats);
    assert_eq!(sim.job.restarts, 0);
}

#[test]
fn a_crashed_node_s_ranks_resume_on_the_holders_of_their_replicas() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.fail(n(1), Failure::Crash, Duration::from_secs(2));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(said(&sim, "node node2 lost its agent"), 1, "{}", log(&sim));
    assert_eq!(said(&sim, "relaunching from the committed checkpoint"), 1);
    assert_eq!(sim.job.recoveries.len(), 1);
    assert_eq!(sim.job.restarts, 0, "a lost node is no restart");
    assert!(!sim.job.state().placement.contains(&n(1)));
}

#[test]
fn a_hung_agent_is_declared_dead_after_fail_after_and_the_run_is_stopped_by_the_agents() {
    // Its link stays open and its ranks run on: only silence tells.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.fail(n(2), Failure::Hang, Duration::from_secs(2));
    sim.advance(Duration::from_millis(2500));
    assert_eq!(said(&sim, "declared dead"), 0, "not before --fail-after");
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(&sim, "node node3 missed its heartbeats"),
        1,
        "{}",
        log(&sim)
    );
    assert_eq!(sim.job.recoveries.len(), 1);
    // The recovery was detected after about --fail-after.
    let detect = sim.job.recoveries[0].detect_s;
    assert!((1.0..1.2).contains(&detect), "{detect}");
}

#[test]
fn mpirun_ending_before_the_heartbeat_timeout_waits_for_the_verdict() {
    // Power lost: the run ends at once, but nothing says why until the
    // node misses its heartbeats; then it is a node failure, not a restart.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.fail(n(0), Failure::PowerOff, Duration::from_secs(2));
    sim.advance(Duration::from_millis(2500));
    assert!(
        matches!(sim.job.phase, Phase::Settling { .. }),
        "{:?}",
        sim.job.phase
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(sim.job.restarts, 0);
    assert_eq!(sim.job.recoveries.len(), 1, "{}", log(&sim));
}

#[test]
fn a_spare_lost_then_nodes_with_ranks_lost_even_during_the_new_placement_are_all_handled() {
    let mut cfg = SimConfig::small(5, 8, 2);
    cfg.spares = 1;
    let mut sim = SimCluster::new(cfg);
    // The spare (node5) first: only partners change.
    sim.fail(n(4), Failure::Crash, Duration::from_secs(2));
    // Then node1 with ranks; and node2 while the relaunch is being placed.
    sim.fail(n(0), Failure::Crash, Duration::from_secs(4));
    sim.fail_during_next_relaunch(n(1), Failure::Crash);
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(said(&sim, "node5 ran no ranks"), 1, "{}", log(&sim));
    assert_eq!(said(&sim, "declared dead"), 3, "{}", log(&sim));
    assert_eq!(sim.job.restarts, 0, "no lost node counts as a restart");
    let placement = &sim.job.state().placement;
    assert!(
        placement.iter().all(|&p| p == n(2) || p == n(3)),
        "{placement:?}"
    );
}

#[test]
fn two_nodes_dying_in_the_same_tick_are_one_recovery() {
    let mut sim = SimCluster::new(SimConfig::small(5, 10, 2));
    sim.fail(n(0), Failure::Crash, Duration::from_secs(2));
    sim.fail(n(3), Failure::Crash, Duration::from_secs(2));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(sim.job.recoveries.len(), 1, "{}", log(&sim));
    assert_eq!(sim.job.recoveries[0].nodes.len(), 2);
    assert_eq!(sim.stats.launches, 2);
}

#[test]
fn a_drain_moves_the_ranks_off_the_node_and_answers_once_the_job_runs() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    let id = sim.ctl(
        CtlRequest::Drain {
            node: "node2".into(),
        },
        Duration::from_secs(2),
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    let reply = sim.replies.iter().find(|(i, _)| *i == id).map(|(_, r)| r);
    assert!(matches!(reply, Some(CtlReply::Drained(_))), "{reply:?}");
    assert_eq!(sim.job.state().node(n(1)).health, Health::Drained);
    assert!(!sim.job.state().placement.contains(&n(1)));
    assert!(sim.job.state().partners.iter().all(|p| !p.contains(&n(1))));
}

#[test]
fn a_node_dying_during_a_drain_joins_it() {
    let mut sim = SimCluster::new(SimConfig::small(5, 10, 2));
    let id = sim.ctl(
        CtlRequest::Drain {
            node: "node2".into(),
        },
        Duration::from_secs(2),
    );
    sim.fail(n(3), Failure::Crash, Duration::from_millis(2001));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    let reply = sim.replies.iter().find(|(i, _)| *i == id).map(|(_, r)| r);
    let Some(CtlReply::Drained(r)) = reply else {
        panic!("{reply:?}\n{}", log(&sim));
    };
    assert!(r.nodes.contains(&"node2".to_string()), "{r:?}");
    assert!(r.nodes.contains(&"node4".to_string()), "{r:?}");
    let placement = &sim.job.state().placement;
    assert!(!placement.contains(&n(1)) && !placement.contains(&n(3)));
}

#[test]
fn a_partner_failing_during_a_recovery_is_replaced_too() {
    let mut sim = SimCluster::new(SimConfig::small(5, 10, 1));
    sim.fail(n(0), Failure::Crash, Duration::from_secs(2));
    // Node 3 fails to store replicas three times while the job recovers.
    for k in 0..3 {
        sim.inject(
            Event::FromAgent {
                node: n(2),
                msg: FromAgent::ReplicaFailed {
                    rank: 4,
                    epoch: 99,
                    partner: n(3),
                    reason: "disk full".into(),
                },
            },
            Duration::from_millis(2002 + k),
        );
    }
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(&sim, "node4 failed to store 3 replicas"),
        1,
        "{}",
        log(&sim)
    );
    assert!(!sim.job.state().node(n(3)).holds_replicas);
    assert!(sim.job.state().partners.iter().all(|p| !p.contains(&n(3))));
    assert_eq!(sim.job.restarts, 0);
}

#[test]
fn ctl_requests_mid_recovery_are_answered_not_lost() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.fail(n(1), Failure::Hang, Duration::from_secs(2));
    // Declared dead at about 3 s; the run is being stopped then.
    let status = sim.ctl(CtlRequest::Status, Duration::from_millis(3150));
    let ckpt = sim.ctl(CtlRequest::Checkpoint, Duration::from_millis(3150));
    let drain = sim.ctl(
        CtlRequest::Drain {
            node: "node3".into(),
        },
        Duration::from_millis(3150),
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    let reply = |id: u64| {
        sim.replies
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, r)| r.clone())
    };
    assert!(matches!(reply(status), Some(CtlReply::Status(_))));
    for id in [ckpt, drain] {
        let Some(CtlReply::Refused { reason }) = reply(id) else {
            panic!("{:?}", reply(id));
        };
        assert!(
            ["not running", "in progress", "still starting"]
                .iter()
                .any(|why| reason.contains(why)),
            "{reason}"
        );
    }
}

#[test]
fn a_rank_dying_on_a_live_node_restarts_the_job_counted_and_gives_up_after_max_restarts() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.rank_dies(Duration::from_secs(2));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(sim.job.restarts, 1);
    assert_eq!(said(&sim, "relaunching from its committed checkpoint"), 1);

    let mut cfg = SimConfig::small(4, 8, 1);
    cfg.max_restarts = 0;
    let mut sim = SimCluster::new(cfg);
    sim.rank_dies(Duration::from_secs(2));
    assert_eq!(sim.run_until_done(LIMIT), Some(137));
    assert_eq!(said(&sim, "run pmrun again with --job sim to resume"), 1);
}

#[test]
fn a_launcher_hanging_after_its_ranks_ended_is_killed_and_the_job_goes_on() {
    // A rank died and mpirun hangs: killed, then a restart as usual.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.launcher_hangs = true;
    sim.rank_dies(Duration::from_secs(2));
    // Left alone, it counts as hung only after ORPHAN_AFTER.
    sim.advance(Duration::from_secs(2) + sim.cfg.abort_delay + ORPHAN_AFTER / 2);
    assert_eq!(said(&sim, "but the launcher (pid"), 0, "{}", log(&sim));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(said(&sim, "but the launcher (pid"), 1, "{}", log(&sim));
    assert_eq!(sim.job.restarts, 1);

    // Every rank finished and mpirun hangs: killed, and the job is done.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.advance(Duration::from_secs(1));
    sim.launcher_hangs = true;
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(said(&sim, "but the launcher (pid"), 1, "{}", log(&sim));
    assert_eq!((sim.job.restarts, sim.stats.launches), (0, 1));
}

#[test]
fn a_stop_nobody_asked_pmrun_for_ends_the_job_with_its_checkpoints() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.outside_signal(RunSignal::Stop, Duration::from_secs(2));
    assert_eq!(
        sim.run_until_done(LIMIT),
        Some(STOPPED_EXIT),
        "{}",
        log(&sim)
    );
    assert_eq!(said(&sim, "--job sim to resume"), 1);
}

#[test]
fn a_stop_pmrun_is_asked_for_ends_the_job_at_a_checkpoint_it_keeps() {
    // ctl stop: answered with the stop's committed epoch.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    let id = sim.ctl(CtlRequest::Stop, Duration::from_secs(2));
    assert_eq!(
        sim.run_until_done(LIMIT),
        Some(STOPPED_EXIT),
        "{}",
        log(&sim)
    );
    let reply = sim.replies.iter().find(|(i, _)| *i == id).map(|(_, r)| r);
    let Some(CtlReply::Committed { step, .. }) = reply else {
        panic!("{reply:?}\n{}", log(&sim));
    };
    assert!(*step > 0);
    assert_eq!(
        said(&sim, "asked by pmrun ctl stop); its checkpoints are kept"),
        1,
        "{}",
        log(&sim)
    );

    // SIGUSR1 to pmrun, twice: one stop.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.inject(Event::StopRequested, Duration::from_secs(2));
    sim.inject(Event::StopRequested, Duration::from_millis(2100));
    assert_eq!(
        sim.run_until_done(LIMIT),
        Some(STOPPED_EXIT),
        "{}",
        log(&sim)
    );
    assert_eq!(
        said(&sim, "pmrun got SIGUSR1: stopping the job"),
        1,
        "{}",
        log(&sim)
    );
    assert_eq!(said(&sim, "--job sim to resume from its checkpoint"), 1);

    // Before the ranks can checkpoint: ended as an interruption.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.inject(Event::StopRequested, Duration::ZERO);
    assert_eq!(
        sim.run_until_done(LIMIT),
        Some(INTERRUPTED_EXIT),
        "{}",
        log(&sim)
    );
    assert_eq!(
        said(&sim, "no checkpoint can be taken now"),
        1,
        "{}",
        log(&sim)
    );
}

#[test]
fn a_node_slurm_wants_emptied_is_drained_once_it_can_be() {
    let leaving = || Event::SlurmLeaving {
        nodes: vec![("node2".into(), "IDLE+DRAIN in Slurm: disk swap".into())],
    };
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    // Before the ranks are ready: it waits, said once however often Slurm says it.
    sim.inject(leaving(), Duration::ZERO);
    sim.inject(leaving(), Duration::ZERO);
    // Then it is drained, and later looks change nothing.
    sim.inject(leaving(), Duration::from_secs(2));
    sim.inject(leaving(), Duration::from_secs(6));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(
            &sim,
            "node node2 is IDLE+DRAIN in Slurm: disk swap; it is not drained yet"
        ),
        1,
        "{}",
        log(&sim)
    );
    assert_eq!(
        said(
            &sim,
            "node node2 is IDLE+DRAIN in Slurm: disk swap: draining it"
        ),
        1,
        "{}",
        log(&sim)
    );
    assert_eq!(sim.job.state().node(n(1)).health, Health::Drained);
    assert!(!sim.job.state().placement.contains(&n(1)));
}

#[test]
fn an_interruption_stops_the_run_and_keeps_the_checkpoints() {
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.inject(Event::Interrupted, Duration::from_secs(2));
    assert_eq!(sim.run_until_done(LIMIT), Some(INTERRUPTED_EXIT));
    assert_eq!(said(&sim, "interrupted; the job's checkpoints are kept"), 1);
}

#[test]
fn a_placement_that_makes_no_progress_runs_out_of_time_but_a_slow_one_does_not() {
    // 200 MB at 50 MB per heartbeat (0.2 s): slow but moving.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.advance(Duration::from_secs(1));
    sim.stall_placements(n(2), 200 << 20, 50 << 20);
    sim.fail(n(0), Failure::Crash, Duration::from_secs(1));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(said(&sim, "declared dead"), 1, "{}", log(&sim));

    // A stuck import: the node is given its patience, then declared dead.
    let mut sim = SimCluster::new(SimConfig::small(4, 8, 1));
    sim.advance(Duration::from_secs(1));
    sim.stall_placements(n(2), 200 << 20, 0);
    sim.fail(n(0), Failure::Crash, Duration::from_secs(1));
    sim.advance(Duration::from_secs(20));
    assert_eq!(said(&sim, "node node3 did not apply"), 0, "{}", log(&sim));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(&sim, "node node3 did not apply the new placement"),
        1,
        "{}",
        log(&sim)
    );
}

#[test]
fn a_job_resumes_on_the_nodes_whose_stores_hold_its_committed_epoch() {
    let mut sim = SimCluster::new(SimConfig::small(3, 3, 1));
    // Epoch 5 (step 50) of ranks 0 and 1 is on node1 and node2; rank 2's
    // only on node2 (its own node, node3, lost its store).
    sim.set_inventory(
        n(0),
        Inventory {
            committed: Some((5, 50, 3)),
            ranks: vec![(0, vec![4, 5]), (1, vec![5])],
        },
    );
    sim.set_inventory(
        n(1),
        Inventory {
            committed: Some((5, 50, 3)),
            ranks: vec![(0, vec![5]), (1, vec![5]), (2, vec![5])],
        },
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(
            &sim,
            "resuming job sim from its committed checkpoint on the nodes (epoch 5, step 50)"
        ),
        1
    );

    let mut sim = SimCluster::new(SimConfig::small(3, 4, 1));
    sim.set_inventory(
        n(0),
        Inventory {
            committed: Some((5, 50, 3)),
            ranks: vec![],
        },
    );
    assert_eq!(sim.run_until_done(LIMIT), Some(1));
    assert_eq!(
        said(&sim, "was checkpointed with 3 ranks"),
        1,
        "{}",
        log(&sim)
    );
}

#[test]
fn losing_every_holder_of_a_rank_ends_the_job_with_the_checkpoints_kept() {
    let mut sim = SimCluster::new(SimConfig::small(3, 3, 1));
    sim.fail(n(0), Failure::Crash, Duration::from_secs(2));
    sim.fail(n(1), Failure::Crash, Duration::from_secs(2));
    assert_eq!(sim.run_until_done(LIMIT), Some(1));
    assert_eq!(said(&sim, "raise --replicas"), 1, "{}", log(&sim));
    assert_eq!(sim.stats.placed_on_dead, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any sequence of failures: the job either finishes, or ends saying
    /// which rank lost every holder; no rank is ever placed on a dead node
    /// or on one that does not hold its committed snapshot. At most R
    /// failures at once always leave a holder for every rank.
    #[test]
    fn ranks_go_only_to_live_holders_of_their_committed_epoch(
        nodes in 3usize..7,
        replicas in 1usize..3,
        ranks in 3u32..12,
        failures in proptest::collection::vec((0usize..7, 0u64..6000, 0u8..3), 0..4),
        at_once in any::<bool>(),
    ) {
        let mut sim = SimCluster::new(SimConfig::small(nodes, ranks, replicas));
        let mut victims = std::collections::BTreeSet::new();
        for &(node, ms, kind) in &failures {
            let node = node % nodes;
            if victims.len() + 1 >= nodes {
                break;
            }
            victims.insert(node);
            let kind = [Failure::Crash, Failure::Hang, Failure::PowerOff][kind as usize];
            let ms = if at_once { 2000 } else { 1000 + ms };
            sim.fail(NodeId::from_index(node), kind, Duration::from_millis(ms));
        }
        let exit = sim.run_until_done(LIMIT);
        prop_assert!(exit.is_some(), "the job never ended:\n{}", log(&sim));
        prop_assert_eq!(sim.stats.placed_on_dead, 0, "{}", log(&sim));
        prop_assert_eq!(sim.stats.placed_off_holders, 0, "{}", log(&sim));
        prop_assert_eq!(sim.stats.spins, 0);
        if exit != Some(0) {
            prop_assert!(said(&sim, "was held only by nodes that are gone") == 1, "{}", log(&sim));
        }
        if at_once && victims.len() <= replicas.min(nodes - 1) {
            prop_assert_eq!(exit, Some(0), "{}", log(&sim));
        }
    }
}

fn flushing(every: u64, recorded: Option<(u64, u64, u32)>) -> SimConfig {
    let mut cfg = SimConfig::small(4, 8, 1);
    cfg.flush = Some(FlushSettings {
        dir: "/shared/flush".into(),
        every,
        recorded,
    });
    cfg
}

#[test]
fn committed_epochs_are_flushed_every_n_commits_and_a_kept_stop_flushes_its_own() {
    let mut sim = SimCluster::new(flushing(3, None));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert!(sim.flushed.len() >= 2, "{:?}\n{}", sim.flushed, log(&sim));
    assert!(
        sim.flushed.windows(2).all(|w| w[1] >= w[0] + 3),
        "every third commit: {:?}",
        sim.flushed
    );
    assert_eq!(said(&sim, "flushed to /shared/flush"), 1, "{}", log(&sim));

    // A node lost on the way: flushes go on from the ranks' new nodes.
    let mut sim = SimCluster::new(flushing(1, None));
    sim.fail(n(1), Failure::Crash, Duration::from_secs(2));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    let before = sim.flushed.iter().filter(|&&e| e <= 3).count();
    assert!(
        before > 0 && sim.flushed.len() > before,
        "{:?}",
        sim.flushed
    );

    // A stop: its epoch is flushed before pmrun ends, and pmrun says how
    // to resume from it.
    let mut sim = SimCluster::new(flushing(100, None));
    sim.inject(Event::StopRequested, Duration::from_secs(2));
    assert_eq!(
        sim.run_until_done(LIMIT),
        Some(STOPPED_EXIT),
        "{}",
        log(&sim)
    );
    let committed = sim.job.state().committed.expect("the stop committed");
    assert_eq!(sim.flushed, vec![committed.epoch], "{}", log(&sim));
    assert_eq!(
        said(
            &sim,
            "pmrun --job sim --flush /shared/flush resumes from it"
        ),
        1,
        "{}",
        log(&sim)
    );
}

#[test]
fn a_job_resumes_from_the_flushed_copy_when_it_is_newer_than_the_nodes_stores() {
    // The nodes hold epoch 3; the flush directory epoch 7.
    let mut sim = SimCluster::new(flushing(100, Some((7, 70, 8))));
    sim.set_inventory(
        n(0),
        Inventory {
            committed: Some((3, 30, 8)),
            ranks: vec![(0, vec![3]), (1, vec![3])],
        },
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(
            &sim,
            "resuming job sim from the flushed copy in /shared/flush"
        ),
        1,
        "{}",
        log(&sim)
    );
    assert!(log(&sim).contains("(epoch 7, step 70)"), "{}", log(&sim));

    // A node lost before the resumed job's first commit: its ranks
    // resume from the copies their partners fetched too.
    let mut sim = SimCluster::new(flushing(100, Some((7, 70, 8))));
    sim.fail(n(1), Failure::Crash, Duration::from_millis(400));
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert!(
        log(&sim).contains("relaunching from the committed checkpoint (epoch 7,"),
        "{}",
        log(&sim)
    );

    // The nodes' newer commit wins over an older flushed one.
    let mut sim = SimCluster::new(flushing(100, Some((2, 20, 8))));
    let all = (0..8).map(|r| (r, vec![3])).collect();
    sim.set_inventory(
        n(0),
        Inventory {
            committed: Some((3, 30, 8)),
            ranks: all,
        },
    );
    sim.run_until_done(LIMIT);
    assert_done(&sim);
    assert_eq!(
        said(&sim, "from its committed checkpoint on the nodes (epoch 3"),
        1
    );

    // A flushed copy of another rank count is refused, kept.
    let mut sim = SimCluster::new(flushing(100, Some((7, 70, 5))));
    assert_eq!(sim.run_until_done(LIMIT), Some(1));
    assert_eq!(
        said(&sim, "was checkpointed with 5 ranks"),
        1,
        "{}",
        log(&sim)
    );
}
