//! The core on a fake clock (a base `Instant` plus durations) with scripted
//! events: no sockets, threads or processes.

use super::outgoing::{MAX_RETRIES, RETRY_DELAY};
use super::*;
use pm_core::proto::Peer;

pub(super) const HB: Duration = Duration::from_millis(200);

pub(super) struct Fake {
    pub(super) core: AgentCore,
    t0: Instant,
}

impl Fake {
    /// Node 0 of a job, offering 2 CPUs, without a cgroup.
    pub(super) fn new() -> Self {
        Self::with_cgroup(false)
    }

    pub(super) fn with_cgroup(cgroup: bool) -> Self {
        let t0 = Instant::now();
        let cfg = Config {
            job: "job".into(),
            node: NodeId(0),
            heartbeat: HB,
            cpus: 2.0,
            cgroup,
        };
        let mut f = Self {
            core: AgentCore::new(cfg, t0),
            t0,
        };
        // The first heartbeat, due at once.
        f.core.handle_timeout(t0);
        f.actions();
        f
    }

    /// Rank 0 runs here (connection 1) with `partners`.
    pub(super) fn with_rank_0(partners: &[u32]) -> Self {
        let mut f = Self::new();
        f.place(0, 1, &[0], &[(0, partners)]);
        f.rank(0, 1, 0, 100);
        f
    }

    /// Rank 0 runs here with partner 1, which failed to store epoch 1.
    pub(super) fn with_a_failed_partner() -> Self {
        let mut f = Self::with_rank_0(&[1]);
        f.publish(0, 1, 0, 1);
        f.replicated(10, 0, 1, 1, false);
        f.finished(10, 0, 1);
        f
    }

    pub(super) fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    pub(super) fn on(&mut self, ms: u64, ev: Event) -> Vec<Action> {
        self.core.handle(ev, self.at(ms));
        self.actions()
    }

    pub(super) fn tick(&mut self, ms: u64) -> Vec<Action> {
        self.core.handle_timeout(self.at(ms));
        self.actions()
    }

    pub(super) fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    pub(super) fn launcher(&mut self, ms: u64, msg: ToAgent) -> Vec<Action> {
        self.on(ms, Event::Launcher(msg))
    }

    pub(super) fn commit(&mut self, ms: u64, epoch: u64, step: u64, ranks: u32) -> Vec<Action> {
        self.launcher(ms, ToAgent::Commit { epoch, step, ranks })
    }

    pub(super) fn lost(&mut self, ms: u64, reason: &str) -> Vec<Action> {
        let reason = reason.into();
        self.on(ms, Event::LauncherLost { reason })
    }

    pub(super) fn place(
        &mut self,
        ms: u64,
        generation: u64,
        local: &[u32],
        partners: &[(u32, &[u32])],
    ) -> Vec<Action> {
        let msg = ToAgent::Placement {
            generation,
            local: local.to_vec(),
            partners: partners
                .iter()
                .map(|(r, p)| (*r, p.iter().map(|&n| NodeId(n)).collect()))
                .collect(),
            peers: (0..4)
                .map(|n| Peer {
                    node: NodeId(n),
                    control: format!("127.0.0.{}:4000", n + 1).into(),
                })
                .collect(),
        };
        self.launcher(ms, msg)
    }

    /// A rank connection `conn` of process `pid` that said Hello.
    pub(super) fn rank(&mut self, ms: u64, conn: ConnId, rank: u32, pid: u32) -> Vec<Action> {
        self.on(
            ms,
            Event::RankConnected {
                conn,
                peer_pid: pid,
            },
        );
        self.on(
            ms,
            Event::Rank {
                conn,
                msg: FromRank::Hello { rank, pid },
            },
        )
    }

    pub(super) fn publish(&mut self, ms: u64, conn: ConnId, rank: u32, epoch: u64) -> Vec<Action> {
        let msg = FromRank::Published {
            rank,
            epoch,
            step: epoch * 10,
            state_bytes: 100,
            written_bytes: 10,
        };
        self.on(ms, Event::Rank { conn, msg })
    }

    pub(super) fn import(
        &mut self,
        ms: u64,
        conn: ConnId,
        job: &str,
        rank: u32,
        epoch: u64,
    ) -> Vec<Action> {
        let request = Ok(ImportRequest {
            job: job.into(),
            rank,
            epoch,
            bytes: 1000,
        });
        self.on(ms, Event::ImportRequested { conn, request })
    }

