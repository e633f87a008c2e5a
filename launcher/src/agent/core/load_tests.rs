//! The core's load rules on the fake clock of `tests.rs`: rank loads and
//! their shares, the node's gossip record and rounds, and `SetCpus` (a
//! cgroup quota, or a duty cycle that never leaves a rank stopped).

use super::tests::{Fake, HB, heartbeats};
use super::*;
use pm_core::gossip::{LoadRecord, Message};
use pm_core::proto::RankLoad;

fn load(rank: u32, steps: u64, compute_s: f64) -> RankLoad {
    RankLoad {
        rank,
        step: 100,
        window_steps: steps,
        compute_s,
        compute_sq_s2: compute_s * compute_s / steps as f64,
        cpu_s: compute_s,
        io_wait_s: 0.0,
        state_bytes: 4096,
        total_steps: Some(1000),
    }
}

fn report(f: &mut Fake, ms: u64, conn: ConnId, l: RankLoad) -> Vec<Action> {
    f.on(
        ms,
        Event::Rank {
            conn,
            msg: FromRank::Load(l),
        },
    )
}

/// What `pick` finds in the actions, in order.
fn picked<T>(actions: &[Action], pick: impl Fn(&Action) -> Option<T>) -> Vec<T> {
    actions.iter().filter_map(pick).collect()
}

/// The shares of the rank loads sent to pmrun.
fn shares(actions: &[Action]) -> Vec<(u32, f64)> {
    picked(actions, |a| match a {
        Action::Send(FromAgent::RankLoad { load, share }) => Some((load.rank, *share)),
        _ => None,
    })
}

/// The records of every `FromAgent::Gossip` sent.
fn windows(actions: &[Action]) -> Vec<Vec<LoadRecord>> {
    picked(actions, |a| match a {
        Action::Send(FromAgent::Gossip { records }) => Some(records.clone()),
        _ => None,
    })
}

/// The peers and the decoded message of every gossip round.
fn rounds(actions: &[Action]) -> Vec<(Vec<Target>, Message)> {
    picked(actions, |a| match a {
        Action::Gossip { to, message } => Some((to.clone(), Message::decode(message).unwrap())),
        _ => None,
    })
}

fn signals(actions: &[Action]) -> Vec<(Vec<ConnId>, RankSignal)> {
    picked(actions, |a| match a {
        Action::Signal { conns, signal } => Some((conns.clone(), *signal)),
        _ => None,
    })
}

fn cpus_set(actions: &[Action]) -> Vec<(f64, Result<String, String>)> {
    picked(actions, |a| match a {
        Action::Send(FromAgent::CpusSet { cpus, enforced }) => Some((*cpus, enforced.clone())),
        _ => None,
    })
}

