//! pmrun's SPANK plugin (`slurm/`, `libpm_slurm.so`) in a real Slurm the
//! test starts with it in plugstack.conf: its options in `--help` and
//! checked at submission, `srun --pm` running a step under pmrun with the
//! `#SBATCH --pm-...` options, and the epilog removing what a killed agent
//! left on its node.

use pm_tests::Bounded;
use pm_tests::bounded::poll_until;
use pm_tests::job::committed_epoch_of;
use pm_tests::mpi::{checksum, mpirun, text, workspace_bin};
use pm_tests::slurm::Cluster;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// heat's plate in these tests.
const PLATE: &str = "--rows 96 --cols 64 --pause-ms 20";

/// A cluster with the plugin, which finds pmrun through its argument.
fn cluster(nodes: u32, port: u16) -> Cluster {
    Cluster::start_with_plugin(
        nodes,
        port,
        &workspace_bin("libpm_slurm.so"),
        &format!("pmrun={}", workspace_bin("pmrun").display()),
    )
}

/// The checksum of heat undisturbed under plain mpirun.
fn reference(ranks: u32, steps: u32) -> String {
    let out = mpirun(ranks)
        .arg(workspace_bin("heat"))
        .args(PLATE.split(' '))
        .args(["--steps", &steps.to_string(), "--no-pm"])
        .bounded_output()
        .unwrap();
    checksum(&text(&out)).expect("reference checksum")
}

/// A batch script: `#SBATCH` lines, then `srun --pm` of heat on 6 ranks.
fn script(sbatch: &str, store: &Path, steps: u32) -> String {
    format!(
        "#SBATCH {sbatch} --pm-store={store}\n\
         # Open MPI across several slurmds on one machine: TCP on loopback only.\n\
         export OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo\n\
         export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PM_HISTORY=none\n\
         srun --pm -n 6 {heat} {PLATE} --steps {steps}\n",
        store = store.display(),
        heat = workspace_bin("heat").display(),
    )
}

/// What is left under `dir` besides directories: files, sockets, links.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => found.extend(files(&p)),
            _ => found.push(p),
        }
    }
    found
}

/// Every path under `dir` named `name` (a job's directories).
fn named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_name() == name {
            found.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(named(&p, name));
        }
    }
    found
}

/// Waits (up to 30 s: the epilog runs as the job ends) until `store` holds
/// no file and no directory of Slurm job `id` (pmrun job `job`).
fn assert_store_emptied(cluster: &Cluster, store: &Path, id: &str, job: &str) {
    let left = || {
        let mut left = files(store);
        left.extend(named(store, job));
        left.extend(named(store, id));
        left
    };
    poll_until(
        Duration::from_secs(30),
        || left().is_empty().then_some(()),
        || {
            format!(
                "left in the store after job {id} ended: {:?}\n{}",
                left(),
                cluster.logs()
            )
        },
    );
}

#[test]
fn the_options_show_in_help_and_a_bad_value_is_refused_at_submission() {
    let cluster = cluster(1, 17937);
    for program in ["srun", "sbatch"] {
        let out = cluster
            .command(program)
            .arg("--help")
            .bounded_output()
            .unwrap();
        let help = text(&out);
        for option in [
            "--pm ",
            "--pm-replicas=R",
            "--pm-every=N",
            "--pm-interval=S",
            "--pm-store=DIR",
            "--pm-flush=DIR",
            "--pm-spare=K",
            "--pm-transport=T",
            "--pm-async",
        ] {
            assert!(
                help.contains(option),
                "{program} --help lacks {option}:\n{help}"
            );
        }
        assert!(help.contains("Run this step under pmrun"), "{help}");
    }

    // On the command line and in #SBATCH lines alike: refused by sbatch,
    // naming the option and what it expects, and nothing is queued.
    let batch = cluster.dir().join("bad.sh");
    std::fs::write(&batch, "#!/bin/bash\n#SBATCH --pm-replicas=x\ntrue\n").unwrap();
    let refused: [(&str, Vec<String>, &str); 7] = [
        (
            "sbatch",
            vec!["--pm-transport=rdma".into(), "--wrap=true".into()],
            "pmrun: --pm-transport=rdma: expected tcp, fabric or fabric:PROVIDER",
        ),
        (
            "sbatch",
            vec!["--pm-replicas=x".into(), "--wrap=true".into()],
            "pmrun: --pm-replicas=x: expected a whole number of partner nodes",
        ),
        (
            "sbatch",
            vec![batch.display().to_string()],
            "pmrun: --pm-replicas=x: expected a whole number of partner nodes",
        ),
        (
            "sbatch",
            vec!["--pm-store=relative/dir".into(), "--wrap=true".into()],
            "pmrun: --pm-store=relative/dir: expected an absolute directory",
        ),
        (
            "sbatch",
            vec![
                "--pm-every=5".into(),
                "--pm-interval=2".into(),
                "--wrap=true".into(),
            ],
            "--pm-every and --pm-interval both say when to checkpoint: give one",
        ),
        (
            "sbatch",
            vec!["--pm".into(), "--wrap=true".into()],
            "--pm runs one step under pmrun: give it to srun in the batch script",
        ),
        (
            "srun",
            vec!["--pm-interval=0".into(), "true".into()],
            "pmrun: --pm-interval=0: expected a number of seconds greater than 0",
        ),
    ];
    for (program, args, message) in refused {
        let out = cluster
            .command(program)
            .args(&args)
            .bounded_output()
            .unwrap();
        let t = text(&out);
        assert!(
            !out.status.success(),
            "{program} {args:?} was accepted:\n{t}"
        );
        assert!(t.contains(message), "{program} {args:?}:\n{t}");
    }
    let out = cluster
        .command("squeue")
        .args(["-h", "-t", "all"])
        .bounded_output()
        .unwrap();
    assert_eq!(text(&out).trim(), "", "a refused submission was queued");
}

