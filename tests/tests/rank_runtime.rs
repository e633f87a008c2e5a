//! The rank runtime on real MPI jobs: `examples/heat` (Rust) and
//! `examples/heat_c` (C through pm.h and libpm.so) under the real `mpirun`,
//! with ranks killed by SIGKILL. A resumed run must print exactly the
//! checksum of an undisturbed one, and resume from the committed step.

use pm_core::store::commit::read_record;
use pm_tests::Bounded;
use pm_tests::bounded;
use pm_tests::mpi::{
    build_c, checksum, find_processes, mpirun, repo_root, resumed_step, sigkill, text,
    workspace_bin,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One MPI job at a time: they oversubscribe the machine already.
static SERIAL: Mutex<()> = Mutex::new(());

const RANKS: u32 = 4;
const ARGS: [&str; 6] = ["--rows", "96", "--cols", "64", "--steps", "120"];

struct Job<'a> {
    exe: &'a Path,
    store: &'a Path,
    name: String,
    env: Vec<(&'static str, String)>,
    args: Vec<String>,
    ranks: u32,
}

impl<'a> Job<'a> {
    fn new(exe: &'a Path, store: &'a Path, name: &str) -> Self {
        Self {
            exe,
            store,
            name: name.to_owned(),
            env: vec![],
            args: ARGS.iter().map(|s| s.to_string()).collect(),
            ranks: RANKS,
        }
    }

    fn env(mut self, k: &'static str, v: impl ToString) -> Self {
        self.env.push((k, v.to_string()));
        self
    }

    fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = mpirun(self.ranks);
        cmd.arg(self.exe)
            .args(&self.args)
            .env("PM_STORE", self.store)
            .env("PM_JOB", &self.name)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self) -> Output {
        self.command().bounded_output().unwrap()
    }

    fn spawn(&self) -> Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn_grouped()
            .unwrap()
    }

    fn job_dir(&self) -> PathBuf {
        self.store.join(&self.name)
    }

    fn committed(&self) -> Option<pm_core::store::CommitRecord> {
        read_record(&self.job_dir().join("committed")).unwrap()
    }

    fn rank_pids(&self) -> Vec<u32> {
        let pids = find_processes(self.exe, "PM_JOB", &self.name);
        assert_eq!(
            pids.len(),
            self.ranks as usize,
            "rank processes of {}: {pids:?}",
            self.name
        );
        pids
    }
}

fn ok(out: &Output) -> String {
    let t = text(out);
    assert!(out.status.success(), "the run failed:\n{t}");
    t
}

fn reference_checksum(exe: &Path, store: &Path) -> String {
    let out = ok(&Job::new(exe, store, "reference").run());
    assert!(out.contains("heat: starting"), "{out}");
    checksum(&out).expect("a checksum")
}

/// Kills one rank after at least two committed checkpoints, then runs the
/// same command again.
fn survives_sigkill_after_commit(exe: &Path, asynchronous: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(exe, store.path());

    let job = Job::new(exe, store.path(), "killed")
        .env("PM_EVERY", 10)
        .env("PM_ASYNC", u8::from(asynchronous))
        .arg("--pause-ms")
        .arg("15");
    let mut child = job.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while job.committed().is_none_or(|r| r.epoch < 2) {
        assert!(
            Instant::now() < deadline,
            "no second commit within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sigkill(job.rank_pids()[2]);
    let killed = bounded::wait_output(child, bounded::LIMIT, "mpirun");
    assert!(!killed.status.success(), "mpirun reports the killed rank");
    let record = job
        .committed()
        .expect("the committed epoch survives the kill");
    assert!(
        record.epoch >= 2 && record.step == record.epoch * 10,
        "{record:?}"
    );

    let out = ok(&job.run());
    assert_eq!(
        resumed_step(&out),
        Some(record.step),
        "resumed from the committed step:\n{out}"
    );
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
    assert!(
        !job.job_dir().exists(),
        "a finished job leaves no checkpoints"
    );
}

/// Stops rank 0 right before it commits epoch 3 (every rank has written its
/// snapshot), kills a rank, and checks that the restart uses epoch 2.
fn survives_sigkill_during_checkpoint(exe: &Path) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(exe, store.path());

    let job = Job::new(exe, store.path(), "torn").env("PM_EVERY", 10);
    let paused = Job::new(exe, store.path(), "torn")
        .env("PM_EVERY", 10)
        .env("PM_FAULT_PAUSE_BEFORE_COMMIT", 3);
    let mut child = paused.spawn();
    wait_until_paused(&mut child, 3);
    for rank in 0..RANKS {
        let manifest = job
            .job_dir()
            .join(format!("rank-{rank}/epoch-{:020}.manifest", 3));
        assert!(
            manifest.exists(),
            "rank {rank} wrote its snapshot of epoch 3"
        );
    }
    sigkill(paused.rank_pids()[1]);
    assert!(!bounded::wait_within(&mut child, bounded::LIMIT, "mpirun").success());
    let record = job.committed().unwrap();
    assert_eq!(
        (record.epoch, record.step),
        (2, 20),
        "epoch 3 was never committed"
    );

    let out = ok(&job.run());
    assert_eq!(resumed_step(&out), Some(20), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
}

/// Waits until rank 0 of `child` reports that it holds before committing
/// `epoch` (the `PM_FAULT_PAUSE_BEFORE_COMMIT` fault point).
fn wait_until_paused(child: &mut Child, epoch: u64) {
    wait_for_stderr(child, &format!("pausing before committing epoch {epoch}"));
}

/// Waits until `child` prints a line containing `needle` on its stderr.
fn wait_for_stderr(child: &mut Child, needle: &str) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(needle) {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the job ended without pausing"
        );
    }
}

