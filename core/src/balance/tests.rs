use super::*;
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn apply(ranks: &mut [RankInfo], plan: &Plan, round: u64) {
    for m in plan.to_execute() {
        let r = &mut ranks[m.rank as usize];
        assert_eq!(r.node, m.from, "a move starts where the rank is");
        r.left_node = r.node;
        r.node = Some(m.to);
        r.last_moved_round = Some(round);
    }
}

fn placed(ranks: &[RankInfo], nodes: &[NodeInfo]) -> Vec<RankInfo> {
    let map = place(ranks, nodes).unwrap();
    ranks
        .iter()
        .zip(map)
        .map(|(r, n)| RankInfo {
            node: Some(n),
            ..r.clone()
        })
        .collect()
}

/// Every rank on exactly one node with capacity, memory and I/O slots respected.
fn check_map(ranks: &[RankInfo], nodes: &[NodeInfo]) {
    let mut mem = vec![0u64; nodes.len()];
    let mut io = vec![0u32; nodes.len()];
    for r in ranks {
        let n = r.node.expect("every rank is placed") as usize;
        assert!(
            nodes[n].effective_capacity() > 0.0,
            "rank on a node without capacity"
        );
        mem[n] += r.state_bytes;
        io[n] += u32::from(r.class == RankClass::Io);
    }
    for (n, node) in nodes.iter().enumerate() {
        assert!(mem[n] <= node.memory_bytes, "node {n} over memory");
        assert!(io[n] <= node.io_slots, "node {n} over its I/O slots");
    }
}

fn job() -> impl Strategy<Value = (Vec<RankInfo>, Vec<NodeInfo>)> {
    let rank = (0.0f64..10.0, 0u64..100, any::<bool>()).prop_map(|(w, b, io)| RankInfo {
        state_bytes: b,
        dirty_bytes: b / 4,
        class: if io { RankClass::Io } else { RankClass::Cpu },
        ..RankInfo::with_weight(w)
    });
    let node =
        (0.5f64..64.0, 0u8..10, 300u64..2000, 1u32..8).prop_map(|(c, s, mem, io)| NodeInfo {
            capacity: c,
            state: match s {
                0 => NodeState::Draining,
                1 => NodeState::Dead,
                _ => NodeState::Up,
            },
            memory_bytes: mem,
            io_slots: io,
        });
    (
        prop::collection::vec(rank, 1..60),
        prop::collection::vec(node, 1..12),
    )
}

