//! `pmrun` with the real `mpirun`: it relaunches a job that lost a rank from
//! the committed checkpoint, returns the application's exit status, and
//! turns bad input into clear errors.

use pm_tests::mpi::{checksum, find_processes, mpirun, resumed_step, sigkill, text, workspace_bin};
use std::path::Path;
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
        .output()
        .unwrap();
    checksum(&text(&out)).expect("reference checksum")
}

/// Starts heat under pmrun as job `job` and SIGKILLs one rank once a
/// checkpoint is committed; returns pmrun's output.
fn kill_one_rank(store: &Path, job: &str, extra: &[&str]) -> Output {
    let heat = workspace_bin("heat");
    let child = pmrun(store)
        .args(["-np", "4", "--every", "10", "--job", job])
        .args(extra)
        .arg(&heat)
        .args(HEAT)
        .arg("15")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let record = store.join(job).join("committed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !record.exists() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint committed within a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = find_processes(&heat, "PM_JOB", job);
    assert_eq!(pids.len(), 4, "{pids:?}");
    sigkill(pids[1]);
    child.wait_with_output().unwrap()
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

    let out = pmrun(store.path())
        .args(["-n", "4", "--every", "10", "--job", "given-up"])
        .arg(workspace_bin("heat"))
        .args(HEAT)
        .arg("0")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success() && resumed_step(&t).is_some(), "{t}");
    assert_eq!(checksum(&t).as_deref(), Some(reference.as_str()), "{t}");
}

#[test]
fn exit_status_is_the_applications() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = pmrun(store.path())
        .args(["-n", "1", "sh", "-c", "exit 3"])
        .output()
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
    ];
    for (args, expected) in cases {
        let out = pmrun(store.path()).args(&args).output().unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded:\n{t}");
        assert!(
            t.contains(&expected),
            "{args:?}: expected {expected:?} in:\n{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }
}