fn c_heat(dir: &Path) -> PathBuf {
    build_c(&repo_root().join("examples/heat_c/heat.c"), dir)
}

#[test]
fn rust_heat_resumes_bit_exactly_after_sigkill() {
    survives_sigkill_after_commit(&workspace_bin("heat"), false);
}

#[test]
fn rust_heat_with_async_checkpoints_resumes_bit_exactly_after_sigkill() {
    survives_sigkill_after_commit(&workspace_bin("heat"), true);
}

/// Asynchronous checkpoints: rank 0 stops inside a phase of epoch 3's
/// write — its copy (the ranks are blocked), then its background hashing
/// and manifest writing (the ranks compute on) — and a rank is killed. The
/// restart uses epoch 2, bit-exactly.
#[test]
fn async_checkpoints_killed_in_each_phase_restart_from_the_previous_epoch() {
    let exe = workspace_bin("heat");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(&exe, store.path());
    for phase in ["CopyChunks", "HashChunks", "WriteManifest"] {
        let name = format!("async-{phase}");
        // Steps slow enough for each publish to end before the next
        // checkpoint is due, so that none waits for its predecessor.
        let job = Job::new(&exe, store.path(), &name)
            .env("PM_EVERY", 10)
            .env("PM_ASYNC", 1)
            .arg("--pause-ms")
            .arg("5");
        let paused = Job::new(&exe, store.path(), &name)
            .env("PM_EVERY", 10)
            .env("PM_ASYNC", 1)
            .env("PM_FAULT_PAUSE_IN", format!("{phase}:3"))
            .arg("--pause-ms")
            .arg("5");
        let mut child = paused.spawn();
        wait_for_stderr(&mut child, &format!("pausing in {phase} of epoch 3"));
        sigkill(paused.rank_pids()[1]);
        bounded::wait_within(&mut child, bounded::LIMIT, "mpirun");
        let record = job.committed().unwrap();
        assert_eq!((record.epoch, record.step), (2, 20), "killed in {phase}");
        let out = ok(&job.run());
        assert_eq!(resumed_step(&out), Some(20), "{phase}: {out}");
        assert_eq!(
            checksum(&out).as_deref(),
            Some(reference.as_str()),
            "{phase}: {out}"
        );
    }
}

/// Fast steps, `PM_EVERY=10`: every due asynchronous checkpoint is taken
/// (one due while its predecessor still publishes waits for it instead of
/// being skipped), as many as synchronous ones.
#[test]
fn async_checkpoints_keep_a_step_schedule_however_fast_the_steps() {
    let exe = workspace_bin("heat");
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut taken = Vec::new();
    for asynchronous in [false, true] {
        let job = Job::new(&exe, store.path(), &format!("every-async{asynchronous}"))
            .env("PM_EVERY", 10)
            .env("PM_ASYNC", u8::from(asynchronous))
            .arg("--report");
        let out = ok(&job.run());
        let counts: Vec<u64> = out
            .lines()
            .filter_map(|l| {
                l.split_once(" took ")?
                    .1
                    .split_once(" checkpoints ")?
                    .0
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(counts.len(), RANKS as usize, "{out}");
        assert!(counts.iter().all(|&c| c == counts[0]), "{out}");
        taken.push(counts[0]);
    }
    assert_eq!(
        taken[0], taken[1],
        "synchronous vs asynchronous checkpoints"
    );
    assert_eq!(taken[0], 12, "checkpoints every 10 of 120 steps");
}

#[test]
fn rust_heat_restarts_from_previous_epoch_when_killed_before_commit() {
    survives_sigkill_during_checkpoint(&workspace_bin("heat"));
}

#[test]
fn c_heat_resumes_bit_exactly_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    survives_sigkill_after_commit(&c_heat(dir.path()), false);
}

#[test]
fn c_heat_restarts_from_previous_epoch_when_killed_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    survives_sigkill_during_checkpoint(&c_heat(dir.path()));
}