proptest! {
    #[test]
    fn placement_places_every_rank_once_within_constraints((ranks, nodes) in job()) {
        match place(&ranks, &nodes) {
            Ok(map) => {
                prop_assert_eq!(map.len(), ranks.len());
                let ranks: Vec<RankInfo> = ranks.iter().zip(&map)
                    .map(|(r, &n)| RankInfo { node: Some(n), ..r.clone() }).collect();
                check_map(&ranks, &nodes);
            }
            Err(BalanceError::NoFeasibleNode { rank }) => {
                // Only acceptable when that rank could not fit anywhere even alone, or
                // the cluster really is short of room: check the total room.
                let r = &ranks[rank as usize];
                let up: Vec<&NodeInfo> = nodes.iter().filter(|n| n.effective_capacity() > 0.0).collect();
                let mem: u64 = up.iter().map(|n| n.memory_bytes).sum();
                let need: u64 = ranks.iter().map(|r| r.state_bytes).sum();
                let io_slots: u64 = up.iter().map(|n| u64::from(n.io_slots)).sum();
                let io_need = ranks.iter().filter(|r| r.class == RankClass::Io).count() as u64;
                prop_assert!(up.is_empty() || need * 2 > mem || io_need > io_slots
                    || up.iter().all(|n| n.memory_bytes < r.state_bytes) || io_need * 2 > io_slots,
                    "placement gave up although room was plentiful");
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn rebalancing_conserves_ranks_and_constraints((ranks, mut nodes) in job(), drain in 0usize..12) {
        // Place on all nodes up, then take some down and rebalance.
        let all_up: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo { state: NodeState::Up, ..n.clone() }).collect();
        let Ok(map) = place(&ranks, &all_up) else { return Ok(()) };
        let mut ranks: Vec<RankInfo> = ranks.iter().zip(&map)
            .map(|(r, &n)| RankInfo { node: Some(n), ..r.clone() }).collect();
        if drain < nodes.len() {
            nodes[drain].state = NodeState::Draining;
        }
        let cfg = BalanceConfig::default();
        match rebalance(&ranks, &nodes, &MoveCostModel::default(), 1_000_000, 1, &cfg) {
            Ok(plan) => {
                for list in [&plan.forced, &plan.moves] {
                    let mut seen = std::collections::HashSet::new();
                    for m in list {
                        prop_assert!(seen.insert(m.rank), "rank {} twice in one list", m.rank);
                    }
                }
                prop_assert!(plan.moves.len() <= cfg.max_moves);
                prop_assert!(plan.step_after <= plan.step_forced + 1e-9);
                apply(&mut ranks, &plan, 1);
                check_map(&ranks, &nodes);
                let expect = step_time(ranks.iter().map(|r| r.weight),
                    &ranks.iter().map(|r| r.node.unwrap()).collect::<Vec<_>>(), &nodes);
                prop_assert!((plan.step_executed() - expect).abs() <= 1e-9 * expect.max(1.0));
            }
            Err(BalanceError::NoFeasibleNode { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn placement_on_identical_nodes_is_within_the_list_scheduling_bound() {
    let mut rng = SmallRng::seed_from_u64(7);
    let ranks: Vec<RankInfo> = (0..500)
        .map(|_| RankInfo::with_weight(rng.random_range(0.1..5.0)))
        .collect();
    let nodes = vec![NodeInfo::up(4.0); 16];
    let map = place(&ranks, &nodes).unwrap();
    let step = step_time(ranks.iter().map(|r| r.weight), &map, &nodes);
    let lb = lower_bound(&ranks, &nodes);
    assert!(step <= lb + 5.0 / 4.0, "step {step} lower bound {lb}");
    assert!(step <= lb * 1.05, "step {step} lower bound {lb}");
}

#[test]
fn heavier_nodes_get_proportionally_more_work() {
    let ranks: Vec<RankInfo> = (0..300).map(|_| RankInfo::with_weight(1.0)).collect();
    let nodes = vec![NodeInfo::up(1.0), NodeInfo::up(2.0)];
    let map = place(&ranks, &nodes).unwrap();
    let on_fast = map.iter().filter(|&&n| n == 1).count();
    assert_eq!(on_fast, 200);
}

#[test]
fn io_slots_bound_the_io_ranks_per_node() {
    let io = RankInfo {
        class: RankClass::Io,
        ..RankInfo::with_weight(0.1)
    };
    let nodes: Vec<NodeInfo> = (0..4)
        .map(|_| NodeInfo {
            io_slots: 1,
            ..NodeInfo::up(8.0)
        })
        .collect();
    let map = place(&vec![io.clone(); 4], &nodes).unwrap();
    let mut sorted = map.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![0, 1, 2, 3],
        "one I/O rank per node although the load says otherwise"
    );
    assert_eq!(
        place(&vec![io; 5], &nodes),
        Err(BalanceError::NoFeasibleNode { rank: 4 })
    );
}

#[test]
fn memory_bounds_the_state_per_node() {
    let big = RankInfo {
        state_bytes: 600,
        ..RankInfo::with_weight(1.0)
    };
    let nodes = vec![
        NodeInfo {
            memory_bytes: 1000,
            ..NodeInfo::up(100.0)
        },
        NodeInfo {
            memory_bytes: 1000,
            ..NodeInfo::up(1.0)
        },
    ];
    // Load alone would put both on the big node; memory forces one onto the small one.
    let map = place(&vec![big; 2], &nodes).unwrap();
    assert_ne!(map[0], map[1]);
}

#[test]
fn a_balanced_job_moves_nothing() {
    let mut rng = SmallRng::seed_from_u64(3);
    let ranks: Vec<RankInfo> = (0..400)
        .map(|_| RankInfo::with_weight(rng.random_range(0.5..2.0)))
        .collect();
    let nodes: Vec<NodeInfo> = (0..20)
        .map(|i| NodeInfo::up(if i % 2 == 0 { 4.0 } else { 8.0 }))
        .collect();
    let ranks = placed(&ranks, &nodes);
    let plan = rebalance(
        &ranks,
        &nodes,
        &MoveCostModel::default(),
        u64::MAX / 4,
        1,
        &BalanceConfig::default(),
    )
    .unwrap();
    assert!(plan.forced.is_empty());
    assert!(plan.moves.is_empty(), "{} moves", plan.moves.len());
    assert_eq!(plan.verdict, Verdict::Balanced);
}

#[test]
fn an_imbalanced_job_is_brought_near_the_lower_bound_with_few_moves() {
    let mut rng = SmallRng::seed_from_u64(4);
    let mut ranks: Vec<RankInfo> = (0..400)
        .map(|_| RankInfo::with_weight(rng.random_range(0.5..2.0)))
        .collect();
    let nodes = vec![NodeInfo::up(4.0); 20];
    let mut ranks_placed = placed(&ranks, &nodes);
    // Ten ranks become five times heavier.
    for r in ranks_placed.iter_mut().take(10) {
        r.weight *= 5.0;
    }
    for (r, p) in ranks.iter_mut().zip(&ranks_placed) {
        r.weight = p.weight;
    }
    let plan = rebalance(
        &ranks_placed,
        &nodes,
        &MoveCostModel::default(),
        1_000_000,
        1,
        &BalanceConfig::default(),
    )
    .unwrap();
    assert_eq!(plan.verdict, Verdict::Execute);
    assert!(
        plan.step_after <= plan.lower_bound * 1.05,
        "{} vs {}",
        plan.step_after,
        plan.lower_bound
    );
    let greedy = place(&ranks, &nodes).unwrap();
    let greedy_moves = greedy
        .iter()
        .zip(&ranks_placed)
        .filter(|(g, r)| Some(**g) != r.node)
        .count();
    assert!(
        plan.moves.len() * 5 < greedy_moves,
        "{} moves vs greedy {greedy_moves}",
        plan.moves.len()
    );
}

#[test]
fn noisy_estimates_do_not_ping_pong() {
    let mut rng = SmallRng::seed_from_u64(5);
    let truth: Vec<f64> = (0..200).map(|_| rng.random_range(0.5..2.0)).collect();
    let nodes = vec![NodeInfo::up(4.0); 10];
    let mut ranks = placed(
        &truth
            .iter()
            .map(|&w| RankInfo::with_weight(w))
            .collect::<Vec<_>>(),
        &nodes,
    );
    let mut history: Vec<Vec<NodeId>> = ranks.iter().map(|r| vec![r.node.unwrap()]).collect();
    let cfg = BalanceConfig::default();
    let mut total = 0;
    for round in 1..=300 {
        for (r, &w) in ranks.iter_mut().zip(&truth) {
            r.weight = w * rng.random_range(0.95..1.05);
        }
        // A long remaining run: justification alone would not stop thrashing.
        let plan = rebalance(
            &ranks,
            &nodes,
            &MoveCostModel::default(),
            1 << 40,
            round,
            &cfg,
        )
        .unwrap();
        apply(&mut ranks, &plan, round);
        for m in plan.to_execute() {
            history[m.rank as usize].push(m.to);
            total += 1;
        }
    }
    for (i, h) in history.iter().enumerate() {
        for w in h.windows(3) {
            assert!(w[0] != w[2], "rank {i} bounced {:?}", h);
        }
    }
    // The noise alone makes some node exceed the slack now and then; the
    // margin, the cooldown and the no-return rule keep that to an occasional
    // move (without them a move would follow nearly every round).
    assert!(total <= 60, "{total} moves over 300 rounds of noise");
}

#[test]
fn drain_and_failure_empty_the_node() {
    let ranks: Vec<RankInfo> = (0..60)
        .map(|i| RankInfo::with_weight(1.0 + (i % 3) as f64))
        .collect();
    for state in [NodeState::Draining, NodeState::Dead] {
        let mut nodes = vec![NodeInfo::up(4.0); 6];
        let mut ranks = placed(&ranks, &nodes);
        let on_2 = ranks.iter().filter(|r| r.node == Some(2)).count();
        assert!(on_2 > 0);
        nodes[2].state = state;
        // Even a plan whose optional part is rejected carries the evacuation.
        let plan = rebalance(
            &ranks,
            &nodes,
            &MoveCostModel::default(),
            0,
            1,
            &BalanceConfig::default(),
        )
        .unwrap();
        assert_eq!(plan.forced.len(), on_2);
        apply(&mut ranks, &plan, 1);
        assert!(ranks.iter().all(|r| r.node != Some(2)));
        check_map(&ranks, &nodes);
    }
}

#[test]
fn justification_weighs_gain_over_the_remaining_run_against_the_cost() {
    let ranks: Vec<RankInfo> = (0..8)
        .map(|_| RankInfo {
            node: Some(0),
            state_bytes: 1 << 30,
            ..RankInfo::with_weight(1.0)
        })
        .collect();
    let nodes = vec![NodeInfo::up(1.0), NodeInfo::up(1.0)];
    let cost = MoveCostModel::with_prior(1.0, 1e-9); // ~1 s relaunch + ~1 s per GiB
    let cfg = BalanceConfig::default();
    let short = rebalance(&ranks, &nodes, &cost, 2, 1, &cfg).unwrap();
    assert_eq!(short.verdict, Verdict::Rejected, "{short:?}");
    assert_eq!(short.to_execute().count(), 0);
    assert!(short.gain_s <= cfg.cost_factor * short.cost_s);
    let long = rebalance(&ranks, &nodes, &cost, 1000, 1, &cfg).unwrap();
    assert_eq!(long.verdict, Verdict::Execute);
    assert_eq!(long.moves.len(), 4);
    assert!((long.step_after - 4.0).abs() < 1e-9);
    assert!(long.gain_s > cfg.cost_factor * long.cost_s);
}

#[test]
fn a_replica_holder_is_preferred_and_carries_only_the_change() {
    let mut ranks: Vec<RankInfo> = (0..4)
        .map(|_| RankInfo {
            node: Some(0),
            state_bytes: 1000,
            dirty_bytes: 10,
            ..RankInfo::with_weight(1.0)
        })
        .collect();
    ranks[3].replicas = vec![2];
    let nodes = vec![NodeInfo::up(1.0); 3];
    let plan = rebalance(
        &ranks,
        &nodes,
        &MoveCostModel::default(),
        1000,
        1,
        &BalanceConfig::default(),
    )
    .unwrap();
    let m = plan
        .moves
        .iter()
        .find(|m| m.rank == 3)
        .expect("rank 3 moves");
    assert_eq!((m.to, m.to_replica, m.bytes), (2, true, 10));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let nodes = vec![NodeInfo::up(1.0)];
    let nan = vec![RankInfo::with_weight(f64::NAN)];
    assert!(matches!(
        place(&nan, &nodes),
        Err(BalanceError::InvalidWeight { rank: 0, .. })
    ));
    let lost = vec![RankInfo {
        node: Some(5),
        ..RankInfo::with_weight(1.0)
    }];
    let err = rebalance(
        &lost,
        &nodes,
        &MoveCostModel::default(),
        1,
        1,
        &BalanceConfig::default(),
    );
    assert_eq!(err, Err(BalanceError::UnknownNode { rank: 0, node: 5 }));
    let down = vec![NodeInfo {
        state: NodeState::Dead,
        ..NodeInfo::up(1.0)
    }];
    assert_eq!(
        place(&[RankInfo::with_weight(1.0)], &down),
        Err(BalanceError::NoFeasibleNode { rank: 0 })
    );
}

#[test]
fn a_rank_whose_state_is_only_on_its_replicas_goes_only_to_them() {
    // Node 0 is dead; node 2 holds the replica although node 1 is emptier.
    let nodes = vec![
        NodeInfo {
            state: NodeState::Dead,
            ..NodeInfo::up(1.0)
        },
        NodeInfo::up(4.0),
        NodeInfo::up(1.0),
    ];
    let lost = RankInfo {
        node: Some(0),
        replicas: vec![2],
        needs_replica: true,
        ..RankInfo::with_weight(1.0)
    };
    let plan = rebalance(
        std::slice::from_ref(&lost),
        &nodes,
        &MoveCostModel::default(),
        10,
        0,
        &BalanceConfig::default(),
    )
    .unwrap();
    assert_eq!(plan.forced.len(), 1);
    assert_eq!(plan.forced[0].to, 2);
    // With its only holder dead too, no node can take it.
    let orphan = RankInfo {
        replicas: vec![0],
        ..lost
    };
    let err = rebalance(
        &[orphan],
        &nodes,
        &MoveCostModel::default(),
        10,
        0,
        &BalanceConfig::default(),
    )
    .unwrap_err();
    assert_eq!(err, BalanceError::NoFeasibleNode { rank: 0 });
}

proptest! {
    /// `evacuate` makes exactly `rebalance`'s forced moves.
    #[test]
    fn evacuate_makes_the_forced_moves_of_rebalance(
        weights in proptest::collection::vec(0.1f64..5.0, 1..40),
        caps in proptest::collection::vec(0.5f64..4.0, 2..8),
        lost in any::<u64>(),
    ) {
        let mut nodes: Vec<NodeInfo> = caps.iter().map(|&c| NodeInfo::up(c)).collect();
        let dead = (lost as usize) % nodes.len();
        nodes[dead].state = NodeState::Dead;
        let ranks: Vec<RankInfo> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| RankInfo {
                node: Some((i % nodes.len()) as u32),
                ..RankInfo::with_weight(w)
            })
            .collect();
        let forced_only = BalanceConfig { max_moves: 0, ..BalanceConfig::default() };
        let plan = rebalance(&ranks, &nodes, &MoveCostModel::default(), 0, 0, &forced_only).unwrap();
        let staying = ranks
            .iter()
            .filter(|r| r.node != Some(dead as u32))
            .map(|r| (r.node.unwrap(), r.weight, r.state_bytes, r.class));
        let homeless: Vec<(u32, RankInfo)> = ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| r.node == Some(dead as u32))
            .map(|(i, r)| (i as u32, RankInfo { node: None, ..r.clone() }))
            .collect();
        let moves = evacuate(&nodes, staying, &homeless).unwrap();
        let key = |m: &Move| (m.rank, m.to);
        let mut a: Vec<_> = plan.forced.iter().map(key).collect();
        let mut b: Vec<_> = moves.iter().map(key).collect();
        a.sort_unstable();
        b.sort_unstable();
        prop_assert_eq!(a, b);
    }
}
