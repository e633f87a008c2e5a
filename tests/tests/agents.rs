//! The node agents on their own. A job whose `pmrun` is SIGKILLed must not
//! run on without it: every agent kills its node's ranks and exits (mpirun
//! then ends with its ranks), the checkpoints stay, and `pmrun --job`
//! resumes the job to the undisturbed result. An agent SIGKILLed alone (its
//! ranks live on), or stopped for longer than `--fail-after` and woken
//! again, costs the job that node and nothing else. Every rank's load
//! reaches its agent, and the agents gossip their nodes' load.

use pm_tests::Bounded;
use pm_tests::job::{self, Job, files_under, heat_args, node, reference, relaunch_epochs};
use pm_tests::mpi::{checksum, resumed_step, sigkill, text, workspace_bin};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The jobs share two cores; one at a time keeps their timing sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// The job ended with the undisturbed checksum after one relaunch, having
/// lost `lost` and no other node, and left no file behind.
fn assert_lost_one_node(ended: &job::Ended, store: &std::path::Path, lost: &str, reference: &str) {
    let out = &ended.output;
    assert!(ended.status.success(), "pmrun failed:\n{out}");
    assert_eq!(checksum(out).as_deref(), Some(reference), "{out}");
    assert_eq!(relaunch_epochs(out).len(), 1, "{out}");
    assert_eq!(out.matches("declared dead").count(), 1, "{out}");
    assert!(out.contains(&format!("node {lost} ")), "{out}");
    let left = files_under(store);
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}

/// Whether `pid` is a process that still runs (a zombie has ended: it only
/// waits for a parent, which after pmrun's death may never reap it).
fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    !state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X'))
}

/// Every rank and agent process the status names, and mpirun's.
fn job_processes(status: &Value) -> Vec<(String, u32)> {
    let mut pids = Vec::new();
    for node in status["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let agent = node["agent_pid"].as_u64().unwrap() as u32;
        pids.push((format!("agent of {name}"), agent));
        for pid in node["rank_pids"].as_array().unwrap() {
            pids.push((format!("rank on {name}"), pid.as_u64().unwrap() as u32));
        }
    }
    let mpirun = status["launcher_pid"].as_u64().expect("mpirun runs") as u32;
    pids.push(("mpirun".into(), mpirun));
    pids
}

