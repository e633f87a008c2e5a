//! Fortran programs through `use pm` (`include/pm.f90`) and `libpm.so`,
//! built with one `mpif90` line as a user does and run under the real
//! `mpirun`: `examples/heat_f` resumes bit-exactly after a rank is killed
//! and computes `heat_c`'s plate, a stop at a checkpoint resumes, the MPI
//! waits of `use mpi`, `mpif.h` and `use mpi_f08` programs count as MPI time,
//! and pm's errors arrive as Fortran strings.

use pm_tests::Bounded;
use pm_tests::bounded;
use pm_tests::mpi::{
    build_c, build_fortran, checksum, committed, find_processes, mpirun, repo_root, resumed_step,
    sigkill, stop_with_sigusr1, stopped_step, text, wait_for_commit,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// One MPI job at a time: they oversubscribe the machine already.
static SERIAL: Mutex<()> = Mutex::new(());

const ARGS: [&str; 6] = ["--rows", "96", "--cols", "64", "--steps", "120"];

fn heat_f(dir: &Path) -> PathBuf {
    build_fortran(
        &repo_root().join("examples/heat_f/heat.f90"),
        "",
        dir,
        "heat_f",
    )
}

/// `mpirun -n <ranks> <exe> ARGS` as job `job` in `store`.
fn heat(exe: &Path, ranks: u32, store: &Path, job: &str) -> Command {
    let mut cmd = mpirun(ranks);
    cmd.arg(exe)
        .args(ARGS)
        .env("PM_STORE", store)
        .env("PM_JOB", job);
    cmd
}

fn ok(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success(), "the run failed:\n{t}");
    t
}

/// `mpirun -n <ranks> <exe>` as job `job` in a store of its own, with no
/// other MPI job of these tests running; its output, once it succeeded.
fn run_alone(exe: &Path, ranks: u32, job: &str) -> String {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = mpirun(ranks)
        .arg(exe)
        .env("PM_STORE", store.path())
        .env("PM_JOB", job)
        .bounded_output()
        .unwrap();
    ok(out)
}

fn reference_checksum(exe: &Path, store: &Path) -> String {
    let out = ok(heat(exe, 4, store, "reference").bounded_output().unwrap());
    assert!(
        out.contains("heat: starting a 96x64 plate on 4 ranks"),
        "{out}"
    );
    checksum(&out).unwrap_or_else(|| panic!("no checksum:\n{out}"))
}