    pub(super) fn replicated(
        &mut self,
        ms: u64,
        rank: u32,
        epoch: u64,
        partner: u32,
        ok: bool,
    ) -> Vec<Action> {
        let result = if ok { Ok(()) } else { Err("down".into()) };
        let ev = Event::Replicated {
            rank,
            epoch,
            partner: NodeId(partner),
            result,
        };
        self.on(ms, ev)
    }

    pub(super) fn finished(&mut self, ms: u64, rank: u32, epoch: u64) -> Vec<Action> {
        self.on(
            ms,
            Event::ReplicationFinished {
                rank,
                epoch,
                error: None,
            },
        )
    }
}

pub(super) fn heartbeats(actions: &[Action]) -> Vec<(u64, Option<Waiting>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(FromAgent::Heartbeat { seq, waiting, .. }) => Some((*seq, *waiting)),
            _ => None,
        })
        .collect()
}

/// The (rank, epoch, partners) of every replication started.
pub(super) fn replications(actions: &[Action]) -> Vec<(u32, u64, Vec<u32>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Replicate { rank, epoch, to } => {
                Some((*rank, *epoch, to.iter().map(|t| t.node.0).collect()))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn sent(actions: &[Action]) -> Vec<&FromAgent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) if !matches!(m, FromAgent::Heartbeat { .. }) => Some(m),
            _ => None,
        })
        .collect()
}

use pm_core::proto::Waiting;

#[test]
fn heartbeats_come_on_time_from_the_timer() {
    let mut f = Fake::new();
    assert_eq!(f.core.poll_timeout(), Some(f.at(200)));
    assert!(heartbeats(&f.tick(199)).is_empty());
    assert_eq!(heartbeats(&f.tick(200)), [(1, None)]);
    assert_eq!(f.core.poll_timeout(), Some(f.at(400)));
    // A loop that fell behind sends one heartbeat, then keeps the interval.
    assert_eq!(heartbeats(&f.tick(1000)), [(2, None)]);
    assert!(heartbeats(&f.tick(1100)).is_empty());
    assert_eq!(heartbeats(&f.tick(1200)), [(3, None)]);
}

#[test]
fn a_placement_waits_for_an_import_and_heartbeats_say_so() {
    let mut f = Fake::new();
    let a = f.place(0, 1, &[0], &[(0, &[1])]);
    assert!(sent(&a).contains(&&FromAgent::PlacementApplied { generation: 1 }));
    // A partner sends rank 2's snapshot; then rank 2 is placed here.
    assert_eq!(
        f.import(10, 7, "job", 2, 5),
        [Action::StartImport { conn: 7 }]
    );
    let a = f.place(20, 2, &[0, 2], &[(0, &[1]), (2, &[3])]);
    assert!(sent(&a).is_empty(), "{a:?}");
    let waiting = Waiting {
        generation: 2,
        imports: 1,
        bytes_left: 1000,
    };
    assert_eq!(heartbeats(&f.tick(200)), [(1, Some(waiting))]);
    // The import learns what it has to move, then moves some of it.
    f.on(
        210,
        Event::ImportProgress {
            conn: 7,
            bytes_left: 600,
        },
    );
    f.on(
        220,
        Event::ImportProgress {
            conn: 7,
            bytes_left: 250,
        },
    );
    let waiting = Waiting {
        bytes_left: 250,
        ..waiting
    };
    assert_eq!(heartbeats(&f.tick(400)), [(2, Some(waiting))]);
    // Another replica of rank 2 is refused now: it runs here.
    let a = f.import(410, 8, "job", 2, 5);
    assert!(
        matches!(
            &a[..],
            [Action::Answer {
                conn: 8,
                reply: FromPartner::Refused { .. }
            }]
        ),
        "{a:?}"
    );
    // The import ends: it is answered, the placement applied, the import
    // store forgotten, and rank 2's partner filled with nothing (no commit,
    // no publish).
    let a = f.on(
        500,
        Event::ImportFinished {
            conn: 7,
            result: Ok(()),
        },
    );
    assert_eq!(
        a[0],
        Action::Answer {
            conn: 7,
            reply: FromPartner::Stored { rank: 2, epoch: 5 }
        }
    );
    assert!(
        a.contains(&Action::ForgetImportStores { ranks: vec![2] }),
        "{a:?}"
    );
    assert!(sent(&a).contains(&&FromAgent::PlacementApplied { generation: 2 }));
    assert_eq!(heartbeats(&f.tick(600)), [(3, None)]);
}