#[test]
fn a_job_whose_pmrun_is_killed_stops_everywhere_and_resumes_by_its_id() {
    let _serial = serial();
    let reference = reference(8);
    let args = ["-n", "8", "--local-nodes", "4", "--every", "10"];
    let heat = workspace_bin("heat");
    let app_args = heat_args(20);
    let job = Job::start_app("orphaned", &args, &heat, &app_args, &[]);
    job.wait_for_ranks(8);
    job.wait_for_commit(2);
    let status = job.status().unwrap();
    let processes = job_processes(&status);
    assert_eq!(processes.len(), 4 + 8 + 1, "{status}");

    sigkill(job.pmrun_pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<&(String, u32)> = processes.iter().filter(|(_, p)| running(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 s after pmrun was killed these still run: {left:?}\n{}",
            job.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The agents did it, not the ranks failing on their own.
    for node in status["nodes"].as_array().unwrap() {
        let log = std::fs::read_to_string(node["log"].as_str().unwrap()).unwrap();
        assert!(
            log.contains("pmrun is gone: killing the node's ranks"),
            "{log}"
        );
    }
    let id = job.id.clone();
    let (ended, store) = job.finish();
    assert!(!ended.status.success(), "{}", ended.output);
    for n in 1..=4 {
        let record = store
            .path()
            .join(format!("node{n}"))
            .join(&id)
            .join("committed");
        assert!(
            record.exists(),
            "{} is gone: the checkpoints must be kept",
            record.display()
        );
    }

    let resumed = job::command(store.path(), &id, &args, &heat, &app_args)
        .bounded_output()
        .unwrap();
    let out = text(&resumed);
    assert!(resumed.status.success(), "{out}");
    assert!(out.contains("resuming job"), "{out}");
    assert!(resumed_step(&out).is_some_and(|s| s > 0), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
    let left = files_under(store.path());
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}

/// The reference checksum, and a job of 8 ranks on 4 virtual nodes that
/// has committed twice, with its status then.
fn committed_job(id: &str) -> (String, Job, Value) {
    let reference = reference(8);
    let job = Job::start(
        id,
        &["-n", "8", "--local-nodes", "4", "--every", "10"],
        &heat_args(20),
        &[],
    );
    job.wait_for_ranks(8);
    job.wait_for_commit(2);
    let status = job.status().unwrap();
    (reference, job, status)
}

#[test]
fn an_agent_killed_alone_loses_its_node_and_the_job_ends_bit_exact() {
    let _serial = serial();
    let (reference, job, status) = committed_job("lone-agent");
    // Only the agent: its ranks live on until the job is stopped.
    sigkill(node(&status, "node2")["agent_pid"].as_u64().unwrap() as u32);
    let (ended, store) = job.finish();
    assert!(
        ended.output.contains("node node2 lost its agent"),
        "{}",
        ended.output
    );
    assert_lost_one_node(&ended, store.path(), "node2", &reference);
}

#[test]
fn an_agent_stopped_past_fail_after_is_dead_to_the_job_and_harmless_when_woken() {
    let _serial = serial();
    let (reference, job, status) = committed_job("stopped-agent");
    let agent = node(&status, "node3")["agent_pid"].as_u64().unwrap() as u32;
    signal(agent, libc::SIGSTOP);
    // Its link stays open and its ranks run on: only silence tells.
    job.wait_for("node3 to be declared dead", |s| {
        node(s, "node3")["health"] == "dead"
    });
    let after = job.wait_for("the job to run again", |s| {
        s["recoveries"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert!(!job::placement(&after).contains(&"node3".to_string()));
    signal(agent, libc::SIGCONT);
    // Woken, it finds pmrun gone for it, kills what is left of its ranks
    // and exits; the job never hears from it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(agent) {
        assert!(
            Instant::now() < deadline,
            "the woken agent still runs:\n{}",
            job.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ended, store) = job.finish();
    assert!(
        ended.output.contains("node node3 missed its heartbeats"),
        "{}",
        ended.output
    );
    assert_lost_one_node(&ended, store.path(), "node3", &reference);
}

/// The value of `name=` in a log line (`rank=3`, `from=#2`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

#[test]
fn every_ranks_load_reaches_its_agent_and_the_agents_gossip() {
    let _serial = serial();
    // The agents log at debug (pmrun passes its environment to them).
    let env = [("PM_LOG", "info,pm_launcher::agent=debug")];
    let args = ["-n", "8", "--local-nodes", "4"];
    let job = Job::start("load-path", &args, &heat_args(40), &env);
    let status = job.wait_for_ranks(8);
    let logs: Vec<(u32, String)> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, n)| (i as u32, n["log"].as_str().unwrap().to_owned()))
        .collect();
    // Read while the job runs: pmrun removes the logs with its run directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (loaded, heard) = loop {
        let mut loaded = BTreeSet::new();
        let mut heard: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        for (node, log) in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines() {
                if line.contains("rank load") && line.contains("total_steps=Some(300)") {
                    loaded.extend(field(line, "rank").and_then(|r| r.parse::<u32>().ok()));
                }
                if line.contains("gossip received") {
                    let from = field(line, "from")
                        .and_then(|f| f.trim_start_matches('#').parse::<u32>().ok());
                    heard
                        .entry(*node)
                        .or_default()
                        .extend(from.filter(|f| f != node));
                }
            }
        }
        let all_heard = logs
            .iter()
            .all(|(n, _)| heard.get(n).is_some_and(|h| !h.is_empty()));
        if loaded.len() == 8 && all_heard {
            break (loaded, heard);
        }
        assert!(
            Instant::now() < deadline,
            "a minute on, loads from ranks {loaded:?} and gossip {heard:?}; output:\n{}",
            job.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(loaded, (0..8).collect());
    assert_eq!(heard.len(), 4, "{heard:?}");
    let (ended, _store) = job.finish();
    assert!(ended.status.success(), "{}", ended.output);
    assert_eq!(
        checksum(&ended.output).as_deref(),
        Some(reference(8).as_str())
    );
}