/// The node's own record in the next round's window to pmrun.
fn own_record(f: &mut Fake, ms: u64) -> LoadRecord {
    let w = windows(&f.tick(ms));
    assert_eq!(w.len(), 1, "one round");
    assert_eq!(w[0][0].node, 0, "its own record first");
    w[0][0]
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn a_rank_load_goes_to_pmrun_with_its_share_of_the_nodes_capacity() {
    let mut f = Fake::new();
    f.place(0, 1, &[0, 1, 2, 3], &[]);
    f.rank(0, 1, 0, 100);
    // 2 CPUs among 4 ranks: half a core each.
    let l = load(0, 10, 1.0);
    let a = report(&mut f, 10, 1, l.clone());
    assert_eq!(
        a,
        [Action::Send(FromAgent::RankLoad {
            load: l,
            share: 0.5
        })]
    );
    // Other processes leave the ranks a quarter of the CPUs: an eighth each.
    f.on(20, Event::Availability { value: 0.25 });
    assert_eq!(
        shares(&report(&mut f, 30, 1, load(0, 10, 1.0))),
        [(0, 0.125)]
    );
    // Alone on 2 CPUs (of which half is left): a whole core at most.
    f.on(40, Event::Availability { value: 0.5 });
    f.place(50, 2, &[0], &[]);
    assert_eq!(shares(&report(&mut f, 60, 1, load(0, 10, 1.0))), [(0, 1.0)]);
    // A load for another rank than the connection's is a protocol error.
    let a = report(&mut f, 70, 1, load(3, 10, 1.0));
    assert_eq!(a, [Action::CloseRank { conn: 1 }]);
}

#[test]
fn the_own_record_is_the_nodes_finish_time_per_step_and_its_capacity() {
    let mut f = Fake::new();
    f.place(0, 1, &[0, 1], &[]);
    f.rank(0, 1, 0, 100);
    f.rank(0, 2, 1, 101);
    // Before any report the node has no work.
    let r = own_record(&mut f, 200);
    assert_eq!((r.load, r.capacity), (0.0, 2.0));
    // Each rank has a whole core (2 CPUs, 2 ranks): 0.2 and 0.4 s per step.
    report(&mut f, 210, 1, load(0, 10, 2.0));
    report(&mut f, 220, 2, load(1, 5, 2.0));
    let a = f.tick(400);
    let Some(Action::Send(FromAgent::Heartbeat { load: hb, .. })) = a
        .iter()
        .find(|a| matches!(a, Action::Send(FromAgent::Heartbeat { .. })))
    else {
        panic!("no heartbeat in {a:?}")
    };
    assert!(close(hb.step_seconds, 0.6) && hb.cpus == 2.0, "{hb:?}");
    let r = windows(&a)[0][0];
    assert!(
        close(r.load.into(), 0.6 / 2.0) && r.capacity == 2.0,
        "{r:?}"
    );
    let version = r.version;
    // Measured availability 0.01 counts as 0.05: capacity 0.1, and the
    // ranks' shares (so their work) shrink with it.
    f.on(410, Event::Availability { value: 0.01 });
    report(&mut f, 420, 1, load(0, 10, 2.0));
    report(&mut f, 430, 2, load(1, 5, 2.0));
    let r = own_record(&mut f, 600);
    assert!(close(r.capacity.into(), 0.1), "{r:?}");
    assert!(close(r.load.into(), (0.2 + 0.4) * 0.05 / 0.1), "{r:?}");
    assert!(r.version > version, "a change is news");
    // The same again is no news: the version stays.
    let again = own_record(&mut f, 800);
    assert_eq!(again.version, r.version);
    // A rank placed elsewhere no longer counts.
    f.place(810, 2, &[1], &[]);
    let r = own_record(&mut f, 1000);
    assert!(close(r.load.into(), 0.4 * 0.05 / 0.1), "{r:?}");
}

#[test]
fn a_gossip_round_goes_to_peers_every_heartbeat_period_and_its_window_to_pmrun() {
    let mut f = Fake::new();
    f.place(0, 1, &[0], &[(0, &[1])]);
    for n in 1..=5u64 {
        let ms = n * HB.as_millis() as u64;
        assert!(
            rounds(&f.tick(ms - 1)).is_empty(),
            "no round before its time"
        );
        let a = f.tick(ms);
        assert_eq!(heartbeats(&a).len(), 1);
        let r = rounds(&a);
        assert_eq!(r.len(), 1, "one round per period: {a:?}");
        let (to, msg) = &r[0];
        // 4 members (nodes 0..4, itself included): fan-out 2, never itself.
        let mut nodes: Vec<u32> = to.iter().map(|t| t.node.0).collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(nodes.len(), 2, "{to:?}");
        assert!(nodes.iter().all(|&n| (1..4).contains(&n)), "{to:?}");
        for t in to {
            let addr = format!("127.0.0.{}:4000", t.node.0 + 1);
            assert_eq!(t.addr.as_deref(), Some(addr.as_str()));
        }
        assert_eq!((msg.from, msg.records[0].node), (0, 0));
        assert_eq!(windows(&a).len(), 1, "the window goes to pmrun each round");
    }
    // Before any placement the node knows no peer: pmrun still gets its record.
    let mut alone = Fake::new();
    let a = alone.tick(HB.as_millis() as u64);
    assert!(rounds(&a).is_empty());
    assert_eq!(windows(&a).len(), 1);
    // No rounds once pmrun is gone.
    f.lost(1010, "gone");
    assert!(rounds(&f.tick(1200)).is_empty());
}

#[test]
fn received_gossip_updates_the_window_sent_to_pmrun() {
    let mut f = Fake::new();
    f.place(0, 1, &[0], &[]);
    let record = |node, load| LoadRecord {
        node,
        version: 3,
        version_age: 1,
        age: 0,
        load,
        capacity: 4.0,
    };
    let msg = Message {
        from: 2,
        records: vec![record(2, 1.5), record(7, 0.5)],
    };
    let message = msg.encode().unwrap();
    assert!(f.on(10, Event::Gossip { message }).is_empty());
    // Garbage is dropped without harm.
    let garbage = Event::Gossip {
        message: vec![0xff; 600],
    };
    assert!(f.on(20, garbage).is_empty());
    let w = windows(&f.tick(200));
    let mut held: Vec<(u32, f32)> = w[0][1..].iter().map(|r| (r.node, r.load)).collect();
    held.sort_by_key(|r| r.0);
    assert_eq!(held, [(2, 1.5), (7, 0.5)]);
    // Nodes that are not peers are held too: records spread beyond them.
    let newer = Message {
        from: 3,
        records: vec![LoadRecord {
            version: 4,
            ..record(7, 2.5)
        }],
    };
    f.on(
        210,
        Event::Gossip {
            message: newer.encode().unwrap(),
        },
    );
    let w = windows(&f.tick(400));
    assert!(w[0].iter().any(|r| r.node == 7 && r.load == 2.5), "{w:?}");
}

#[test]
fn set_cpus_with_a_cgroup_writes_the_quota_then_answers_and_capacity_follows() {
    let mut f = Fake::with_cgroup(true);
    f.rank(0, 1, 0, 100);
    // The quota is what the node gets: nothing is measured, nothing heeded.
    let a = f.tick(200);
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::MeasureAvailability { .. }))
    );
    f.on(210, Event::Availability { value: 0.1 });
    assert_eq!(own_record(&mut f, 400).capacity, 2.0);

    let a = f.launcher(410, ToAgent::SetCpus { cpus: 0.5 });
    assert_eq!(a, [Action::Files(FileJob::SetQuota { cpus: 0.5 })]);
    let how = "cgroup quota 50000 µs of every 100000 µs".to_string();
    let a = f.on(420, Event::Files(FileDone::Quota(Ok(how.clone()))));
    assert_eq!(cpus_set(&a), [(0.5, Ok(how))]);
    assert!(signals(&a).is_empty());
    assert_eq!(own_record(&mut f, 600).capacity, 0.5);
    // A quota that cannot be written leaves the CPUs as they were.
    f.launcher(610, ToAgent::SetCpus { cpus: 1.5 });
    let a = f.on(620, Event::Files(FileDone::Quota(Err("denied".into()))));
    assert_eq!(cpus_set(&a), [(0.5, Err("denied".into()))]);
}