#[test]
fn a_newer_publish_supersedes_a_queued_one() {
    let mut f = Fake::with_rank_0(&[1, 2]);
    let a = f.publish(10, 1, 0, 1);
    assert!(
        sent(&a)
            .iter()
            .any(|m| matches!(m, FromAgent::Published { epoch: 1, .. }))
    );
    assert_eq!(replications(&a), [(0, 1, vec![1, 2])]);
    // Epochs 2 and 3 arrive while 1 replicates: only 3 goes next.
    assert!(replications(&f.publish(20, 1, 0, 2)).is_empty());
    assert!(replications(&f.publish(30, 1, 0, 3)).is_empty());
    f.replicated(40, 0, 1, 1, true);
    f.replicated(41, 0, 1, 2, true);
    assert_eq!(replications(&f.finished(42, 0, 1)), [(0, 3, vec![1, 2])]);
    assert!(replications(&f.finished(50, 0, 3)).is_empty());
}

#[test]
fn a_failed_partner_is_retried_with_backoff_a_bounded_number_of_times() {
    let mut f = Fake::with_rank_0(&[1, 2]);
    f.publish(0, 1, 0, 1);
    let a = f.replicated(10, 0, 1, 1, false);
    assert!(matches!(
        sent(&a)[..],
        [FromAgent::ReplicaFailed {
            rank: 0,
            epoch: 1,
            partner: NodeId(1),
            ..
        }]
    ));
    let a = f.replicated(11, 0, 1, 2, true);
    assert!(matches!(
        sent(&a)[..],
        [FromAgent::ReplicaStored {
            holder: NodeId(2),
            ..
        }]
    ));
    let mut now = 12;
    assert!(replications(&f.finished(now, 0, 1)).is_empty());
    // 250 ms, 500 ms, 1 s, then 2 s between tries; only the partner that failed.
    for attempt in 0..MAX_RETRIES {
        let delay = RETRY_DELAY.as_millis() as u64 * 2u64.pow(attempt.min(3));
        assert!(replications(&f.tick(now + delay - 1)).is_empty());
        now += delay;
        assert_eq!(
            replications(&f.tick(now)),
            [(0, 1, vec![1])],
            "retry {attempt}"
        );
        f.replicated(now, 0, 1, 1, false);
        f.finished(now, 0, 1);
    }
    // Given up after MAX_RETRIES retries.
    assert!(replications(&f.tick(now + 10_000)).is_empty());
}

#[test]
fn a_due_retry_waits_for_the_running_replication_without_spinning_the_timer() {
    let mut f = Fake::with_a_failed_partner();
    // Partner 2 is added and filled; the retry of 1 falls due meanwhile.
    assert_eq!(
        replications(&f.place(20, 2, &[0], &[(0, &[1, 2])])),
        [(0, 1, vec![2])]
    );
    assert!(replications(&f.tick(1000)).is_empty());
    assert_eq!(
        f.core.poll_timeout(),
        Some(f.at(1200)),
        "the next heartbeat"
    );
    f.replicated(1010, 0, 1, 2, true);
    assert_eq!(replications(&f.finished(1010, 0, 1)), [(0, 1, vec![1])]);
}

#[test]
fn no_retry_once_the_node_is_no_partner() {
    let mut f = Fake::with_a_failed_partner();
    // pmrun replaces partner 1 by 2: 2 is filled with the epoch in flight.
    let a = f.place(20, 2, &[0], &[(0, &[2])]);
    assert_eq!(replications(&a), [(0, 1, vec![2])]);
    f.replicated(30, 0, 1, 2, true);
    f.finished(30, 0, 1);
    assert!(replications(&f.tick(10_000)).is_empty());
}

#[test]
fn no_retry_once_a_newer_epoch_came() {
    let mut f = Fake::with_a_failed_partner();
    assert_eq!(replications(&f.publish(20, 1, 0, 2)), [(0, 2, vec![1])]);
    f.replicated(30, 0, 2, 1, true);
    f.finished(30, 0, 2);
    assert!(replications(&f.tick(10_000)).is_empty());
    // A failure of an epoch that a newer one already superseded sets no
    // retry: the newer one goes next.
    f.publish(10_100, 1, 0, 3);
    f.publish(10_110, 1, 0, 4);
    f.replicated(10_120, 0, 3, 1, false);
    assert_eq!(replications(&f.finished(10_120, 0, 3)), [(0, 4, vec![1])]);
    f.replicated(10_130, 0, 4, 1, true);
    f.finished(10_130, 0, 4);
    assert!(replications(&f.tick(20_000)).is_empty());
}

