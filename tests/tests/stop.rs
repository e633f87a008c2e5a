//! A stop (`PM_EXIT`) on programs written exactly as the usage example of
//! `include/pm.h`: a drain, a checkpoint request, a node loss and SIGUSR1 to
//! mpirun, under pmrun and under plain mpirun, all end with the result of an
//! undisturbed run, and a run that stopped is never reported as the job's end.

use pm_core::store::commit::read_record;
use pm_tests::Bounded;
use pm_tests::bounded;
use pm_tests::header::{build_example, header_example, results};
use pm_tests::job::{Job, files_under, pmrun, relaunch_epochs};
use pm_tests::mpi::{mpirun, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The jobs share two cores; one at a time keeps their timing sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const RANKS: u32 = 4;
const STEPS: &str = "150";
/// pmrun's exit status for a job that stopped at a checkpoint unasked.
const STOPPED_EXIT: i32 = 75;

/// What pm.h's example looked like before it said what to do on PM_EXIT: a
/// program that breaks, prints its (partial) result and finalizes must
/// still lose nothing.
const BREAK_THEN_FINALIZE: &str = r#"
    MPI_Init(&argc, &argv);
    if (pm_init(MPI_COMM_WORLD) != PM_OK) abort_with(pm_last_error());
    pm_region("grid", grid, bytes);
    long long start = pm_restored_step();
    for (long long s = start < 0 ? 0 : start; s < steps; s++) {
        compute(grid);
        int rc = pm_step();
        if (rc == PM_EXIT) break;
        if (rc < 0) abort_with(pm_last_error());
    }
    print_result(grid);
    pm_finalize();
    MPI_Finalize();
    return 0;
"#;

struct Programs {
    _dir: tempfile::TempDir,
    example: PathBuf,
    break_then_finalize: PathBuf,
}

fn programs() -> Programs {
    let dir = tempfile::tempdir().unwrap();
    Programs {
        example: build_example(&header_example(), "header_example", dir.path()),
        break_then_finalize: build_example(BREAK_THEN_FINALIZE, "break_then_finalize", dir.path()),
        _dir: dir,
    }
}

fn app_args(pause_ms: u32) -> Vec<String> {
    vec![STEPS.into(), pause_ms.to_string()]
}

/// The result of an undisturbed run under plain mpirun.
fn reference(exe: &Path) -> String {
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = plain(exe, store.path(), "reference", 0)
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let r = results(&t);
    assert_eq!(r.len(), 1, "{t}");
    r[0].to_owned()
}

/// `mpirun -n 4 <exe>` with its own store and job id.
fn plain(exe: &Path, store: &Path, job: &str, pause_ms: u32) -> Command {
    let mut cmd = mpirun(RANKS);
    cmd.arg(exe)
        .args(app_args(pause_ms))
        .env("PM_STORE", store)
        .env("PM_JOB", job)
        .env("PM_EVERY", "5");
    cmd
}

fn start(id: &str, exe: &Path, nodes: &str) -> Job {
    Job::start_app(
        id,
        &["-n", "4", "--local-nodes", nodes, "--every", "10"],
        exe,
        &app_args(20),
        &[],
    )
}

/// The job ended with success, printed exactly the reference result once,
/// and left nothing behind.
fn assert_done(ended: &pm_tests::job::Ended, store: &Path, reference: &str) {
    let out = &ended.output;
    assert!(ended.status.success(), "pmrun failed:\n{out}");
    assert_eq!(results(out), [reference], "{out}");
    let left = files_under(store);
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

#[test]
fn the_header_example_drained_under_pmrun_ends_with_the_undisturbed_result() {
    let p = programs();
    let _serial = serial();
    let reference = reference(&p.example);
    let job = start("example-drain", &p.example, "3");
    job.wait_for_ranks(RANKS as usize);
    job.wait_for_commit(1);
    let (ok, reply) = job.ctl(&["drain", "node2"]);
    assert!(ok, "the drain failed: {reply}\n{}", job.output());
    assert!(reply.contains("node node2 drained"), "{reply}");
    let (ended, store) = job.finish();
    assert_done(&ended, store.path(), &reference);
}

#[test]
fn the_header_example_checkpointed_on_request_ends_with_the_undisturbed_result() {
    let p = programs();
    let _serial = serial();
    let reference = reference(&p.example);
    let job = start("example-ckpt", &p.example, "3");
    job.wait_for_ranks(RANKS as usize);
    let (ok, reply) = job.ctl(&["checkpoint"]);
    assert!(ok, "the checkpoint failed: {reply}\n{}", job.output());
    assert!(reply.contains("committed"), "{reply}");
    let (ended, store) = job.finish();
    assert_done(&ended, store.path(), &reference);
}

#[test]
fn the_header_example_survives_a_node_loss() {
    let p = programs();
    let _serial = serial();
    let reference = reference(&p.example);
    let job = start("example-lose", &p.example, "3");
    job.wait_for_ranks(RANKS as usize);
    job.wait_for_commit(2);
    job.kill_node(&job.status().unwrap(), "node2");
    let (ended, store) = job.finish();
    assert_eq!(relaunch_epochs(&ended.output).len(), 1, "{}", ended.output);
    assert_done(&ended, store.path(), &reference);
}

/// Starts `exe` under plain mpirun, waits for its first commit and sends
/// mpirun SIGUSR1: the run must end successfully and keep its checkpoint.
fn stop_plain_run(exe: &Path, store: &Path, job: &str) -> Output {
    let mut child: Child = plain(exe, store, job, 20)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn_grouped()
        .unwrap();
    let record = store.join(job).join("committed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !record.exists() {
        assert!(Instant::now() < deadline, "no commit within a minute");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.id(), libc::SIGUSR1);
    let out = bounded::wait_output(child, bounded::LIMIT, "mpirun");
    let t = text(&out);
    assert!(out.status.success(), "the stopped run failed:\n{t}");
    let kept = read_record(&record).unwrap();
    assert!(
        kept.is_some_and(|r| r.step > 0 && r.step < 150),
        "the stop's checkpoint is gone ({kept:?}):\n{t}"
    );
    out
}

#[test]
fn the_header_example_stopped_by_sigusr1_to_mpirun_keeps_its_checkpoint() {
    let p = programs();
    let _serial = serial();
    let reference = reference(&p.example);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let stopped = stop_plain_run(&p.example, store.path(), "usr1");
    assert!(results(&text(&stopped)).is_empty(), "{}", text(&stopped));
    let out = plain(&p.example, store.path(), "usr1", 0)
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(results(&t), [reference.as_str()], "{t}");
    // The finished job removed its checkpoints.
    assert!(files_under(&store.path().join("usr1")).is_empty());
}

#[test]
fn a_program_that_finalizes_after_a_stop_loses_nothing() {
    let p = programs();
    let _serial = serial();
    let exe = &p.break_then_finalize;
    let reference = reference(exe);

    // Plain mpirun: the partial result is printed, the checkpoint kept.
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    stop_plain_run(exe, store.path(), "usr1");
    let out = plain(exe, store.path(), "usr1", 0)
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert_eq!(results(&t), [reference.as_str()], "{t}");

    // pmrun: a drain resumes the job, which ends with the right result.
    let job = start("finalize-drain", exe, "3");
    job.wait_for_ranks(RANKS as usize);
    job.wait_for_commit(1);
    let (ok, reply) = job.ctl(&["drain", "node2"]);
    assert!(ok, "the drain failed: {reply}\n{}", job.output());
    let (ended, _store) = job.finish();
    assert!(ended.status.success(), "{}", ended.output);
    assert_eq!(
        results(&ended.output).last().copied(),
        Some(reference.as_str()),
        "{}",
        ended.output
    );
}

#[test]
fn a_stop_pmrun_did_not_ask_for_keeps_the_job_for_its_resume() {
    let p = programs();
    let _serial = serial();
    let reference = reference(&p.example);
    let job = start("example-unasked", &p.example, "3");
    job.wait_for_ranks(RANKS as usize);
    job.wait_for_commit(1);
    let launcher = job.status().unwrap()["launcher_pid"].as_u64().unwrap();
    signal(launcher as u32, libc::SIGUSR1);
    let id = job.id.clone();
    let (ended, store) = job.finish();
    let out = &ended.output;
    assert_eq!(ended.status.code(), Some(STOPPED_EXIT), "{out}");
    assert!(out.contains(&format!("--job {id} to resume")), "{out}");
    assert!(results(out).is_empty(), "{out}");

    let resumed = pmrun()
        .arg("--store")
        .arg(store.path())
        .args(["--job", &id, "-n", "4", "--local-nodes", "3"])
        .arg(&p.example)
        .args(app_args(0))
        .bounded_output()
        .unwrap();
    let t = text(&resumed);
    assert!(resumed.status.success(), "{t}");
    assert!(t.contains("resuming job"), "{t}");
    assert_eq!(results(&t), [reference.as_str()], "{t}");
    let left = files_under(store.path());
    assert!(left.is_empty(), "the job left files behind: {left:?}");
}
