//! Running the real example programs under the real `mpirun`, finding their
//! rank processes, and building the C and Fortran examples against
//! `libpm.so` the way a user does (one `mpicc` or `mpif90` line with
//! `pkg-config`).

use crate::bounded;
use crate::bounded::Bounded;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cargo target directory the tests were built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// A workspace binary built by `cargo build --workspace` (which `make test` runs first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before `cargo test` (make test does)",
        path.display()
    );
    path
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `mpirun -n <ranks>` that works as root and on a machine with fewer cores than ranks.
pub fn mpirun(ranks: u32) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        // As pmrun does: a rank killed in MPI_Init can otherwise leave
        // mpirun hung in PMIx's finalize (see launcher/src/backend.rs).
        .env("PMIX_MCA_gds", "hash")
        .args(["-n", &ranks.to_string()]);
    cmd
}

/// Writes a `pm.pc` for the libpm.so in `target_dir()` into `dir`, from the
/// same template `make lib` uses.
pub fn write_pkg_config(dir: &Path) {
    let template = std::fs::read_to_string(repo_root().join("plugin/pm.pc.in")).unwrap();
    let pc = template
        .replace("@LIBDIR@", &target_dir().display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &repo_root().join("include").display().to_string(),
        )
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.join("pm.pc"), pc).unwrap();
}

/// Compiles a C (or, for `.cpp`, C++) program against pm with one `mpicc`
/// (`mpicxx`) line, as the README shows; returns the executable.
pub fn build_c(source: &Path, out_dir: &Path) -> PathBuf {
    workspace_bin("libpm.so");
    write_pkg_config(out_dir);
    let exe = out_dir.join(source.file_stem().unwrap());
    // Open MPI's deprecated C++ bindings do not compile warning-free; skip them.
    let compiler = if source.extension().is_some_and(|e| e == "cpp") {
        "mpicxx -DOMPI_SKIP_MPICXX"
    } else {
        "mpicc"
    };
    let script = format!(
        "{compiler} -O2 -Wall -Wextra -Werror {} $(pkg-config --cflags --libs pm) -o {}",
        source.display(),
        exe.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("PKG_CONFIG_PATH", out_dir)
        .bounded_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Processes running `exe` whose environment has `var=value`.
pub fn find_processes(exe: &Path, var: &str, value: &str) -> Vec<u32> {
    let wanted = format!("{var}={value}");
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_owned());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let proc_dir = entry.path();
        if std::fs::read_link(proc_dir.join("exe")).ok().as_deref() != Some(exe.as_path()) {
            continue;
        }
        let Ok(environ) = std::fs::read(proc_dir.join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|kv| kv == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs a process.
pub fn sigkill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

/// Standard output and error of a finished command, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The hexadecimal checksum a heat run printed.
pub fn checksum(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("heat: checksum "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
}

/// The step a heat run said it resumed from.
pub fn resumed_step(output: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("heat: resumed from step "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
}

/// Runs a shell command line (a compiler line with `$(pkg-config ...)`) in
/// `dir` with `PKG_CONFIG_PATH=pkg_config_path`; panics with its output if
/// it fails.
pub fn sh(dir: &Path, pkg_config_path: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PKG_CONFIG_PATH", pkg_config_path)
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "{script} failed:\n{}", text(&out));
}

/// Compiles a Fortran program against pm with one `mpif90` line that
/// compiles the `use pm` module (`include/pm.f90`) with it, the build-tree
/// form the README shows; `flags` go to the compiler too. Returns the
/// executable `out_dir/name`.
pub fn build_fortran(source: &Path, flags: &str, out_dir: &Path, name: &str) -> PathBuf {
    workspace_bin("libpm.so");
    write_pkg_config(out_dir);
    let exe = out_dir.join(name);
    sh(
        out_dir,
        out_dir,
        &format!(
            "mpif90 -O2 -Wall -Wextra -Werror {flags} $(pkg-config --variable=includedir pm)/pm.f90 \
             {} $(pkg-config --cflags --libs pm) -o {}",
            source.display(),
            exe.display()
        ),
    );
    exe
}

/// The record of the newest epoch committed in the job directory `job_dir`.
pub fn committed(job_dir: &Path) -> Option<pm_core::store::CommitRecord> {
    pm_core::store::commit::read_record(&job_dir.join("committed")).unwrap()
}

/// Waits (up to a minute) until the job in `job_dir` has committed `epoch`
/// or a later one; `child` is its `mpirun`, which must still be running.
pub fn wait_for_commit(job_dir: &Path, epoch: u64, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while committed(job_dir).is_none_or(|r| r.epoch < epoch) {
        assert!(
            std::time::Instant::now() < deadline,
            "no commit of epoch {epoch} within a minute"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it committed epoch {epoch}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The step a heat run said it stopped at after a checkpoint (`PM_EXIT`).
pub fn stopped_step(output: &str) -> Option<u64> {
    let rest = output.split("heat: stopping at step ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Stops a heat job at a checkpoint: once it has started (pm's signal
/// handlers exist from then on), SIGUSR1 to its `mpirun`, spawned with
/// piped stdout and stderr. Returns its output; `mpirun` must succeed.
pub fn stop_with_sigusr1(mut child: std::process::Child) -> String {
    use std::io::{BufRead, Read};
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    while !out.contains("heat: starting") {
        assert!(
            stdout.read_line(&mut out).unwrap() > 0,
            "the job ended early:\n{out}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    stdout.read_to_string(&mut out).unwrap();
    let rest = bounded::wait_output(child, bounded::LIMIT, "mpirun");
    out.push_str(&text(&rest));
    assert!(rest.status.success(), "{out}");
    out
}
