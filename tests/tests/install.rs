//! `scripts/install.sh`, what `make install` runs after its build, from the
//! dev build into a temporary prefix: a C and a Fortran program built with
//! nothing but the installed `pm.pc` run under the installed `pmrun`.

use pm_tests::Bounded;
use pm_tests::mpi::{checksum, repo_root, sh, target_dir, text, workspace_bin};
use std::path::Path;
use std::process::Command;

const INSTALLED: [&str; 8] = [
    "bin/pmrun",
    "bin/pmd",
    "lib/libpm.so",
    "lib/libpm_fortran.a",
    "lib/pkgconfig/pm.pc",
    "include/pm.h",
    "include/pm.f90",
    "include/pm.mod",
];

/// Runs `program` under `<prefix>/bin/pmrun -n 2` and returns its checksum.
fn run_under_installed_pmrun(prefix: &Path, program: &Path) -> String {
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = Command::new(prefix.join("bin/pmrun"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Each test starts without the history of earlier runs.
        .env("PM_HISTORY", "none")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env_remove("PM_STORE")
        .env_remove("LD_LIBRARY_PATH")
        .arg("-n")
        .arg("2")
        .arg("--store")
        .arg(store.path())
        .arg(program)
        .args(["--rows", "96", "--cols", "64", "--steps", "120"])
        .bounded_output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "{}:\n{t}", program.display());
    assert!(t.contains("heat: starting a 96x64 plate on 2 ranks"), "{t}");
    checksum(&t).unwrap_or_else(|| panic!("no checksum:\n{t}"))
}

#[test]
fn installed_pm_builds_and_runs_c_and_fortran_programs() {
    for f in ["pmrun", "pmd", "libpm.so"] {
        workspace_bin(f);
    }
    let prefix = tempfile::tempdir().unwrap();
    let prefix = prefix.path();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/install.sh"))
        .arg(target_dir())
        .arg(prefix)
        .env_remove("DESTDIR")
        .bounded_output()
        .unwrap();
    assert!(out.status.success(), "install.sh:\n{}", text(&out));
    for f in INSTALLED {
        assert!(prefix.join(f).is_file(), "{f} is not installed");
    }
    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/pm.pc")).unwrap();
    assert!(
        pc.contains(&format!("libdir={}/lib\n", prefix.display()))
            && pc.contains(&format!("includedir={}/include\n", prefix.display()))
            && !pc.contains(&*repo_root().to_string_lossy())
            && !pc.contains('@'),
        "pm.pc names the installed files only:\n{pc}"
    );

    // Built in a directory of their own, with only the installed pm.h, pm.mod
    // and libraries (the Fortran line does not compile pm.f90).
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let pkgconfig = prefix.join("lib/pkgconfig");
    let examples = repo_root().join("examples");
    sh(
        work,
        &pkgconfig,
        &format!(
            "mpicc -O2 -Wall -Wextra -Werror {} $(pkg-config --cflags --libs pm) -o heat_c",
            examples.join("heat_c/heat.c").display()
        ),
    );
    sh(
        work,
        &pkgconfig,
        &format!(
            "mpif90 -O2 -Wall -Wextra -Werror {} $(pkg-config --cflags --libs pm) -o heat_f",
            examples.join("heat_f/heat.f90").display()
        ),
    );
    // (cargo test points LD_LIBRARY_PATH at target/debug; users' does not.)
    for program in ["heat_c", "heat_f"] {
        let ldd = Command::new("ldd")
            .arg(work.join(program))
            .env_remove("LD_LIBRARY_PATH")
            .bounded_output()
            .unwrap();
        let libpm = format!("libpm.so => {}/lib/libpm.so", prefix.display());
        assert!(
            text(&ldd).contains(&libpm),
            "{program} loads the installed libpm.so:\n{}",
            text(&ldd)
        );
    }

    let c = run_under_installed_pmrun(prefix, &work.join("heat_c"));
    let fortran = run_under_installed_pmrun(prefix, &work.join("heat_f"));
    assert_eq!(c, fortran, "heat_c and heat_f compute the same plate");
}