#[test]
fn rust_and_c_heat_compute_the_same_plate() {
    let dir = tempfile::tempdir().unwrap();
    let c = c_heat(dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let heat = workspace_bin("heat");
    for ranks in [1, 3] {
        let mut rust = Job::new(&heat, store.path(), "same-rust");
        let mut cjob = Job::new(&c, store.path(), "same-c");
        rust.ranks = ranks;
        cjob.ranks = ranks;
        let (r, c) = (ok(&rust.run()), ok(&cjob.run()));
        assert_eq!(checksum(&r), checksum(&c), "{ranks} ranks:\n{r}\n{c}");
        assert!(checksum(&r).is_some());
    }
}

/// Leaves a job with a committed epoch 1 and no finished run.
fn interrupted_job<'a>(exe: &'a Path, store: &'a Path, name: &str) -> Job<'a> {
    let paused = Job::new(exe, store, name)
        .env("PM_EVERY", 5)
        .env("PM_FAULT_PAUSE_BEFORE_COMMIT", 2);
    let mut child = paused.spawn();
    wait_until_paused(&mut child, 2);
    sigkill(paused.rank_pids()[0]);
    bounded::wait_within(&mut child, bounded::LIMIT, "mpirun");
    assert_eq!(paused.committed().map(|r| r.epoch), Some(1));
    Job::new(exe, store, name)
}

fn failed(out: &Output) -> String {
    let t = text(out);
    assert!(!out.status.success(), "expected a failure:\n{t}");
    assert!(
        !t.contains("panicked") && !t.contains("Segmentation"),
        "a crash, not an error:\n{t}"
    );
    t
}

#[test]
fn restarting_with_another_shape_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = c_heat(dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    for exe in [workspace_bin("heat"), c] {
        let job = interrupted_job(&exe, store.path(), "shape");
        let mut fewer = Job::new(&exe, store.path(), "shape");
        fewer.ranks = 2;
        let t = failed(&fewer.run());
        assert!(
            t.contains("checkpointed by a run of 4 ranks but this run has 2"),
            "{t}"
        );
        let mut more = Job::new(&exe, store.path(), "shape");
        more.ranks = 6;
        let t = failed(&more.run());
        assert!(
            t.contains("checkpointed by a run of 4 ranks but this run has 6"),
            "{t}"
        );
        // The refused ranks left no empty directory behind.
        for r in 4..6 {
            let dir = job.job_dir().join(format!("rank-{r}"));
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }

        let mut wider = Job::new(&exe, store.path(), "shape");
        wider.args[3] = "80".into();
        let t = failed(&wider.run());
        assert!(
            t.contains("region \"u\"") && t.contains("same problem size"),
            "{t}"
        );

        // The committed checkpoint is still there and usable.
        let out = ok(&job.run());
        assert_eq!(resumed_step(&out), Some(5), "{out}");
    }
}

#[test]
fn unusable_store_and_bad_settings_are_clear_errors() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let heat = workspace_bin("heat");
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let not_a_dir = store.path().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let t = failed(&Job::new(&heat, &not_a_dir, "nowhere").run());
    assert!(
        t.contains("create store directory") && t.contains(&not_a_dir.display().to_string()),
        "{t}"
    );

    let t = failed(
        &Job::new(&heat, store.path(), "bad-env")
            .env("PM_EVERY", "often")
            .run(),
    );
    assert!(t.contains("PM_EVERY=\"often\" is invalid"), "{t}");
    let t = failed(&Job::new(&heat, store.path(), "../escape").run());
    assert!(t.contains("invalid job id"), "{t}");
}

#[test]
fn c_api_misuse_gets_error_codes_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let misuse = build_c(&repo_root().join("tests/c/misuse.c"), dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    for (mode, expected) in [
        ("init-before-mpi", "initialise pm after MPI_Init"),
        ("step-before-init", "pm_step was called before pm_init"),
        ("duplicate-region", "region \"grid\" is registered twice"),
        ("null-name", "invalid region name \"bad/name\""),
        ("init-twice", "pm_init was called twice"),
    ] {
        let out = mpirun(2)
            .arg(&misuse)
            .arg(mode)
            .env("PM_STORE", store.path())
            .env("PM_JOB", mode)
            .bounded_output()
            .unwrap();
        let t = text(&out);
        assert!(
            out.status.success() && t.contains("as expected"),
            "{mode}:\n{t}"
        );
        assert!(t.contains(expected), "{mode}:\n{t}");
    }
}

