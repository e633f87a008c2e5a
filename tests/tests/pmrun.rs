//! `pmrun` with the real `mpirun`: it relaunches a job that lost a rank from
//! the committed checkpoint (or afresh, before the first one, and for
//! programs that do not use pm), returns the application's exit status,
//! says what a user needs (the job id, what protects the checkpoints), and
//! turns bad input into clear errors.

use pm_tests::Bounded;
use pm_tests::bounded;
use pm_tests::job::Job;
use pm_tests::mpi::{
    checksum, find_processes, mpirun, repo_root, resumed_step, sigkill, text, workspace_bin,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

const HEAT: [&str; 7] = [
    "--rows",
    "96",
    "--cols",
    "64",
    "--steps",
    "150",
    "--pause-ms",
];

/// pmrun with its store given the way users often do: `PM_STORE` in the
/// environment (the ranks inherit it, and pmrun must look there too).
fn pmrun(store: &Path) -> Command {
    let mut cmd = Command::new(workspace_bin("pmrun"));
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Each test starts without the history of earlier runs.
        .env("PM_HISTORY", "none")
        .env("PM_STORE", store);
    cmd
}

fn reference(store: &Path) -> String {
    let out = mpirun(4)
        .arg(workspace_bin("heat"))
        .args(HEAT)
        .arg("0")
        .env("PM_STORE", store)
        .env("PM_JOB", "reference")
        .bounded_output()
        .unwrap();
    checksum(&text(&out)).expect("reference checksum")
}

/// Starts heat on 4 ranks under pmrun as job `job`, a checkpoint every 10
/// steps, its output piped.
fn start_heat(store: &Path, job: &str, extra: &[&str]) -> std::process::Child {
    pmrun(store)
        .args(["-n", "4", "--every", "10", "--job", job])
        .args(extra)
        .arg(workspace_bin("heat"))
        .args(HEAT)
        .arg("15")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_grouped()
        .unwrap()
}

/// Waits until job `job` in `store` has committed a checkpoint.
fn wait_for_commit(store: &Path, job: &str) {
    let record = store.join(job).join("committed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !record.exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint committed within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts heat under pmrun as job `job` and SIGKILLs one rank once a
/// checkpoint is committed; returns pmrun's output.
fn kill_one_rank(store: &Path, job: &str, extra: &[&str]) -> Output {
    let child = start_heat(store, job, extra);
    wait_for_commit(store, job);
    let heat = workspace_bin("heat");
    sigkill(wait_for_ranks(&heat, job, 4)[1]);
    bounded::wait_output(child, bounded::LIMIT, "pmrun")
}

/// The `ranks` processes of `exe` that pmrun started for `job`.
fn wait_for_ranks(exe: &Path, job: &str, ranks: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = find_processes(exe, "PM_JOB", job);
        if pids.len() == ranks {
            return pids;
        }
        assert!(Instant::now() < deadline, "rank processes: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn relaunches_a_job_that_lost_a_rank_from_its_checkpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference(store.path());
    let out = kill_one_rank(store.path(), "supervised", &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("relaunching from its committed checkpoint"),
        "{t}"
    );
    assert!(
        resumed_step(&t).is_some_and(|s| s > 0 && s % 10 == 0),
        "{t}"
    );
    assert_eq!(checksum(&t).as_deref(), Some(reference.as_str()), "{t}");
    assert!(
        !store.path().join("supervised").exists(),
        "the finished job left files behind"
    );
}

#[test]
fn gives_up_after_max_restarts_and_can_be_resumed_by_job_id() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference(store.path());
    let out = kill_one_rank(store.path(), "given-up", &["--max-restarts", "0"]);
    let t = text(&out);
    assert_eq!(
        out.status.code(),
        Some(137),
        "the application's status (SIGKILL):\n{t}"
    );
    assert!(
        t.contains("run pmrun again with --job given-up to resume"),
        "{t}"
    );

    let resume = |ranks: &str| {
        let out = pmrun(store.path())
            .args(["-n", ranks, "--every", "10", "--job", "given-up"])
            .arg(workspace_bin("heat"))
            .args(HEAT)
            .arg("0")
            .bounded_output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    // Another rank count is refused, and leaves nothing behind.
    let before = pm_tests::job::files_under(store.path());
    let (ok, t) = resume("6");
    assert!(!ok, "{t}");
    assert!(t.contains("was checkpointed with 4 ranks"), "{t}");
    assert_eq!(pm_tests::job::files_under(store.path()), before, "{t}");

    let (ok, t) = resume("4");
    assert!(ok && resumed_step(&t).is_some(), "{t}");
    assert_eq!(checksum(&t).as_deref(), Some(reference.as_str()), "{t}");
}

/// SIGTERM (Slurm ending a job, `kill`) and SIGINT (Ctrl-C) reach pmrun's
/// own handling, whatever the libraries it links install before `main`: the
/// run stops, the checkpoints are kept, and a rerun resumes bit-exact.
#[test]
fn sigterm_and_sigint_keep_the_checkpoints_and_a_rerun_resumes_bit_exact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference(store.path());
    let heat = workspace_bin("heat");
    for (signal, job) in [(libc::SIGTERM, "termed"), (libc::SIGINT, "inted")] {
        let child = start_heat(store.path(), job, &[]);
        wait_for_commit(store.path(), job);
        // SAFETY: kill has no memory-safety preconditions; pmrun is our child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = bounded::wait_output(child, bounded::LIMIT, "pmrun");
        let t = text(&out);
        assert_eq!(out.status.code(), Some(130), "signal {signal}:\n{t}");
        assert!(
            t.contains(&format!(
                "interrupted; the job's checkpoints are kept: run pmrun again with --job {job}"
            )),
            "signal {signal}:\n{t}"
        );
        let out = pmrun(store.path())
            .args(["-n", "4", "--every", "10", "--job", job])
            .arg(&heat)
            .args(HEAT)
            .arg("0")
            .bounded_output()
            .unwrap();
        let t = text(&out);
        assert!(out.status.success() && resumed_step(&t).is_some(), "{t}");
        assert_eq!(checksum(&t).as_deref(), Some(reference.as_str()), "{t}");
    }
}

#[test]
fn exit_status_is_the_applications() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = pmrun(store.path())
        .args(["-n", "1", "sh", "-c", "exit 3"])
        .bounded_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("before committing any checkpoint"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let hostfile = store.path().join("hosts");
    std::fs::write(&hostfile, "n1 slots=4\nn2 slots=many\n").unwrap();
    let heat = workspace_bin("heat");
    let heat = heat.to_str().unwrap();
    let missing = store.path().join("missing-hostfile");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["-n", "0", heat], "invalid value '0'".into()),
        (vec!["-n", "2"], "required".into()),
        (
            vec!["-n", "2", "./no-such-app"],
            "application \"./no-such-app\" not found".into(),
        ),
        (vec!["-n", "2", "no-such-app"], "not found on PATH".into()),
        (
            vec!["-n", "2", "--hostfile", hostfile.to_str().unwrap(), heat],
            "line 2: slots must be a positive number".into(),
        ),
        (
            vec!["-n", "2", "--hostfile", missing.to_str().unwrap(), heat],
            format!("cannot read hostfile {}", missing.display()),
        ),
        (vec!["-n", "2", "-H", "a:0", heat], "-H \"a:0\"".into()),
        (
            vec!["-n", "2", "--job", "../x", heat],
            "invalid job id".into(),
        ),
        (
            vec!["-n", "2", "-x", "NOT_SET_ANYWHERE_PM", heat],
            "NOT_SET_ANYWHERE_PM is not set".into(),
        ),
        (
            vec![
                "-n",
                "2",
                "--hostfile",
                store.path().to_str().unwrap(),
                heat,
            ],
            format!("cannot read hostfile {}", store.path().display()),
        ),
        (
            vec!["-n", "2", "-H", "node-that-does-not-exist.invalid:2", heat],
            "host \"node-that-does-not-exist.invalid\" is not this machine".into(),
        ),
        (
            vec!["-n", "2", "--store", "/proc/pmrun-store", heat],
            "cannot create the job's run directory /proc/pmrun-store".into(),
        ),
        (
            vec!["-n", "2", "--local-nodes", "2", "--spare", "2", heat],
            "--spare 2 leaves none of the 2 virtual nodes".into(),
        ),
        (
            vec!["-n", "2", "--heartbeat", "2", "--fail-after", "1", heat],
            "--fail-after 1 must be longer than --heartbeat 2".into(),
        ),
        (
            vec!["-n", "2", "--flush", "/proc/pmrun-flush", heat],
            "--flush /proc/pmrun-flush: cannot create the directory".into(),
        ),
        (
            vec!["-n", "2", "--flush-every", "2", heat],
            "--flush <DIR>".into(),
        ),
        (
            vec!["-n", "2", "--every", "2", "--interval", "3", heat],
            "--every and --interval both say when to checkpoint".into(),
        ),
    ];
    for (args, expected) in cases {
        let out = pmrun(store.path()).args(&args).bounded_output().unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{t}");
        assert!(
            t.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }

    // PM_* variables (what `#SBATCH --pm-…` sets) are read, checked, and
    // lose to a flag: the error shows the value from the flag got through.
    let env_case = |env: &[(&str, &str)], args: &[&str], expected: &str| {
        let out = pmrun(store.path())
            .envs(env.iter().copied())
            .args(args)
            .arg(heat)
            .bounded_output()
            .unwrap();
        let t = text(&out);
        assert!(
            !out.status.success() && t.contains(expected),
            "{env:?} {args:?}:\n{t}"
        );
    };
    env_case(
        &[("PM_EVERY", "2"), ("PM_INTERVAL", "3")],
        &["-n", "2"],
        "PM_EVERY and PM_INTERVAL (in the environment) both say",
    );
    env_case(
        &[("PM_INTERVAL", "3")],
        &[
            "-n",
            "2",
            "--every",
            "2",
            "--local-nodes",
            "2",
            "--spare",
            "2",
        ],
        "--spare 2 leaves none",
    );
    env_case(
        &[("PM_SPARE", "2")],
        &["-n", "2", "--local-nodes", "2"],
        "--spare 2 leaves none",
    );
    env_case(&[("PM_REPLICAS", "x")], &["-n", "2"], "--replicas <R>");
}

#[test]
fn a_rank_killed_before_the_first_commit_restarts_the_job_afresh() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reference = pm_tests::job::reference(4);
    // No checkpoint is due before the job ends.
    let job = Job::start(
        "no-commit",
        &["-n", "4", "--every", "1000"],
        &pm_tests::job::heat_args(15),
        &[],
    );
    let status = job.wait_for_ranks(4);
    sigkill(status["nodes"][0]["rank_pids"][2].as_u64().unwrap() as u32);
    let (ended, _store) = job.finish();
    let t = &ended.output;
    assert!(ended.status.success(), "{t}");
    assert!(!t.contains(NO_PM), "{t}");
    assert!(
        t.contains("before committing any checkpoint; starting it afresh, restart 1 of 3"),
        "{t}"
    );
    assert_eq!(t.matches("heat: starting").count(), 2, "{t}");
    assert_eq!(checksum(t).as_deref(), Some(reference.as_str()), "{t}");
}

/// `tests/c/no_pm.c`, built with plain `mpicc` (no pm).
fn no_pm_program(dir: &Path) -> PathBuf {
    let exe = dir.join("no_pm");
    let out = Command::new("mpicc")
        .args(["-O2", "-Wall", "-Werror"])
        .arg(repo_root().join("tests/c/no_pm.c"))
        .arg("-o")
        .arg(&exe)
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    exe
}

/// What pmrun says once when no rank reached its agent.
const NO_PM: &str = "no rank reached its agent";

#[test]
fn a_program_without_pm_runs_as_under_mpirun_and_restarts_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let exe = no_pm_program(dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();

    // Undisturbed: the same output as plain mpirun.
    let plain = mpirun(4)
        .arg(&exe)
        .args(["20", "0"])
        .bounded_output()
        .unwrap();
    assert!(plain.status.success(), "{}", text(&plain));
    let under = pmrun(store.path())
        .args(["-n", "4"])
        .arg(&exe)
        .args(["20", "0"])
        .bounded_output()
        .unwrap();
    assert!(under.status.success(), "{}", text(&under));
    assert_eq!(
        String::from_utf8_lossy(&under.stdout),
        String::from_utf8_lossy(&plain.stdout)
    );
    let reference = mpirun(4)
        .arg(&exe)
        .args(["60", "0"])
        .bounded_output()
        .unwrap();
    let expected = String::from_utf8_lossy(&reference.stdout).into_owned();
    assert!(
        expected.starts_with("no_pm: 4 ranks, 60 steps"),
        "{expected}"
    );

    // A killed rank: restarted from the beginning, counted as a restart.
    let child = pmrun(store.path())
        .args(["-n", "4", "--job", "no-pm-rank"])
        .arg(&exe)
        .args(["60", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_grouped()
        .unwrap();
    sigkill(wait_for_ranks(&exe, "no-pm-rank", 4)[1]);
    let out = bounded::wait_output(child, bounded::LIMIT, "pmrun");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("starting it afresh, restart 1 of 3"), "{t}");
    assert_eq!(t.matches(NO_PM).count(), 1, "{t}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{t}");

    // A lost node (its agent and its ranks killed): restarted from the
    // beginning too.
    let job = Job::start_app(
        "no-pm-node",
        &["-n", "4", "--local-nodes", "2"],
        &exe,
        &["60".into(), "50".into()],
        &[],
    );
    let status = job.wait_for("the agents", |s| s["nodes"][1]["agent_pid"].is_u64());
    let (ok, refused) = job.ctl(&["drain", "node2"]);
    // Its ranks never reach their agents: nothing to checkpoint or drain.
    assert!(!ok && refused.contains("0 of 4 ready"), "{refused}");
    let ranks = wait_for_ranks(&exe, "no-pm-node", 4);
    sigkill(status["nodes"][1]["agent_pid"].as_u64().unwrap() as u32);
    for rank in ["2", "3"] {
        let pid = find_processes(&exe, "OMPI_COMM_WORLD_RANK", rank)
            .into_iter()
            .find(|p| ranks.contains(p))
            .unwrap();
        sigkill(pid);
    }
    let (ended, _store) = job.finish();
    let t = &ended.output;
    assert!(ended.status.success(), "{t}");
    assert!(
        t.contains("node node2 lost its agent") || t.contains("node node2 missed its heartbeats"),
        "{t}"
    );
    assert!(t.contains("relaunching afresh"), "{t}");
    assert_eq!(t.matches(NO_PM).count(), 1, "{t}");
    assert!(t.contains(&expected), "{t}");
}

#[test]
fn pmrun_tells_the_job_id_and_what_protects_the_checkpoints() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = pmrun(store.path())
        .args(["-n", "2", "--job", "told", "--replicas", "1"])
        .arg(workspace_bin("heat"))
        .args(["--rows", "16", "--cols", "16", "--steps", "5"])
        .env("PM_LOG", "info")
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    // Without -v: the id that `pmrun ctl --job` needs, and one sentence
    // about replicas on a single node.
    assert!(t.contains("pmrun: job told: 2 rank(s) on localhost"), "{t}");
    assert!(t.contains("no replicas on a single node"), "{t}");
    assert_eq!(t.matches("replica").count(), 1, "{t}");
    assert!(
        !t.contains('\x1b'),
        "colour codes in a log that is no terminal:\n{t}"
    );

    let help = pmrun(store.path())
        .args(["ctl", "--help"])
        .bounded_output()
        .unwrap();
    let help = text(&help);
    assert!(help.contains("Usage: pmrun ctl"), "{help}");
    let help = pmrun(store.path())
        .args(["ctl", "status", "--help"])
        .bounded_output()
        .unwrap();
    assert!(
        text(&help).contains("Usage: pmrun ctl status"),
        "{}",
        text(&help)
    );
}

#[test]
fn ctl_takes_its_options_after_the_subcommand_too() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let job = Job::start(
        "ctl-options",
        &["-n", "2", "--local-nodes", "2"],
        &pm_tests::job::heat_args(20),
        &[],
    );
    job.wait_for_ranks(2);
    let out = pm_tests::job::pmrun()
        .args(["ctl", "status", "--json", "--job", "ctl-options", "--store"])
        .arg(job.store_path())
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let status: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(status["job"], "ctl-options");
    let (ended, _) = job.finish();
    assert!(ended.status.success(), "{}", ended.output);
}
