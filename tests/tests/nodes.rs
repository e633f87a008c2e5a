//! Jobs on four virtual nodes under the real `pmrun`, `pmd` and `mpirun`,
//! with nodes SIGKILLed (agent and ranks) and drained: every job must end
//! with the checksum of an undisturbed run, restore from a committed epoch,
//! place nothing on a lost node, and leave no file behind.

use pm_core::proto::FromRank;
use pm_core::wire::{JobSecret, Limits, Role, Session, WIRE_VERSION};
use pm_tests::job::{
    Job, committed_epoch, files_under, heat_args, node, placement, reference, relaunch_epochs,
};
use pm_tests::mpi::{checksum, resumed_step};
use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;

/// The node tests share two cores; one at a time keeps their timing sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts the job ended well: success, the reference checksum, a resume
/// from a committed epoch, and no file of the job left in any store.
fn assert_recovered(ended: &pm_tests::job::Ended, store: &std::path::Path, reference: &str) {
    let out = &ended.output;
    assert!(ended.status.success(), "pmrun failed:\n{out}");
    assert_eq!(checksum(out).as_deref(), Some(reference), "{out}");
    assert!(resumed_step(out).is_some_and(|s| s > 0), "{out}");
    let left = files_under(store);
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}

#[test]
fn losing_a_node_with_one_replica_resumes_on_its_partner() {
    lose_one_node("lose-one", &[]);
}

/// Asynchronous epochs are replicated and committed like synchronous ones:
/// a node lost after some commits resumes from its partner, bit-exact.
#[test]
fn losing_a_node_with_asynchronous_checkpoints_resumes_on_its_partner() {
    let ended = lose_one_node("lose-one-async", &["--async"]);
    assert!(
        ended.output.contains("asynchronous checkpoints in "),
        "{}",
        ended.output
    );
}

