//! pmrun inside a real Slurm allocation: the project's own test cluster
//! (`slurm/cluster.sh`: munged, slurmctld and one slurmd per node on
//! 127.0.0.2, ...), started by the test. The agents run as srun steps on
//! the allocation's nodes, the ranks as an srun step with PMIx.

use pm_tests::Bounded;
use pm_tests::bounded::poll_until;
use pm_tests::job::committed_epoch_of;
use pm_tests::mpi::{checksum, mpirun, text, workspace_bin};
use pm_tests::slurm::Cluster;
use std::time::Duration;

/// heat's plate in these tests.
const PLATE: [&str; 6] = ["--rows", "96", "--cols", "64", "--pause-ms", "20"];

/// heat's arguments for `steps` steps.
fn heat_args(steps: u32) -> String {
    format!("{} --steps {steps}", PLATE.join(" "))
}

/// The checksum of heat undisturbed under plain mpirun.
fn reference(ranks: u32, steps: u32) -> String {
    let out = mpirun(ranks)
        .arg(workspace_bin("heat"))
        .args(heat_args(steps).split(' '))
        .arg("--no-pm")
        .bounded_output()
        .unwrap();
    checksum(&text(&out)).expect("reference checksum")
}

/// A batch script that runs heat under pmrun with `pmrun_args`.
fn script(store: &std::path::Path, pmrun_args: &str, steps: u32) -> String {
    format!(
        "# Open MPI across several slurmds on one machine: TCP on loopback only.\n\
         export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo\n\
         export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PM_HISTORY=none\n\
         exec {pmrun} -v --store {store} --every 10 --heartbeat 0.2 --fail-after 2 {pmrun_args} {heat} {heat_args}\n",
        pmrun = workspace_bin("pmrun").display(),
        store = store.display(),
        heat = workspace_bin("heat").display(),
        heat_args = heat_args(steps),
    )
}

#[test]
fn a_batch_job_runs_its_agents_and_ranks_on_the_allocation_s_nodes_and_ends_bit_exact() {
    let cluster = Cluster::start(4, 17817);
    let expected = reference(6, 100);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = cluster.sbatch(&["-N3", "-n6"], &script(store.path(), "-n 6", 100));
    let t = &completed(&cluster, &id, 180);
    // One agent per allocated node, each on its node's address.
    assert!(
        t.contains("6 rank(s) on n1@127.0.0.2 n2@127.0.0.3 n3@127.0.0.4"),
        "{t}"
    );
    assert!(
        t.contains("launching 6 ranks: n1[0,1] n2[2,3] n3[4,5]"),
        "{t}"
    );
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
    // The agents' steps ended with the job; they removed what they wrote.
    let left: Vec<_> = walk(store.path());
    assert!(left.is_empty(), "files left in the store: {left:?}");
}

#[test]
fn a_node_lost_inside_the_allocation_moves_its_ranks_to_the_spare_and_the_job_ends_bit_exact() {
    let cluster = Cluster::start(4, 17837);
    let expected = reference(6, 300);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = cluster.sbatch(
        &["--no-kill", "-N4", "-n6"],
        &script(store.path(), "-n 6 --spare 1 --job lost-node", 300),
    );
    // Once a checkpoint is committed, n2 (ranks 2 and 3) loses power.
    wait_for_commit(&cluster, store.path(), "lost-node");
    cluster.kill_node("n2");
    let t = &completed(&cluster, &id, 240);
    assert!(
        t.contains("node n2 lost its agent") || t.contains("node n2 missed its heartbeats"),
        "{t}"
    );
    assert!(
        t.contains("relaunching from the committed checkpoint"),
        "{t}"
    );
    assert_no_launch_on(t, "declared dead", "n2");
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
}

