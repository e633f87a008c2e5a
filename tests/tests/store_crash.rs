//! Crash consistency of the node-local store: a real writer process is killed
//! with SIGKILL, and the store must then restore a snapshot that was
//! completely written — the newest one published, or the one whose manifest
//! rename had just happened — and never show a torn or damaged snapshot.
//!
//! Two kinds of kill, each on a RAM store (tmpfs) and a disk store (ext4 or
//! whatever backs the target directory, with fsync):
//! * at random moments of an endless write loop, and
//! * deterministically inside each phase of a write (`WritePhase::ALL`:
//!   Prepare, CopyChunks, SyncData, WriteManifest, Publish, SyncDir, Prune),
//!   during the writer's third write so that pruning and data-file recycling
//!   are under way;
//!
//! and both again for asynchronous writes (`WritePhase::ASYNC`), whose
//! hashing and publishing run in a background thread. The writer
//! pre-faults its store in the background from its start.

use pm_core::{Store, StoreOptions, WritePhase};
use pm_tests::Bounded;
use pm_tests::store_workload::{CHUNK, JOB, KEEP, state};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WRITER: &str = env!("CARGO_BIN_EXE_store_writer");

fn media() -> [(&'static str, tempfile::TempDir); 2] {
    [
        ("ram", tempfile::tempdir_in("/dev/shm").unwrap()),
        (
            "disk",
            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        ),
    ]
}

/// The writer's mode and the phases of its writes.
fn modes() -> [(&'static str, &'static [WritePhase]); 2] {
    [("sync", &WritePhase::ALL), ("async", &WritePhase::ASYNC)]
}

fn spawn(
    root: &Path,
    medium: &str,
    mode: &str,
    extra: &[String],
) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(WRITER)
        .arg(root)
        .arg(medium)
        .arg(mode)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn_grouped()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn next_line(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the writer exited early");
    line.trim_end().to_owned()
}

/// Kills the writer and returns the newest epoch it reported as published.
fn kill(
    mut child: Child,
    mut out: BufReader<ChildStdout>,
    mut published: Option<u64>,
) -> Option<u64> {
    child.kill().unwrap();
    pm_tests::bounded::wait_within(&mut child, pm_tests::bounded::LIMIT, "the workload");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    for line in rest.lines() {
        if let Some(e) = line.strip_prefix("published ") {
            published = Some(e.parse().unwrap());
        }
    }
    published
}

fn phase_at_kill(root: &Path, phases: &[WritePhase]) -> Option<WritePhase> {
    let byte = std::fs::read(root.join("phase")).unwrap()[0];
    (byte > 0).then(|| phases[byte as usize - 1])
}

/// Data files no snapshot names (spares, or being pre-faulted) in the writer's store.
fn unnamed_data_files(root: &Path) -> usize {
    let dir = root.join("store").join(JOB).join("rank-0");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("spare-") || name.starts_with("prefault-")
        })
        .count()
}

/// The checks after every kill: the newest valid snapshot is the newest
/// published one (or the next, if the kill came after its rename), its bytes
/// are exactly that epoch's state, and no damaged snapshot is visible.
fn check_store(root: &Path, published: Option<u64>) -> u64 {
    let opts = StoreOptions {
        keep: KEEP,
        chunk_size: CHUNK,
        ..StoreOptions::default()
    };
    let store = Store::open(&root.join("store"), JOB, 0, opts).unwrap();
    let recovery = store.latest_valid().unwrap();
    assert!(
        recovery.skipped.is_empty(),
        "a crash left a damaged snapshot visible: {:?}",
        recovery.skipped
    );
    let Some(snapshot) = recovery.snapshot else {
        assert_eq!(published, None, "a published snapshot was lost");
        return 0;
    };
    let epoch = snapshot.epoch();
    let floor = published.unwrap_or(0);
    assert!(
        epoch == floor || epoch == floor + 1,
        "restored epoch {epoch}, but epoch {floor} was the newest published"
    );
    for (name, expected) in state(epoch) {
        let mut got = vec![0; expected.len()];
        snapshot.read_region(name, &mut got).unwrap();
        assert!(
            got == expected,
            "region {name} of epoch {epoch} is not the state that was written"
        );
    }
    epoch
}

#[test]
fn sigkill_at_random_moments_never_tears_a_snapshot() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random kill delays seeded with {seed}");
    let mut x = seed;
    let mut next_delay = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Duration::from_micros(x % 40_000)
    };
    for (mode, phases) in modes() {
        for (medium, dir) in media() {
            let mut published = None;
            let mut hits = std::collections::BTreeMap::new();
            for _ in 0..30 {
                let (child, mut out) = spawn(dir.path(), medium, mode, &[]);
                let ready = next_line(&mut out);
                assert!(ready.starts_with("ready "), "{ready}");
                std::thread::sleep(next_delay());
                published = kill(child, out, published);
                *hits
                    .entry(format!("{:?}", phase_at_kill(dir.path(), phases)))
                    .or_insert(0) += 1;
                let restored = check_store(dir.path(), published);
                published = published.max(Some(restored).filter(|&e| e > 0));
                // The pool holds `keep` + 1 files beside those snapshots
                // name, and a kill may leave one more mid-way (removed by
                // the next start).
                let files = unnamed_data_files(dir.path());
                assert!(files <= KEEP + 2, "{files} spare data files in the store");
            }
            eprintln!(
                "{mode} {medium}: 30 kills landed in phases {hits:?}; reached epoch {published:?}"
            );
            assert!(
                published.unwrap_or(0) >= 15,
                "the writer made too little progress to test anything"
            );
        }
    }
}

#[test]
fn sigkill_in_every_phase_of_a_write_keeps_the_store_consistent() {
    for (mode, phases) in modes() {
        for (medium, dir) in media() {
            let mut published = None;
            for &phase in phases {
                let stop = [
                    "--stop-at".into(),
                    format!("{phase:?}"),
                    "--after".into(),
                    "3".into(),
                ];
                let (child, mut out) = spawn(dir.path(), medium, mode, &stop);
                let mut line = next_line(&mut out);
                while line != "stopped" {
                    if let Some(e) = line.strip_prefix("published ") {
                        published = Some(e.parse().unwrap());
                    }
                    line = next_line(&mut out);
                }
                published = kill(child, out, published);
                assert_eq!(phase_at_kill(dir.path(), phases), Some(phase));
                let restored = check_store(dir.path(), published);
                // Before the rename the new snapshot must be absent; from it on, present.
                let renamed = matches!(phase, WritePhase::SyncDir | WritePhase::Prune);
                assert_eq!(
                    restored,
                    published.unwrap() + u64::from(renamed),
                    "{mode} {medium}, killed in {phase:?}"
                );
                published = Some(restored);
            }
        }
    }
}