/// Runs a program in which rank 0 computes 30 ms per step and the others
/// 3 ms, and checks the compute times the runtime measured.
fn check_imbalance(program: &Path, args: &[&str]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = mpirun(3)
        .arg(program)
        .args(args)
        .env("PM_STORE", store.path())
        .env("PM_JOB", "imbalance")
        .bounded_output()
        .unwrap();
    let t = ok(&out);
    let stats: Vec<(u32, f64, f64)> = t
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"rank")).then(|| {
                (
                    w[1].parse().unwrap(),
                    w[3].parse().unwrap(),
                    w[5].parse().unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(stats.len(), 3, "{t}");
    for (rank, compute_ms, wall_ms) in stats {
        // Every rank's step lasts as long as the slow rank's (they wait for it).
        assert!(wall_ms > 15.0, "rank {rank}: wall {wall_ms} ms\n{t}");
        if rank == 0 {
            assert!(
                compute_ms > 25.0,
                "the slow rank computes: {compute_ms} ms\n{t}"
            );
        } else {
            assert!(
                compute_ms < 15.0,
                "rank {rank} waits, it does not compute: {compute_ms} ms\n{t}"
            );
        }
    }
}

#[test]
fn compute_time_excludes_time_waiting_in_mpi() {
    check_imbalance(&workspace_bin("pm_probe"), &["imbalance", "30", "3", "40"]);
}

#[test]
fn libpm_times_mpi_waits_of_c_programs() {
    let dir = tempfile::tempdir().unwrap();
    check_imbalance(
        &build_c(&repo_root().join("tests/c/imbalance.c"), dir.path()),
        &[],
    );
}

#[test]
fn serde_values_and_regions_resume_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let probe = workspace_bin("pm_probe");
    let command = |job: &str| {
        let mut cmd = mpirun(2);
        cmd.arg(&probe)
            .args(["values", "60", "5"])
            .env("PM_STORE", store.path())
            .env("PM_JOB", job)
            .env("PM_EVERY", "7");
        cmd
    };
    let finals = |t: &str| {
        let mut v: Vec<String> = t
            .lines()
            .filter(|l| l.contains(" final "))
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    let reference = finals(&ok(&command("values-ref").bounded_output().unwrap()));
    assert_eq!(reference.len(), 2);

    let mut child = command("values")
        .env("PM_FAULT_PAUSE_BEFORE_COMMIT", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_grouped()
        .unwrap();
    wait_until_paused(&mut child, 4);
    sigkill(find_processes(&probe, "PM_JOB", "values")[0]);
    bounded::wait_within(&mut child, bounded::LIMIT, "mpirun");

    let t = ok(&command("values").bounded_output().unwrap());
    assert!(t.contains("resumed from step 21"), "{t}");
    assert_eq!(finals(&t), reference);
}

#[test]
fn step_while_a_region_or_value_is_borrowed_is_an_error_and_takes_no_checkpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = mpirun(2)
        .arg(workspace_bin("pm_probe"))
        .arg("borrowed")
        .env("PM_STORE", store.path())
        .env("PM_JOB", "borrowed")
        .env("PM_EVERY", "1")
        .bounded_output()
        .unwrap();
    let t = ok(&out);
    assert!(!t.contains("panicked"), "{t}");
    for rank in 0..2 {
        for line in [
            r#"inside with_mut: Err("region \"u\" is borrowed while step() runs: finish with_mut before calling step"), step 0 epoch 0"#,
            r#"value held: Err("value \"seed\" is borrowed while step() runs: drop its borrow_mut() before calling step"), step 0 epoch 0"#,
            "inside with: Ok(Continue), step 1 epoch 1",
        ] {
            assert!(
                t.contains(&format!("rank {rank} {line}")),
                "rank {rank}: {line}\n{t}"
            );
        }
    }
}

#[test]
fn the_header_works_from_cxx() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(&repo_root().join("tests/c/cxx_uses_header.cpp"), dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = mpirun(2)
        .arg(&exe)
        .env("PM_STORE", store.path())
        .env("PM_JOB", "cxx")
        .bounded_output()
        .unwrap();
    assert!(ok(&out).contains("c++ ok"));
}

#[test]
fn sigusr1_to_mpirun_stops_the_job_at_a_checkpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let heat = workspace_bin("heat");
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(&heat, store.path());
    let job = Job::new(&heat, store.path(), "stopped")
        .arg("--pause-ms")
        .arg("15");
    let mut child = job.spawn();
    // The handlers exist once pm is initialised, which heat reports by starting.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    while !out.contains("heat: starting") {
        assert!(
            stdout.read_line(&mut out).unwrap() > 0,
            "the job ended early:\n{out}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    assert!(
        bounded::wait_within(&mut child, bounded::LIMIT, "mpirun").success(),
        "{out}"
    );
    let stopped: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("heat: stopping at step "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the job did not stop at a checkpoint:\n{out}"));
    assert_eq!(job.committed().map(|r| r.step), Some(stopped));

    let out = ok(&job.run());
    assert_eq!(resumed_step(&out), Some(stopped), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
}