/// Ranks 0 and 1 (connections 1 and 2) on a node of 2 CPUs without a
/// cgroup, given half a CPU at 10 ms: they run 25 ms of every 100.
fn duty_cycled() -> Fake {
    let mut f = Fake::new();
    f.place(0, 1, &[0, 1], &[]);
    f.rank(0, 1, 0, 100);
    f.rank(0, 2, 1, 101);
    let a = f.launcher(10, ToAgent::SetCpus { cpus: 0.5 });
    let set = cpus_set(&a);
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].0, 0.5);
    let how = set[0].1.as_ref().unwrap();
    assert!(
        how.starts_with("duty cycle") && how.contains("25.0 ms of every 100 ms"),
        "{how}"
    );
    f
}

#[test]
fn set_cpus_without_a_cgroup_stops_and_resumes_the_ranks_on_time() {
    let mut f = duty_cycled();
    let (stop, resume) = (
        (vec![1, 2], RankSignal::Stop),
        (vec![1, 2], RankSignal::Continue),
    );
    assert_eq!(f.core.poll_timeout(), Some(f.at(35)));
    assert!(signals(&f.tick(34)).is_empty());
    assert_eq!(signals(&f.tick(35)), vec![stop.clone()]);
    assert_eq!(f.core.poll_timeout(), Some(f.at(110)));
    assert!(signals(&f.tick(109)).is_empty());
    assert_eq!(signals(&f.tick(110)), vec![resume.clone()]);
    assert_eq!(signals(&f.tick(135)), vec![stop.clone()]);
    // A loop that fell behind starts the phase late, without a burst.
    assert_eq!(signals(&f.tick(400)), vec![resume.clone()]);
    assert_eq!(f.core.poll_timeout(), Some(f.at(425)));
    // Capacity follows: half a CPU (the ranks are stopped again at 600).
    let a = f.tick(600);
    assert_eq!(signals(&a), [stop]);
    assert_eq!(windows(&a)[0][0].capacity, 0.5);
    // More than the node offers ends the cycle, resuming the stopped ranks.
    let a = f.launcher(610, ToAgent::SetCpus { cpus: 4.0 });
    assert_eq!(signals(&a), [resume]);
    let set = cpus_set(&a);
    assert_eq!(set[0].0, 2.0, "without a quota, no more than offered");
    assert!(set[0].1.as_ref().unwrap().starts_with("duty cycle off"));
    assert!(signals(&f.tick(2000)).is_empty());
    // Nonsense is refused, the CPUs stay.
    let a = f.launcher(2010, ToAgent::SetCpus { cpus: f64::NAN });
    assert!(matches!(&cpus_set(&a)[..], [(2.0, Err(_))]), "{a:?}");
}