fn lose_one_node(name: &str, extra: &[&str]) -> pm_tests::job::Ended {
    let _serial = serial();
    let reference = reference(8);
    let mut args = vec!["-n", "8", "--local-nodes", "4", "--every", "10"];
    args.extend(extra);
    let job = Job::start(name, &args, &heat_args(20), &[]);
    job.wait_for_commit(2);
    let before = job.status().unwrap();
    let partners_of_node2: Vec<String> = [2usize, 3]
        .iter()
        .map(|&r| before["partners"][r][0].as_str().unwrap().to_owned())
        .collect();
    job.kill_node(&before, "node2");
    let after = job.wait_for("the recovery", |s| {
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(node(&after, "node2")["health"], "dead");
    let places = placement(&after);
    assert!(!places.contains(&"node2".to_string()), "{places:?}");
    // The lost ranks went to the nodes that held their replicas.
    assert_eq!(&places[2..4], partners_of_node2.as_slice(), "{after}");
    let (ended, store) = job.finish();
    let epochs = relaunch_epochs(&ended.output);
    assert_eq!(epochs.len(), 1, "{}", ended.output);
    assert!(epochs[0] >= 2, "{}", ended.output);
    assert_recovered(&ended, store.path(), &reference);
    ended
}

#[test]
fn two_replicas_survive_losing_two_nodes_at_once() {
    let _serial = serial();
    let reference = reference(8);
    let job = Job::start(
        "lose-two",
        &[
            "-n",
            "8",
            "--local-nodes",
            "4",
            "--replicas",
            "2",
            "--every",
            "10",
        ],
        &heat_args(20),
        &[],
    );
    job.wait_for_commit(2);
    let before = job.status().unwrap();
    job.kill_node(&before, "node1");
    job.kill_node(&before, "node2");
    let after = job.wait_for("the recovery", |s| {
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
    });
    let places = placement(&after);
    assert!(
        places.iter().all(|p| p == "node3" || p == "node4"),
        "{places:?}"
    );
    let (ended, store) = job.finish();
    assert!(
        !relaunch_epochs(&ended.output).is_empty(),
        "{}",
        ended.output
    );
    assert_recovered(&ended, store.path(), &reference);
}

#[test]
fn a_node_lost_while_its_epoch_replicates_resumes_from_the_previous_one() {
    let _serial = serial();
    let reference = reference(8);
    // Every replica import waits 1.5 s before moving data, so an epoch is
    // always in flight while the ranks go on.
    let job = Job::start(
        "in-flight",
        &["-n", "8", "--local-nodes", "4", "--every", "10"],
        &heat_args(20),
        &[("PMD_FAULT_IMPORT_DELAY_MS", "1500")],
    );
    job.wait_for_commit(1);
    let status = job.wait_for("an epoch in flight", |s| {
        let committed = committed_epoch(s).unwrap_or(0);
        s["newest_published"]
            .as_u64()
            .is_some_and(|p| p > committed)
    });
    let in_flight = status["newest_published"].as_u64().unwrap();
    job.kill_node(&status, "node2");
    let (ended, store) = job.finish();
    let epochs = relaunch_epochs(&ended.output);
    assert!(!epochs.is_empty(), "{}", ended.output);
    assert!(
        epochs[0] < in_flight,
        "resumed from epoch {} though epoch {in_flight} was still replicating:\n{}",
        epochs[0],
        ended.output
    );
    assert_recovered(&ended, store.path(), &reference);
}

#[test]
fn a_lost_replica_holder_is_replaced_and_filled_before_its_node_is_lost() {
    let _serial = serial();
    let reference = reference(8);
    // No periodic checkpoints: the only committed epoch is the one asked
    // for, so the second recovery can only use the replica the replacement
    // partner was filled with.
    let job = Job::start(
        "holder",
        &["-n", "8", "--local-nodes", "4", "--every", "100000"],
        &heat_args(30),
        &[],
    );
    job.wait_for_ranks(8);
    let (ok, reply) = job.ctl(&["checkpoint"]);
    assert!(ok, "{reply}");
    let status = job.status().unwrap();
    let epoch = committed_epoch(&status).unwrap();
    let holder = status["partners"][2][0].as_str().unwrap().to_owned();
    assert_eq!(holder, "node3");
    job.kill_node(&status, &holder);
    // Ranks 2 and 3 (node2) get a new partner, filled with the committed epoch.
    let filled = job.wait_for("the replacement partner to be filled", |s| {
        let holders = s["committed_holders"][2]
            .as_array()
            .cloned()
            .unwrap_or_default();
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
            && holders
                .iter()
                .any(|h| h != "node2" && h != "node3" && h.is_string())
    });
    assert_eq!(committed_epoch(&filled), Some(epoch));
    let replacement = filled["partners"][2][0].as_str().unwrap().to_owned();
    assert_ne!(replacement, "node3");
    job.kill_node(&filled, "node2");
    let after = job.wait_for("the second recovery", |s| {
        s["recoveries"].as_array().is_some_and(|r| r.len() == 2)
    });
    assert_eq!(placement(&after)[2], replacement, "{after}");
    let (ended, store) = job.finish();
    assert_eq!(
        relaunch_epochs(&ended.output),
        [epoch, epoch],
        "{}",
        ended.output
    );
    assert_recovered(&ended, store.path(), &reference);
}

#[test]
fn a_drained_node_is_left_with_no_rank() {
    let _serial = serial();
    let reference = reference(8);
    let job = Job::start(
        "drain",
        &["-n", "8", "--local-nodes", "4", "--every", "10"],
        &heat_args(20),
        &[],
    );
    job.wait_for_commit(1);
    let (ok, reply) = job.ctl(&["drain", "node3"]);
    assert!(ok && reply.contains("node node3 drained"), "{reply}");
    let status = job.status().unwrap();
    assert_eq!(node(&status, "node3")["health"], "drained");
    assert!(!placement(&status).contains(&"node3".to_string()));
    for partners in status["partners"].as_array().unwrap() {
        assert!(!partners.as_array().unwrap().iter().any(|p| p == "node3"));
    }
    let (ok, refusal) = job.ctl(&["drain", "node9"]);
    assert!(!ok && refusal.contains("no node \"node9\""), "{refusal}");
    let (ended, store) = job.finish();
    assert!(
        ended.output.contains("resumed from step"),
        "{}",
        ended.output
    );
    assert_recovered(&ended, store.path(), &reference);
}

#[test]
fn keep_leaves_the_checkpoints_and_a_finished_job_deletes_them() {
    let _serial = serial();
    let job = Job::start(
        "keep",
        &["-n", "4", "--local-nodes", "2", "--every", "10", "--keep"],
        &heat_args(0),
        &[],
    );
    let (ended, store) = job.finish();
    assert!(ended.status.success(), "{}", ended.output);
    for n in ["node1", "node2"] {
        let dir = store.path().join(n).join("keep");
        assert!(
            dir.join("committed").exists(),
            "{} lacks the commit record",
            dir.display()
        );
    }
    assert!(!store.path().join(".pmrun").join("keep").exists());
}

#[test]
fn an_agent_rejects_and_logs_messages_without_the_secret_and_the_job_goes_on() {
    let _serial = serial();
    let reference = reference(8);
    let job = Job::start(
        "intruder",
        &["-n", "8", "--local-nodes", "4", "--every", "10"],
        &heat_args(20),
        &[],
    );
    job.wait_for_commit(1);
    let status = job.status().unwrap();
    let target = node(&status, "node2");
    let control = target["control"].as_str().unwrap();
    let log = std::path::PathBuf::from(target["log"].as_str().unwrap());

    // Another job's secret: the handshake fails.
    let mut s = TcpStream::connect(control).unwrap();
    let wrong = JobSecret::from_bytes([7; 32]);
    assert!(
        Session::connect(
            &mut s,
            &wrong,
            control,
            "intruder",
            Role::Agent,
            Limits::default()
        )
        .is_err()
    );
    // Garbage, and a frame header announcing 1 GiB.
    let mut s = TcpStream::connect(control).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: pmd\r\n\r\n").unwrap();
    drop(s);
    let mut s = TcpStream::connect(control).unwrap();
    let mut header = b"PMWR".to_vec();
    header.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    header.extend_from_slice(&(1u32 << 30).to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    s.write_all(&header).unwrap();
    drop(s);
    // A forged publish on the rank socket, with the wrong secret.
    let sock = std::path::Path::new(target["log"].as_str().unwrap()).with_extension("sock");
    let mut u = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    if let Ok(mut session) = Session::connect(
        &mut u,
        &wrong,
        "rank socket",
        "rank-0",
        Role::Rank,
        Limits::default(),
    ) {
        let _ = session.send(
            &mut u,
            &FromRank::Published {
                rank: 0,
                epoch: 999,
                step: 0,
                state_bytes: 0,
                written_bytes: 0,
            },
        );
    }
    drop(u);

    let logged = job.wait_for("the agent to log the rejections", |_| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.matches("rejected").count() >= 4
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("authentication"), "{text}");
    assert!(text.contains("not a pmrun frame"), "{text}");
    assert!(text.contains("exceeds the limit"), "{text}");
    assert_eq!(node(&logged, "node2")["health"], "alive");
    let (ended, store) = job.finish();
    let out = &ended.output;
    assert!(ended.status.success(), "{out}");
    assert_eq!(checksum(out).as_deref(), Some(reference.as_str()), "{out}");
    assert!(
        relaunch_epochs(out).is_empty(),
        "the job was disturbed:\n{out}"
    );
    assert!(files_under(store.path()).is_empty());
}

#[test]
fn virtual_nodes_get_an_enforced_cpu_quota_where_the_host_allows() {
    let _serial = serial();
    let job = Job::start(
        "cpus",
        &[
            "-n",
            "4",
            "--local-nodes",
            "2",
            "--node-cpus",
            "0.5",
            "--every",
            "10",
        ],
        // Slow enough that the ranks are still there when they are looked at.
        &heat_args(5),
        &[],
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let group_root = std::path::Path::new("/sys/fs/cgroup/cpu");
    if root && group_root.join("cpu.cfs_quota_us").exists() {
        let status = job.wait_for_ranks(4);
        for name in ["node1", "node2"] {
            let group = group_root.join("pmrun/cpus").join(name);
            let quota = std::fs::read_to_string(group.join("cpu.cfs_quota_us")).unwrap();
            let period = std::fs::read_to_string(group.join("cpu.cfs_period_us")).unwrap();
            let share =
                quota.trim().parse::<f64>().unwrap() / period.trim().parse::<f64>().unwrap();
            assert!(
                (share - 0.5).abs() < 1e-9,
                "{name}: quota {quota} period {period}"
            );
            for pid in node(&status, name)["rank_pids"].as_array().unwrap() {
                let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
                assert!(
                    cgroups
                        .lines()
                        .any(|l| l.ends_with(&format!(":cpu:/pmrun/cpus/{name}"))),
                    "rank {pid} of {name} is not in its node's group:\n{cgroups}"
                );
            }
        }
        let (ended, _store) = job.finish();
        assert!(ended.status.success(), "{}", ended.output);
        assert!(
            !group_root.join("pmrun/cpus").exists(),
            "the job's CPU groups are left behind"
        );
    } else {
        let (ended, _store) = job.finish();
        assert!(ended.status.success(), "{}", ended.output);
        assert!(
            ended.output.contains("--node-cpus is not enforced"),
            "{}",
            ended.output
        );
    }
}

#[test]
fn a_partner_that_stops_storing_replicas_is_replaced() {
    let _serial = serial();
    let reference = reference(8);
    // node3's agent refuses every replica: node2's ranks must get another
    // partner before anything can commit.
    let job = Job::start(
        "refuser",
        &["-n", "8", "--local-nodes", "4", "--every", "10"],
        &heat_args(20),
        &[("PMD_FAULT_REFUSE_IMPORTS", "node3")],
    );
    let status = job.wait_for(
        "node3 to be dropped as a partner and an epoch to commit",
        |s| node(s, "node3")["holds_replicas"] == false && committed_epoch(s).is_some(),
    );
    let partners = status["partners"].as_array().unwrap();
    assert!(
        partners
            .iter()
            .all(|p| !p.as_array().unwrap().iter().any(|n| n == "node3")),
        "{status}"
    );
    assert_eq!(
        node(&status, "node3")["ranks"],
        serde_json::json!([4, 5]),
        "node3 keeps its ranks"
    );
    let new_partner = partners[2][0].as_str().unwrap().to_owned();
    job.kill_node(&status, "node2");
    let after = job.wait_for("the recovery", |s| {
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(placement(&after)[2], new_partner, "{after}");
    let (ended, store) = job.finish();
    assert!(
        ended.output.contains("failed to store 3 replicas in a row"),
        "{}",
        ended.output
    );
    assert_recovered(&ended, store.path(), &reference);
}