#[test]
fn new_partners_are_filled_with_the_committed_epoch_and_the_one_in_flight() {
    let mut f = Fake::new();
    f.place(0, 1, &[0, 1], &[(0, &[1]), (1, &[1])]);
    f.rank(0, 1, 0, 100);
    f.publish(0, 1, 0, 3);
    f.replicated(5, 0, 3, 1, true);
    f.finished(5, 0, 3);
    let a = f.commit(6, 3, 30, 4);
    let commit = Commit {
        epoch: 3,
        step: 30,
        ranks: 4,
    };
    assert_eq!(a, [Action::Files(FileJob::Commit(commit))]);
    f.publish(7, 1, 0, 4);
    f.replicated(8, 0, 4, 1, true);
    f.finished(8, 0, 4);
    // Rank 0 gets partner 2 besides 1; rank 1 keeps its partner; rank 5
    // arrives (its partners are all new to this node).
    let a = f.place(10, 2, &[0, 1, 5], &[(0, &[1, 2]), (1, &[1]), (5, &[3])]);
    assert_eq!(replications(&a), [(0, 3, vec![2]), (5, 3, vec![3])]);
    assert!(a.contains(&Action::ForgetImportStores { ranks: vec![5] }));
    // Then the epoch in flight (newer than the committed one) to the new partner.
    f.replicated(20, 0, 3, 2, true);
    assert_eq!(replications(&f.finished(20, 0, 3)), [(0, 4, vec![2])]);
    // The targets carry the peers' addresses.
    let Some(Action::Replicate { to, .. }) =
        a.iter().find(|a| matches!(a, Action::Replicate { .. }))
    else {
        unreachable!()
    };
    assert_eq!(to[0].addr.as_deref(), Some("127.0.0.3:4000"));
}

#[test]
fn a_rank_that_leaves_stops_replicating() {
    let mut f = Fake::new();
    f.place(0, 1, &[0, 1], &[(0, &[1]), (1, &[1])]);
    let a = f.place(10, 2, &[1], &[(1, &[1])]);
    assert!(a.contains(&Action::StopReplicating { rank: 0 }));
    // A late publish of rank 0 is forwarded, not replicated.
    f.rank(20, 1, 0, 100);
    let a = f.publish(20, 1, 0, 9);
    assert_eq!(sent(&a).len(), 1);
    assert!(replications(&a).is_empty());
}

#[test]
fn imports_are_refused_for_a_local_rank_or_another_job() {
    let mut f = Fake::new();
    f.place(0, 1, &[0], &[(0, &[1])]);
    let refused = |a: &[Action]| match a {
        [
            Action::Answer {
                conn: 3,
                reply: FromPartner::Refused { reason },
            },
        ] => reason.clone(),
        other => panic!("{other:?}"),
    };
    let why = refused(&f.import(10, 3, "job", 0, 1));
    assert!(why.contains("runs on this node"), "{why}");
    let why = refused(&f.import(10, 3, "other", 1, 1));
    assert!(why.contains("\"other\""), "{why}");
    let bad = Event::ImportRequested {
        conn: 3,
        request: Err("the announcement is inconsistent".into()),
    };
    assert_eq!(refused(&f.on(10, bad)), "the announcement is inconsistent");
    // Two sources for one rank: the second waits for the first.
    assert_eq!(
        f.import(20, 4, "job", 1, 1),
        [Action::StartImport { conn: 4 }]
    );
    assert!(f.import(21, 5, "job", 1, 2).is_empty());
    let a = f.on(
        30,
        Event::ImportFinished {
            conn: 4,
            result: Err("broken".into()),
        },
    );
    assert_eq!(
        a,
        [
            Action::Answer {
                conn: 4,
                reply: FromPartner::Refused {
                    reason: "broken".into()
                }
            },
            Action::StartImport { conn: 5 }
        ]
    );
}

#[test]
fn a_replica_of_the_committed_epoch_is_marked_committed() {
    let mut f = Fake::new();
    f.commit(0, 4, 40, 2);
    f.on(1, Event::Files(FileDone::Written));
    f.import(10, 3, "job", 1, 4);
    let a = f.on(
        20,
        Event::ImportFinished {
            conn: 3,
            result: Ok(()),
        },
    );
    let commit = Commit {
        epoch: 4,
        step: 40,
        ranks: 2,
    };
    assert_eq!(
        a[0],
        Action::Files(FileJob::MarkCommitted { rank: 1, commit })
    );
}

#[test]
fn kill_ranks_names_only_ranks_whose_connection_is_open() {
    let mut f = Fake::new();
    f.rank(0, 1, 0, 100);
    f.rank(0, 2, 1, 101);
    f.on(
        0,
        Event::RankConnected {
            conn: 3,
            peer_pid: 102,
        },
    ); // no Hello yet
    f.on(5, Event::RankClosed { conn: 2 });
    let a = f.launcher(10, ToAgent::KillRanks);
    assert_eq!(
        a,
        [
            Action::Kill { conns: vec![1] },
            Action::Send(FromAgent::RanksKilled { ranks: vec![0] })
        ]
    );
}