#[test]
fn fortran_heat_resumes_bit_exactly_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = heat_f(dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(&exe, store.path());

    let job_dir = store.path().join("killed");
    let mut killed = heat(&exe, 4, store.path(), "killed");
    killed.env("PM_EVERY", "10").args(["--pause-ms", "15"]);
    let mut child = killed
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_grouped()
        .unwrap();
    wait_for_commit(&job_dir, 2, &mut child);
    let ranks = find_processes(&exe, "PM_JOB", "killed");
    assert_eq!(ranks.len(), 4, "rank processes: {ranks:?}");
    sigkill(ranks[2]);
    let out = bounded::wait_output(child, bounded::LIMIT, "mpirun");
    assert!(!out.status.success(), "mpirun reports the killed rank");
    let record = committed(&job_dir).expect("the committed epoch survives the kill");
    assert!(
        record.epoch >= 2 && record.step == record.epoch * 10,
        "{record:?}"
    );

    let out = ok(killed.bounded_output().unwrap());
    assert_eq!(resumed_step(&out), Some(record.step), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
    assert!(!job_dir.exists(), "a finished job leaves no checkpoints");
}

#[test]
fn fortran_and_c_heat_compute_the_same_plate() {
    let dir = tempfile::tempdir().unwrap();
    let fortran = heat_f(dir.path());
    let c = build_c(&repo_root().join("examples/heat_c/heat.c"), dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    for ranks in [1, 3] {
        let f = ok(heat(&fortran, ranks, store.path(), "same-f")
            .bounded_output()
            .unwrap());
        let c = ok(heat(&c, ranks, store.path(), "same-c")
            .bounded_output()
            .unwrap());
        assert!(checksum(&f).is_some(), "{f}");
        assert_eq!(checksum(&f), checksum(&c), "{ranks} ranks:\n{f}\n{c}");
    }
}

/// SIGUSR1 to mpirun: heat_f gets PM_EXIT, skips its checksum, exits with
/// status 0 and keeps the checkpoint, from which the same command resumes.
#[test]
fn fortran_heat_stops_at_a_checkpoint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let exe = heat_f(dir.path());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let reference = reference_checksum(&exe, store.path());

    let mut job = heat(&exe, 4, store.path(), "stopped");
    job.args(["--pause-ms", "15"]);
    let child = job
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_grouped()
        .unwrap();
    let out = stop_with_sigusr1(child);
    let stopped = stopped_step(&out)
        .unwrap_or_else(|| panic!("the job did not stop at a checkpoint:\n{out}"));
    assert!(
        checksum(&out).is_none(),
        "a stopped run prints no checksum:\n{out}"
    );
    let job_dir = store.path().join("stopped");
    assert_eq!(committed(&job_dir).map(|r| r.step), Some(stopped));

    let out = ok(job.bounded_output().unwrap());
    assert_eq!(resumed_step(&out), Some(stopped), "{out}");
    assert_eq!(checksum(&out).as_deref(), Some(reference.as_str()), "{out}");
}

/// One `rank R steps N mpi_s X compute_mean_s Y wall_mean_s Z` line of
/// tests/fortran/barrier_wait.F90, as (mpi_s, compute_mean_s).
fn barrier_stats(output: &str, rank: u32) -> (f64, f64) {
    let prefix = format!("rank {rank} ");
    let line = output
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no stats of rank {rank}:\n{output}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> f64 {
        let at = words.iter().position(|w| *w == name).expect(name);
        words[at + 1].parse().expect(name)
    };
    (field("mpi_s"), field("compute_mean_s"))
}

#[test]
fn mpi_waits_of_fortran_programs_count_as_mpi_time() {
    let dir = tempfile::tempdir().unwrap();
    let source = repo_root().join("tests/fortran/barrier_wait.F90");
    // mpif.h declares every MPI constant as a parameter, unused ones too.
    let bindings = [
        ("use_mpi", ""),
        ("mpif_h", "-DPM_MPIFH -Wno-unused-parameter"),
        ("use_mpi_f08", "-DPM_F08"),
    ];
    for (binding, flags) in bindings {
        let exe = build_fortran(&source, flags, dir.path(), binding);
        let t = run_alone(&exe, 2, binding);
        // Rank 0 waited 2 s in MPI_Barrier for rank 1, which slept.
        let (mpi, compute) = barrier_stats(&t, 0);
        assert!(
            mpi >= 1.0,
            "{binding}: rank 0's barrier wait is MPI time:\n{t}"
        );
        assert!(
            compute < 0.5,
            "{binding}: rank 0's wait is not compute time:\n{t}"
        );
        let (mpi, compute) = barrier_stats(&t, 1);
        assert!(
            compute >= 1.0 && mpi < 1.0,
            "{binding}: rank 1's sleep is its compute time:\n{t}"
        );
    }
}

/// The `[...]` fields of an `errors` line: pm_strerror and pm_last_error.
fn bracketed(line: &str) -> Vec<&str> {
    line.split('[')
        .skip(1)
        .map(|f| f.rsplit_once(']').expect("a closing bracket").0)
        .collect()
}

#[test]
fn pm_errors_reach_fortran_as_fortran_strings() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_fortran(
        &repo_root().join("tests/fortran/errors.f90"),
        "",
        dir.path(),
        "errors",
    );
    let t = run_alone(&exe, 1, "errors");
    let line = |call: &str| {
        t.lines()
            .find(|l| l.starts_with(call))
            .unwrap_or_else(|| panic!("no line for {call}:\n{t}"))
    };
    assert_eq!(line("before any call"), "before any call []", "{t}");

    let step = line("pm_step ");
    assert!(step.starts_with("pm_step -1 ["), "PM_ERR_STATE:\n{t}");
    let fields = bracketed(step);
    assert_eq!(fields[0], "pm functions called in the wrong order", "{t}");
    assert!(
        fields[1].contains("pm_step") && fields[1].contains("pm_init"),
        "pm_last_error says what was called too early:\n{t}"
    );

    let region = line("pm_region ");
    assert!(
        region.starts_with("pm_region -2 ["),
        "PM_ERR_ARGUMENT:\n{t}"
    );
    let fields = bracketed(region);
    assert_eq!(fields[0], "invalid argument", "{t}");
    assert!(
        fields[1].contains("\"not a name!\""),
        "the message names the bad region name:\n{t}"
    );

    let unknown = bracketed(line("unknown "));
    assert_eq!(unknown[0], "unknown pm error code", "{t}");
    // Fortran strings are exactly as long as the message: no padding, no NUL.
    for l in t.lines() {
        assert!(!l.contains('\0') && !l.contains(" ]"), "{l:?}");
    }
}