#[test]
fn a_job_without_no_kill_that_loses_a_node_is_told_what_would_have_kept_it() {
    let cluster = Cluster::start(4, 17897);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    // Long enough to be running when Slurm notices the dead node (10 s).
    let id = cluster.sbatch(
        &["--no-requeue", "-N4", "-n6"],
        &script(store.path(), "-n 6 --spare 1 --job no-kill", 3000),
    );
    wait_for_commit(&cluster, store.path(), "no-kill");
    cluster.kill_node("n2");
    let end = cluster.wait(&id, Duration::from_secs(120));
    let t = &end.output;
    assert_eq!(end.state, "NODE_FAIL", "{t}\n{}", cluster.logs());
    assert!(
        t.contains("Slurm is ending the job: node n2 is down. Submitted with --no-kill"),
        "{t}"
    );
    assert!(t.contains("checkpoints are kept"), "{t}");
}

#[test]
fn a_node_an_administrator_drains_in_slurm_is_left_with_no_rank_bit_exact() {
    let cluster = Cluster::start(4, 17857);
    let expected = reference(6, 300);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = cluster.sbatch(
        &["-N4", "-n6"],
        &script(
            store.path(),
            "-n 6 --spare 1 --slurm-poll 0.5 --job drained",
            300,
        ),
    );
    wait_for_commit(&cluster, store.path(), "drained");
    let out = cluster
        .command("scontrol")
        .args(["update", "nodename=n3", "state=drain", "reason=disk swap"])
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = &completed(&cluster, &id, 240);
    assert!(
        t.contains("node n3 is MIXED+DRAIN in Slurm: disk swap: draining it"),
        "{t}"
    );
    assert!(t.contains("node n3 drained"), "{t}");
    assert_no_launch_on(t, "node n3 drained", "n3");
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
}

#[test]
fn a_stop_signal_before_the_time_limit_keeps_the_job_and_a_later_allocation_resumes_it_bit_exact() {
    let cluster = Cluster::start(3, 17877);
    let expected = reference(6, 300);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    // The shared file system; no scheduled flush, only the stop's.
    let flush = tempfile::tempdir().unwrap();
    let args = format!(
        "-n 6 --job preempted --flush {} --flush-every 1000",
        flush.path().display()
    );
    let batch = script(store.path(), &args, 300);
    let id = cluster.sbatch(&["-N3", "-n6"], &batch);
    wait_for_commit(&cluster, store.path(), "preempted");
    // What `sbatch --signal=B:USR1@120` does before the time limit.
    let out = cluster
        .command("scancel")
        .args(["--batch", "--signal=USR1", &id])
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let end = cluster.wait(&id, Duration::from_secs(240));
    let t = &end.output;
    assert_eq!(end.exit_code, "75:0", "{t}\n{}", cluster.logs());
    assert!(
        t.contains("pmrun got SIGUSR1: stopping the job at a checkpoint"),
        "{t}"
    );
    assert!(t.contains("run pmrun again with --job preempted"), "{t}");
    assert!(t.contains("pmrun --job preempted --flush"), "{t}");
    assert_eq!(checksum(t), None, "{t}");

    // The next allocation, the same script, with every node store gone
    // (RAM, or an epilog's cleaning): resumed from the flushed copy.
    clear(store.path());
    let id = cluster.sbatch(&["-N3", "-n6"], &batch);
    let t = &completed(&cluster, &id, 240);
    assert!(
        t.contains("resuming job preempted from the flushed copy"),
        "{t}"
    );
    assert!(t.contains("heat: resumed from step"), "{t}");
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
}