#[test]
fn a_rank_whose_hello_disagrees_with_its_peer_credentials_is_rejected() {
    let mut f = Fake::new();
    f.on(
        0,
        Event::RankConnected {
            conn: 1,
            peer_pid: 100,
        },
    );
    let a = f.on(
        0,
        Event::Rank {
            conn: 1,
            msg: FromRank::Hello { rank: 0, pid: 555 },
        },
    );
    assert_eq!(a, [Action::CloseRank { conn: 1 }]);
    // It is no rank of this node: KillRanks does not name it.
    let a = f.launcher(10, ToAgent::KillRanks);
    assert_eq!(a[0], Action::Kill { conns: vec![] });
    // A publish for another rank than the connection's is rejected too.
    f.rank(20, 2, 0, 200);
    let msg = FromRank::Published {
        rank: 1,
        epoch: 1,
        step: 1,
        state_bytes: 1,
        written_bytes: 1,
    };
    assert_eq!(
        f.on(30, Event::Rank { conn: 2, msg }),
        [Action::CloseRank { conn: 2 }]
    );
}

#[test]
fn losing_the_launcher_kills_the_ranks_after_the_grace_then_exits() {
    let mut f = Fake::new();
    f.rank(0, 1, 0, 100);
    f.rank(0, 2, 1, 101);
    assert!(f.lost(100, "pmrun closed the connection").is_empty());
    assert_eq!(f.core.poll_timeout(), Some(f.at(100) + LAUNCHER_GRACE));
    // No heartbeats to a launcher that is gone, and no kill yet.
    assert!(f.tick(900).is_empty());
    let a = f.tick(1100);
    assert_eq!(a, [Action::Kill { conns: vec![1, 2] }, Action::Exit]);
    assert!(f.core.has_exited());
    assert_eq!(f.core.poll_timeout(), None);
}

#[test]
fn losing_the_launcher_waits_for_a_commit_record_being_written() {
    let mut f = Fake::new();
    f.commit(0, 1, 1, 1);
    f.lost(10, "gone");
    assert_eq!(f.tick(1010), [Action::Kill { conns: vec![] }]);
    assert_eq!(f.on(1020, Event::Files(FileDone::Written)), [Action::Exit]);
}

#[test]
fn exit_keeps_the_files_and_delete_job_deletes_them_first() {
    let mut f = Fake::new();
    f.rank(0, 1, 0, 100);
    // Exit: no kill, no deletion.
    assert_eq!(f.launcher(10, ToAgent::Exit), [Action::Exit]);
    // pmrun closing the link afterwards changes nothing.
    assert!(f.lost(20, "closed").is_empty());

    let mut f = Fake::new();
    let a = f.launcher(10, ToAgent::DeleteJob);
    assert_eq!(a, [Action::Files(FileJob::DeleteJob)]);
    assert!(f.lost(15, "closed").is_empty());
    assert!(f.tick(1500).is_empty(), "no kill: pmrun ended the job");
    // Imports are refused while the agent stops.
    let a = f.import(20, 3, "job", 1, 1);
    assert!(matches!(
        &a[..],
        [Action::Answer {
            reply: FromPartner::Refused { .. },
            ..
        }]
    ));
    assert_eq!(f.on(30, Event::Files(FileDone::Deleted)), [Action::Exit]);
}

#[test]
fn exit_does_not_wait_for_ever_for_a_stuck_file_job() {
    let mut f = Fake::new();
    f.commit(0, 1, 1, 1);
    assert!(f.launcher(10, ToAgent::Exit).is_empty());
    assert_eq!(f.core.poll_timeout(), Some(f.at(10) + EXIT_WAIT));
    assert_eq!(f.tick(10 + EXIT_WAIT.as_millis() as u64), [Action::Exit]);
}

#[test]
fn inventory_is_scanned_off_the_loop_and_sent() {
    let mut f = Fake::new();
    assert_eq!(
        f.launcher(0, ToAgent::Inventory),
        [Action::Files(FileJob::Inventory)]
    );
    let inv = Inventory {
        committed: Some((3, 30, 4)),
        ranks: vec![(0, vec![2, 3])],
    };
    assert_eq!(
        f.on(5, Event::Files(FileDone::Inventory(inv.clone()))),
        [Action::Send(FromAgent::Inventory(inv))]
    );
}