#[test]
fn every_rank_is_resumed_before_a_kill_an_exit_or_the_launcher_lost() {
    let stopped = || {
        let mut f = duty_cycled();
        assert_eq!(signals(&f.tick(35))[0].1, RankSignal::Stop);
        f
    };
    let resume = Action::Signal {
        conns: vec![1, 2],
        signal: RankSignal::Continue,
    };

    // A kill: resumed first; the cycle goes on for the next run's ranks.
    let mut f = stopped();
    let a = f.launcher(50, ToAgent::KillRanks);
    assert_eq!(a[0], resume);
    assert_eq!(a[1], Action::Kill { conns: vec![1, 2] });
    assert_eq!(f.core.poll_timeout(), Some(f.at(75)), "running again");
    assert_eq!(signals(&f.tick(75))[0].1, RankSignal::Stop);

    // pmrun lost: resumed at once, killed after the grace, never stopped again.
    let mut f = stopped();
    assert_eq!(f.lost(50, "gone"), vec![resume.clone()]);
    let a = f.tick(50 + LAUNCHER_GRACE.as_millis() as u64);
    assert_eq!(
        a,
        [Action::Kill { conns: vec![1, 2] }, Action::Exit],
        "no stop in between"
    );

    // Exit and DeleteJob: resumed before the agent exits.
    let mut f = stopped();
    assert_eq!(
        f.launcher(50, ToAgent::Exit),
        [resume.clone(), Action::Exit]
    );
    let mut f = stopped();
    let a = f.launcher(50, ToAgent::DeleteJob);
    assert_eq!(a, [Action::Files(FileJob::DeleteJob), resume]);
    assert!(signals(&f.tick(1000)).is_empty());
    assert_eq!(f.on(1010, Event::Files(FileDone::Deleted)), [Action::Exit]);

    // Running ranks need no resuming.
    let mut f = duty_cycled();
    assert_eq!(f.launcher(20, ToAgent::Exit), [Action::Exit]);
}

#[test]
fn the_ranks_processes_are_measured_each_heartbeat_without_a_cgroup() {
    let mut f = Fake::new();
    f.rank(0, 1, 0, 100);
    f.on(
        0,
        Event::RankConnected {
            conn: 2,
            peer_pid: 555,
        },
    ); // no Hello: not a rank yet
    let a = f.tick(200);
    assert!(
        a.contains(&Action::MeasureAvailability { pids: vec![100] }),
        "{a:?}"
    );
}