#[test]
fn srun_pm_in_a_batch_job_runs_under_pmrun_with_the_sbatch_options_bit_exact() {
    let cluster = cluster(3, 17947);
    let expected = reference(6, 100);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = cluster.sbatch(
        &["-N3", "-n6"],
        &script(
            "--pm-replicas=2 --pm-every=10 --pm-async",
            store.path(),
            100,
        ),
    );
    let t = &cluster.completed(&id, 180);
    let job = format!("heat-slurm{id}");
    // pmrun ran the step once (its own sruns were not wrapped again), over
    // the allocation, with #SBATCH --pm-replicas=2, --pm-async and
    // --pm-store.
    let starts: Vec<&str> = t.lines().filter(|l| l.starts_with("pmrun: job ")).collect();
    assert_eq!(starts.len(), 1, "{t}");
    assert!(
        starts[0].starts_with(&format!(
            "pmrun: job {job}: 6 rank(s) on n1 n2 n3; asynchronous checkpoints in {}, 2 replica(s) each",
            store.path().display()
        )),
        "{t}"
    );
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
    assert_store_emptied(&cluster, store.path(), &id, &job);
}

#[test]
fn srun_pm_outside_an_allocation_runs_pmrun_in_the_allocation_srun_makes_bit_exact() {
    let cluster = cluster(3, 17967);
    let expected = reference(6, 100);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = cluster
        .command("srun")
        .args(["-N3", "-n6", "--pm"])
        .arg(format!("--pm-store={}", store.path().display()))
        .arg(workspace_bin("heat"))
        .args(PLATE.split(' '))
        .args(["--steps", "100"])
        .env("OMPI_MCA_btl", "self,tcp")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("PM_HISTORY", "none")
        .env_remove("SLURMD_NODENAME")
        .env_remove("SLURM_JOB_ID")
        .bounded_output()
        .unwrap();
    let t = &text(&out);
    assert!(out.status.success(), "{t}\n{}", cluster.logs());
    // Over the allocation's nodes, ranks launched with PMIx (srun's own
    // SLURM_MPI_TYPE=none is not passed on).
    assert!(t.contains(": 6 rank(s) on n1 n2 n3;"), "{t}");
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
    // pmrun's end ended the allocation srun made for it (after its
    // epilogs: COMPLETING for a moment).
    let queue = || {
        text(
            &cluster
                .command("squeue")
                .arg("-h")
                .bounded_output()
                .unwrap(),
        )
    };
    poll_until(
        Duration::from_secs(30),
        || queue().trim().is_empty().then_some(()),
        || format!("the allocation outlived pmrun:\n{}", queue()),
    );
}

/// The pid of the pmd serving node `node` from the store `store`.
fn pmd_of(store: &Path, node: &str) -> Option<i32> {
    let node_store = store.join(node).display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_pmd = args
            .first()
            .is_some_and(|a| a.ends_with("/pmd") || a == "pmd");
        (is_pmd && args.contains(&node_store)).then_some(pid)
    })
}

#[test]
fn the_epilog_removes_what_a_killed_agent_left_on_its_node() {
    let cluster = cluster(3, 17957);
    let expected = reference(6, 300);
    let store = tempfile::tempdir_in("/dev/shm").unwrap();
    let id = cluster.sbatch(&["-N3", "-n6"], &script("--pm-every=10", store.path(), 300));
    let job = format!("heat-slurm{id}");
    // Once a checkpoint is committed, n2's agent dies without a word.
    let n2_job = store.path().join("n2").join(&job);
    let pmd = poll_until(
        Duration::from_secs(120),
        || {
            committed_epoch_of(store.path(), &job)?;
            pmd_of(store.path(), "n2")
        },
        || format!("job {job}: no commit and agent on n2:\n{}", cluster.logs()),
    );
    // SAFETY: kill(2) with a pid and a signal number touches no memory.
    assert_eq!(unsafe { libc::kill(pmd, libc::SIGKILL) }, 0);
    // What it leaves: its node store of the job, its secret, its mark.
    assert!(
        !files(&n2_job).is_empty(),
        "no checkpoint in {}",
        n2_job.display()
    );
    let mark = store.path().join(format!("n2/.slurm/{id}/{job}"));
    assert!(mark.exists(), "{} is missing", mark.display());

    let t = &cluster.completed(&id, 240);
    assert!(t.contains("node n2 lost its agent"), "{t}");
    assert_eq!(checksum(t).as_deref(), Some(expected.as_str()), "{t}");
    assert_store_emptied(&cluster, store.path(), &id, &job);
    let log = std::fs::read_to_string(cluster.dir().join("log/slurmd-n2.log")).unwrap();
    assert!(
        log.contains(&format!("pmrun: job {id}: removed pmrun job {job}'s files")),
        "n2's epilog did not say it cleaned:\n{}",
        cluster.logs()
    );
}