#[test]
fn a_requeued_job_resumes_by_itself_from_its_flushed_checkpoint_bit_exact() {
    let cluster = Cluster::start(3, 18017);
    let expected = reference(6, 300);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let flush = tempfile::tempdir().unwrap();
    // No --job: the default id, `heat-slurm<SLURM_JOB_ID>`, is the same
    // for every run of a requeued job.
    let args = format!("-n 6 --flush {}", flush.path().display());
    let batch = script(store.path(), &args, 300);
    let id = cluster.sbatch(&["-N3", "-n6", "--requeue", "--open-mode=append"], &batch);
    let job = format!("heat-slurm{id}");
    wait_for_commit(&cluster, store.path(), &job);
    poll_until(
        Duration::from_secs(60),
        || pm_core::store::flush::read_job_record(flush.path(), &job).unwrap(),
        || format!("nothing flushed:\n{}", cluster.logs()),
    );
    // What preemption with PreemptMode=REQUEUE (or an administrator) does.
    let requeue = |args: &[&str]| {
        let out = cluster
            .command("scontrol")
            .args(args)
            .bounded_output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    requeue(&["requeue", &id]);
    poll_until(
        Duration::from_secs(60),
        || (cluster.job_state(&id) == "PENDING").then_some(()),
        || format!("not requeued:\n{}", cluster.logs()),
    );
    // Its node stores are gone; Slurm holds a requeued job back for two
    // minutes, which the test does not wait for.
    clear(store.path());
    requeue(&["update", &format!("jobid={id}"), "StartTime=now"]);
    let t = &completed(&cluster, &id, 240);
    assert!(
        t.contains(&format!("resuming job {job} from the flushed copy")),
        "{t}"
    );
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
}

/// Removes everything under `dir`: every node's store lost.
fn clear(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::remove_dir_all(entry.path()).unwrap();
    }
}

/// Waits (up to `secs`) for batch job `id`, which must complete with
/// status 0; its output.
fn completed(cluster: &Cluster, id: &str, secs: u64) -> String {
    let end = cluster.wait(id, Duration::from_secs(secs));
    assert_eq!(
        (end.state.as_str(), end.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{}\n{}",
        end.output,
        cluster.logs()
    );
    end.output
}

/// Waits until job `job` under `store` has committed a checkpoint.
fn wait_for_commit(cluster: &Cluster, store: &std::path::Path, job: &str) {
    poll_until(
        Duration::from_secs(120),
        || committed_epoch_of(store, job),
        || format!("job {job}: no commit:\n{}", cluster.logs()),
    );
}

/// Every launch pmrun reports after the line containing `after` leaves `node` out.
fn assert_no_launch_on(t: &str, after: &str, node: &str) {
    let (_, rest) = t
        .split_once(after)
        .unwrap_or_else(|| panic!("no {after:?}:\n{t}"));
    let launches: Vec<&str> = rest
        .lines()
        .filter(|l| l.contains("launching 6 ranks"))
        .collect();
    assert!(!launches.is_empty(), "no launch after {after:?}:\n{t}");
    assert!(
        launches.iter().all(|l| !l.contains(&format!("{node}["))),
        "a launch on {node}:\n{t}"
    );
}

#[test]
fn pmrun_under_salloc_runs_from_outside_the_allocation_s_nodes_bit_exact() {
    let cluster = Cluster::start(3, 17917);
    let expected = reference(6, 100);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = cluster
        .command("salloc")
        .args(["-N3", "-n6"])
        .arg(workspace_bin("pmrun"))
        .args(["-n", "6", "--store"])
        .arg(store.path())
        .arg(workspace_bin("heat"))
        .args(heat_args(100).split(' '))
        .env("OMPI_MCA_btl", "self,tcp")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("PM_HISTORY", "none")
        .env_remove("SLURMD_NODENAME")
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", cluster.logs());
    // Named after the allocation; agents on its nodes reached this machine.
    assert!(t.contains("pmrun: job heat-slurm"), "{t}");
    assert!(t.contains("6 rank(s) on n1 n2 n3"), "{t}");
    assert_eq!(checksum(&t).as_deref(), Some(expected.as_str()), "{t}");
}

#[test]
fn srun_outside_an_allocation_is_a_clear_error() {
    let out = pm_tests::job::pmrun()
        .env_remove("SLURM_JOB_ID")
        .args(["-n", "2", "--launch-with", "srun"])
        .arg(workspace_bin("heat"))
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("not inside a Slurm allocation"), "{t}");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
            if std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none()) {
                files.push(p);
            }
        } else {
            files.push(p);
        }
    }
    files
}
