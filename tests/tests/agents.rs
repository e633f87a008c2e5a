//! The node agents on their own: a job whose `pmrun` is SIGKILLed must not
//! run on without it. Every agent kills its node's ranks and exits (mpirun
//! then ends with its ranks), the checkpoints stay, and `pmrun --job`
//! resumes the job to the undisturbed result.

use pm_tests::job::{self, Job, files_under, heat_args, reference};
use pm_tests::mpi::{checksum, resumed_step, sigkill, text, workspace_bin};
use serde_json::Value;
use std::time::{Duration, Instant};

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
        .output()
        .unwrap();
    let out = text(&resumed);
    assert!(resumed.status.success(), "{out}");
    assert!(out.contains("resuming job"), "{out}");
    assert!(resumed_step(&out).is_some_and(|s| s > 0), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
    let left = files_under(store.path());
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}
