//! Behaviour of the node-local store: round trips, incremental snapshots,
//! pruning, damage detection with fallback, and input validation.

use pm_core::format::FORMAT_VERSION;
use pm_core::{Durability, RegionRef, Store, StoreError, StoreOptions};
use proptest::prelude::*;
use std::fs;
use std::path::Path;

const CHUNK: usize = 4096;

fn opts(keep: usize) -> StoreOptions {
    StoreOptions {
        keep,
        chunk_size: CHUNK,
        ..StoreOptions::default()
    }
}

fn open(root: &Path, keep: usize) -> Store {
    Store::open(root, "job-1", 0, opts(keep)).unwrap()
}

/// Deterministic bytes that differ per (seed, position).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(store: &mut Store, epoch: u64, regions: &[(&str, &[u8])]) -> pm_core::WriteReport {
    let refs: Vec<RegionRef> = regions.iter().map(|&(n, b)| RegionRef::new(n, b)).collect();
    store.write(epoch, epoch * 10, &refs).unwrap()
}

fn read(store: &Store, epoch: u64, name: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    store
        .open_snapshot(epoch)
        .unwrap()
        .read_region(name, &mut out)
        .unwrap();
    out
}

fn region_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::btree_map(
        "[a-z][a-z0-9_.-]{0,12}",
        prop::collection::vec(any::<u8>(), 0..20_000),
        0..5,
    )
    .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_regions_round_trip_bit_exactly(regions in region_strategy()) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), 2);
        let refs: Vec<(&str, &[u8])> = regions.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
        let report = write(&mut store, 1, &refs);
        prop_assert_eq!(report.state_bytes, regions.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
        let snap = Store::open(dir.path(), "job-1", 0, opts(2)).unwrap().open_snapshot(1).unwrap();
        snap.verify().unwrap();
        prop_assert_eq!(snap.step(), 10);
        for (name, bytes) in &regions {
            let mut out = vec![0xAA; bytes.len()];
            snap.read_region(name, &mut out).unwrap();
            prop_assert_eq!(&out, bytes);
        }
    }

    #[test]
    fn incremental_snapshot_equals_full_one(
        base in prop::collection::vec(any::<u8>(), 1..40_000),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let mut next = base.clone();
        for (at, v) in &edits {
            let i = at.index(next.len());
            next[i] = next[i].wrapping_add(*v | 1);
        }
        let changed_chunks = base.chunks(CHUNK).zip(next.chunks(CHUNK)).filter(|(a, b)| a != b).count();

        let inc_dir = tempfile::tempdir().unwrap();
        let mut inc = open(inc_dir.path(), 2);
        write(&mut inc, 1, &[("s", &base)]);
        let report = write(&mut inc, 2, &[("s", &next)]);
        prop_assert_eq!(report.chunks_written, changed_chunks);

        let full_dir = tempfile::tempdir().unwrap();
        let mut full = open(full_dir.path(), 2);
        write(&mut full, 2, &[("s", &next)]);

        prop_assert_eq!(read(&inc, 2, "s", next.len()), read(&full, 2, "s", next.len()));
        let hashes = |s: &Store| s.manifest(2).unwrap().regions[0].chunks.iter().map(|c| c.hash).collect::<Vec<_>>();
        prop_assert_eq!(hashes(&inc), hashes(&full));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Epoch `e` changes the chunks listed in `changes[e - 1]`, so kept epochs
    /// share data files in every possible way.
    #[test]
    fn pruning_keeps_exactly_k_restorable_epochs(
        keep in 1usize..5,
        changes in prop::collection::vec(prop::collection::vec(0usize..10, 0..11), 1..12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path(), keep);
        let mut states: Vec<Vec<u8>> = Vec::new();
        for (i, chunks) in changes.iter().enumerate() {
            let e = i as u64 + 1;
            let mut s = states.last().cloned().unwrap_or_else(|| pattern(0, 10 * CHUNK));
            for &c in chunks {
                s[c * CHUNK + i] ^= 0xFF;
            }
            write(&mut store, e, &[("s", &s)]);
            states.push(s);
        }
        let newest = changes.len() as u64;
        let kept: Vec<u64> = (newest.saturating_sub(keep as u64) + 1..=newest).collect();
        prop_assert_eq!(store.epochs().unwrap(), kept.clone());
        for &e in &kept {
            prop_assert_eq!(read(&store, e, "s", 10 * CHUNK), states[e as usize - 1].clone(), "epoch {}", e);
        }
        // Only data files that kept manifests reference remain, plus at most one spare.
        let referenced: std::collections::BTreeSet<u64> = kept
            .iter()
            .flat_map(|&e| store.manifest(e).unwrap().regions[0].chunks.iter().map(|c| c.file_epoch).collect::<Vec<_>>())
            .collect();
        let data_files: std::collections::BTreeSet<u64> = (1..=newest).filter(|&e| store.data_path(e).exists()).collect();
        prop_assert_eq!(data_files, referenced);
    }
}

#[test]
fn bytes_written_follow_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 2);
    let mut s = pattern(1, 64 * CHUNK);
    assert_eq!(
        write(&mut store, 1, &[("s", &s)]).bytes_written,
        s.len() as u64
    );
    assert_eq!(write(&mut store, 2, &[("s", &s)]).bytes_written, 0);
    s[5 * CHUNK + 7] ^= 1;
    s[40 * CHUNK] ^= 1;
    let r = write(&mut store, 3, &[("s", &s)]);
    assert_eq!((r.bytes_written, r.chunks_written), (2 * CHUNK as u64, 2));
    // Epoch 1's data file still holds most chunks of epochs 2 and 3.
    assert_eq!(read(&store, 3, "s", s.len()), s);
    assert!(store.data_path(1).exists());
}

#[test]
fn writing_an_epoch_again_discards_the_abandoned_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 3);
    for e in 1..=3 {
        write(&mut store, e, &[("s", &pattern(e, 3 * CHUNK))]);
    }
    // The job restarted from epoch 1 and reaches epoch 2 with other data.
    let other = pattern(99, 3 * CHUNK);
    write(&mut store, 2, &[("s", &other)]);
    assert_eq!(store.epochs().unwrap(), vec![1, 2]);
    assert_eq!(read(&store, 2, "s", other.len()), other);
    assert_eq!(read(&store, 1, "s", other.len()), pattern(1, 3 * CHUNK));
}

/// Three epochs whose newest has chunks of its own, ready to be damaged.
fn damaged_setup() -> (tempfile::TempDir, Store, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 3);
    let states: Vec<Vec<u8>> = (1..=3).map(|e| pattern(e, 4 * CHUNK + 100)).collect();
    for (e, s) in states.iter().enumerate() {
        write(&mut store, e as u64 + 1, &[("s", s)]);
    }
    (dir, store, states)
}

fn assert_falls_back(store: &Store, states: &[Vec<u8>], check: impl Fn(&StoreError) -> bool) {
    let recovery = store.latest_valid().unwrap();
    assert_eq!(recovery.skipped.len(), 1);
    assert_eq!(recovery.skipped[0].epoch, 3);
    let err = &recovery.skipped[0].error;
    assert!(check(err), "unexpected error: {err}");
    let snap = recovery.snapshot.expect("epoch 2 is intact");
    assert_eq!(snap.epoch(), 2);
    let mut out = vec![0; states[1].len()];
    snap.read_region("s", &mut out).unwrap();
    assert_eq!(out, states[1]);
}

#[test]
fn flipped_byte_in_a_chunk_is_named_and_skipped() {
    let (_d, store, states) = damaged_setup();
    let data = store.data_path(3);
    let mut bytes = fs::read(&data).unwrap();
    bytes[2 * CHUNK + 17] ^= 0x01;
    fs::write(&data, bytes).unwrap();
    let err = store.open_snapshot(3).unwrap().verify().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("chunk 2") && msg.contains(&data.display().to_string()),
        "{msg}"
    );
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::ChunkCorrupt { chunk: 2, .. })
    });
}

#[test]
fn truncated_data_file_is_named_and_skipped() {
    let (_d, store, states) = damaged_setup();
    fs::File::options()
        .write(true)
        .open(store.data_path(3))
        .unwrap()
        .set_len(CHUNK as u64 + 5)
        .unwrap();
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::ChunkMissing { chunk: 1, .. })
    });
}

#[test]
fn missing_data_file_is_named_and_skipped() {
    let (_d, store, states) = damaged_setup();
    fs::remove_file(store.data_path(3)).unwrap();
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::ChunkMissing { chunk: 0, .. })
    });
}

#[test]
fn truncated_manifest_is_skipped() {
    let (_d, store, states) = damaged_setup();
    let path = store.manifest_path(3);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::ManifestTruncated { .. })
    });
}

#[test]
fn flipped_byte_in_a_manifest_is_skipped() {
    let (_d, store, states) = damaged_setup();
    let path = store.manifest_path(3);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(&path, bytes).unwrap();
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::ManifestChecksum { .. })
    });
}

#[test]
fn unknown_format_version_is_skipped() {
    let (_d, store, states) = damaged_setup();
    let path = store.manifest_path(3);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let check = |e: &StoreError| {
        matches!(e, StoreError::UnsupportedVersion { found, .. } if *found == FORMAT_VERSION + 1)
            && e.to_string().contains("version 2")
    };
    assert_falls_back(&store, &states, check);
}

#[test]
fn garbage_manifest_is_skipped() {
    let (_d, store, states) = damaged_setup();
    fs::write(store.manifest_path(3), pattern(7, 300)).unwrap();
    assert_falls_back(&store, &states, |e| {
        matches!(e, StoreError::BadMagic { .. })
    });
}

#[test]
fn snapshot_of_another_rank_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = Store::open(dir.path(), "job-1", 1, opts(2)).unwrap();
    write(&mut other, 1, &[("s", &pattern(1, CHUNK))]);
    let mine = open(dir.path(), 2);
    fs::copy(other.manifest_path(1), mine.manifest_path(1)).unwrap();
    let err = mine.open_snapshot(1).err().unwrap();
    assert!(
        matches!(
            err,
            StoreError::WrongOwner {
                found_rank: 1,
                rank: 0,
                ..
            }
        ),
        "{err}"
    );
    let recovery = mine.latest_valid().unwrap();
    assert!(recovery.snapshot.is_none());
    assert_eq!(recovery.skipped.len(), 1);
}

#[test]
fn every_snapshot_damaged_means_nothing_to_restore() {
    let (_d, store, _) = damaged_setup();
    for e in 1..=3 {
        fs::write(store.manifest_path(e), b"junk").unwrap();
    }
    let recovery = store.latest_valid().unwrap();
    assert!(recovery.snapshot.is_none());
    assert_eq!(
        recovery.skipped.iter().map(|s| s.epoch).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
}

#[test]
fn region_mismatches_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path(), 2);
    write(&mut store, 1, &[("grid", &pattern(1, 3 * CHUNK))]);
    let snap = store.open_snapshot(1).unwrap();
    let err = snap
        .read_region("grid", &mut vec![0; 2 * CHUNK])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RegionSize { stored, given, .. } if stored == 3 * CHUNK as u64 && given == 2 * CHUNK as u64)
    );
    let err = snap.read_region("other", &mut [0; 4]).unwrap_err();
    assert!(matches!(err, StoreError::RegionMissing { .. }), "{err}");
    assert!(matches!(
        store.open_snapshot(9).err().unwrap(),
        StoreError::NoSuchEpoch { epoch: 9, .. }
    ));
}

#[test]
fn names_that_could_escape_the_root_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for job in ["..", "../evil", "a/b", "/etc", ".hidden", ""] {
        let err = Store::open(dir.path(), job, 0, opts(2)).err().expect(job);
        assert!(matches!(err, StoreError::InvalidJobId(_)), "{job}: {err}");
    }
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was created"
    );
    let mut store = open(dir.path(), 2);
    for name in ["../x", "a/b", ""] {
        let err = store
            .write(1, 1, &[RegionRef::new(name, b"x")])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidRegionName(_)),
            "{name}: {err}"
        );
    }
    let err = store
        .write(
            1,
            1,
            &[RegionRef::new("a", b"x"), RegionRef::new("a", b"y")],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateRegion(_)));
}

#[test]
fn bad_options_and_unwritable_roots_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = StoreOptions {
        chunk_size: 1000,
        ..opts(2)
    };
    assert!(matches!(
        Store::open(dir.path(), "j", 0, chunk).err().unwrap(),
        StoreError::InvalidChunkSize(1000)
    ));
    assert!(matches!(
        Store::open(dir.path(), "j", 0, opts(0)).err().unwrap(),
        StoreError::InvalidKeep
    ));
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"").unwrap();
    let err = Store::open(&file, "j", 0, opts(2)).err().unwrap();
    assert!(
        err.to_string().contains("not-a-dir") && err.to_string().contains("create store directory"),
        "{err}"
    );
}

#[test]
fn durable_store_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(
        dir.path(),
        "job-1",
        0,
        StoreOptions {
            durability: Durability::Always,
            ..opts(2)
        },
    )
    .unwrap();
    assert!(store.is_durable());
    let s = pattern(5, 5 * CHUNK);
    write(&mut store, 1, &[("s", &s)]);
    assert_eq!(read(&store, 1, "s", s.len()), s);
}

#[test]
fn ram_store_is_detected() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    assert!(!open(dir.path(), 2).is_durable());
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    assert!(open(disk.path(), 2).is_durable());
}

#[test]
fn pruning_preserves_committed_epochs_while_newer_ones_are_unconfirmed() {
    let dir = tempfile::tempdir().unwrap();
    let explicit = StoreOptions {
        auto_commit: false,
        ..opts(2)
    };
    let mut store = Store::open(dir.path(), "job-1", 0, explicit).unwrap();
    assert_eq!(store.committed().unwrap(), None);
    let states: Vec<Vec<u8>> = (1..=5).map(|e| pattern(e, 3 * CHUNK)).collect();
    for e in 1..=2 {
        write(&mut store, e, &[("s", &states[e as usize - 1])]);
        store.commit(e, 1).unwrap();
    }
    // Epochs 3 and 4 are published here but the job never agreed on them.
    write(&mut store, 3, &[("s", &states[2])]);
    write(&mut store, 4, &[("s", &states[3])]);
    assert_eq!(store.epochs().unwrap(), vec![1, 2, 3, 4]);
    write(&mut store, 5, &[("s", &states[4])]);
    assert_eq!(
        store.epochs().unwrap(),
        vec![1, 2, 4, 5],
        "committed 1 and 2 survive"
    );
    let rec = store.committed().unwrap().unwrap();
    assert_eq!((rec.epoch, rec.step, rec.ranks), (2, 20, 1));
    assert_eq!(read(&store, 2, "s", 3 * CHUNK), states[1]);

    store.commit(5, 1).unwrap();
    assert_eq!(store.epochs().unwrap(), vec![4, 5]);
    assert_eq!(store.committed().unwrap().unwrap().epoch, 5);
    assert!(matches!(
        store.commit(9, 1).unwrap_err(),
        StoreError::NoSuchEpoch { epoch: 9, .. }
    ));
}

#[test]
fn destroying_the_last_rank_removes_the_job_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(dir.path(), 2);
    let b = Store::open(dir.path(), "job-1", 1, opts(2)).unwrap();
    write(&mut a, 1, &[("s", &pattern(1, CHUNK))]);
    a.destroy().unwrap();
    assert!(dir.path().join("job-1").exists(), "rank 1 is still there");
    b.destroy().unwrap();
    assert!(!dir.path().join("job-1").exists());
}

/// Names of the files in the rank's store directory.
fn names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_checkpoint_taken_while_prefaulting_runs_is_exact_and_the_pool_stays_bounded() {
    let root = tempfile::tempdir().unwrap();
    let mut store = open(root.path(), 2);
    let (a, b) = (pattern(1, 300_000), pattern(2, 10_001));
    let len = pm_core::store::data_file_len([a.len() as u64, b.len() as u64]);
    store.prefault(len).unwrap();
    // At once, with the pre-faulting still under way.
    write(&mut store, 1, &[("a", &a), ("b", &b)]);
    assert_eq!(read(&store, 1, "a", a.len()), a);
    store.prefault_wait();
    for epoch in 2..10u64 {
        let a = pattern(epoch * 7, a.len());
        write(&mut store, epoch, &[("a", &a), ("b", &b)]);
        assert_eq!(read(&store, epoch, "a", a.len()), a);
        assert_eq!(read(&store, epoch, "b", b.len()), b);
        store.prefault_wait();
        let files = names(&store);
        let data = files.iter().filter(|n| n.ends_with(".data")).count();
        let pending = files.iter().filter(|n| n.starts_with("prefault-")).count();
        // Two kept epochs, `b` shared from epoch 1's file, and one spare
        // (recycled, or pre-faulted and not taken yet).
        assert!(data + pending <= 4, "epoch {epoch}: {files:?}");
        let spares = files
            .iter()
            .filter(|n| n.starts_with("spare-") || n.starts_with("prefault-"))
            .count();
        assert!(spares >= 1, "epoch {epoch}: {files:?}");
    }
}

/// The inode of every data file in the rank's store directory.
fn data_inodes(store: &Store) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .map(|p| fs::metadata(p).unwrap().ino())
        .collect()
}

#[test]
fn commits_that_follow_writes_recycle_the_freed_file_instead_of_making_new_ones() {
    let root = tempfile::tempdir().unwrap();
    let explicit = StoreOptions {
        auto_commit: false,
        ..opts(2)
    };
    let mut store = Store::open(root.path(), "job-1", 0, explicit).unwrap();
    let len = 64 * CHUNK;
    store
        .prefault(pm_core::store::data_file_len([len as u64]))
        .unwrap();
    store.prefault_wait();
    let mut seen = std::collections::HashSet::new();
    for epoch in 1..10u64 {
        // Every chunk changes: no snapshot shares an older file.
        let state = pattern(epoch, len);
        write(&mut store, epoch, &[("s", &state)]);
        store.commit(epoch, 1).unwrap();
        store.top_up_pool();
        store.prefault_wait();
        assert_eq!(read(&store, epoch, "s", len), state);
        seen.extend(data_inodes(&store));
        // The first three took the files pre-faulted at the start.
        let files = names(&store);
        assert!(
            epoch < 3 || !files.iter().any(|n| n.starts_with("prefault-")),
            "epoch {epoch}: a file was made while one was freed: {files:?}"
        );
    }
    // The pool's three files (two kept epochs and the spare), over and over.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn pruned_data_files_are_removed_in_the_background_and_none_is_left_behind() {
    let root = tempfile::tempdir().unwrap();
    let states: Vec<Vec<u8>> = (1..=6).map(|e| pattern(e, 8 * CHUNK)).collect();
    {
        let mut store = open(root.path(), 4);
        for e in 1..=5 {
            write(&mut store, e, &[("s", &states[e as usize - 1])]);
        }
    }
    // Fewer kept epochs now: pruning frees more files than the pool holds.
    let mut store = open(root.path(), 1);
    write(&mut store, 6, &[("s", &states[5])]);
    assert_eq!(read(&store, 6, "s", 8 * CHUNK), states[5]);
    let dir = store.dir().to_owned();
    drop(store);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".data") || n.ends_with(".tmp"))
        .collect();
    files.sort();
    assert_eq!(files, ["epoch-00000000000000000006.data", "spare-0.data"]);
}

#[test]
fn a_removal_a_killed_writer_left_is_finished_by_the_next_prefault() {
    let root = tempfile::tempdir().unwrap();
    let mut store = open(root.path(), 2);
    write(&mut store, 1, &[("s", &pattern(1, CHUNK))]);
    let leftover = store.dir().join("doomed-4194304-0.tmp");
    fs::write(&leftover, pattern(2, CHUNK)).unwrap();
    store.prefault(CHUNK as u64).unwrap();
    store.prefault_wait();
    assert!(!leftover.exists(), "{:?}", names(&store));
    assert_eq!(read(&store, 1, "s", CHUNK), pattern(1, CHUNK));
}

#[test]
fn prefaulting_a_store_with_snapshots_only_adds_what_the_pool_lacks() {
    let root = tempfile::tempdir().unwrap();
    let a = pattern(3, 50_000);
    {
        let mut store = open(root.path(), 2);
        for epoch in 1..4 {
            write(&mut store, epoch, &[("a", &pattern(epoch, a.len()))]);
        }
    }
    // A restarted writer: two kept epochs and a spare, so the pool is full.
    let mut store = open(root.path(), 2);
    store
        .prefault(a.len().div_ceil(4096) as u64 * 4096)
        .unwrap();
    store.prefault_wait();
    let files = names(&store);
    assert!(
        !files.iter().any(|n| n.starts_with("prefault-")),
        "{files:?}"
    );
    write(&mut store, 4, &[("a", &a)]);
    assert_eq!(read(&store, 4, "a", a.len()), a);
}

#[test]
fn asynchronous_snapshots_restore_exactly_and_reuse_unchanged_chunks() {
    let root = tempfile::tempdir().unwrap();
    let mut store = open(root.path(), 2);
    let fixed = pattern(9, 40_000);
    for epoch in 1..6u64 {
        let moving = pattern(epoch, 70_001);
        let refs = [
            RegionRef::new("fixed", &fixed),
            RegionRef::new("moving", &moving),
        ];
        let staged = store.write_async(epoch, epoch * 10, &refs).unwrap();
        assert_eq!(staged.state_bytes, 110_001);
        assert_eq!(store.staged_epoch(), Some(epoch));
        let report = store.finish_staged().unwrap().unwrap();
        assert_eq!(store.staged_epoch(), None);
        // Only the changed chunks count as written (and are replicated).
        let expected = if epoch == 1 { 110_001 } else { 70_001 };
        assert_eq!(report.bytes_written, expected, "epoch {epoch}");
        assert_eq!(read(&store, epoch, "moving", moving.len()), moving);
        assert_eq!(read(&store, epoch, "fixed", fixed.len()), fixed);
        let m = store.manifest(epoch).unwrap();
        assert!(
            m.region("fixed")
                .unwrap()
                .chunks
                .iter()
                .all(|c| c.file_epoch == 1)
        );
    }
    assert_eq!(store.epochs().unwrap(), vec![4, 5]);
    // A synchronous write after an asynchronous one in flight waits for it.
    let moving = pattern(77, 70_001);
    let refs = [
        RegionRef::new("fixed", &fixed),
        RegionRef::new("moving", &moving),
    ];
    store.write_async(6, 60, &refs).unwrap();
    write(&mut store, 7, &[("fixed", &fixed), ("moving", &moving)]);
    assert_eq!(store.epochs().unwrap(), vec![6, 7]);
    assert_eq!(read(&store, 6, "moving", moving.len()), moving);
}

#[test]
fn a_truncated_data_file_is_a_missing_chunk_on_restore_not_a_signal() {
    let root = tempfile::tempdir().unwrap();
    let mut store = open(root.path(), 2);
    let a = pattern(5, 5 * CHUNK);
    write(&mut store, 1, &[("a", &a)]);
    let snapshot = store.open_snapshot(1).unwrap();
    // Truncated after the snapshot was opened (and its file mapped).
    fs::OpenOptions::new()
        .write(true)
        .open(store.data_path(1))
        .unwrap()
        .set_len(2 * CHUNK as u64)
        .unwrap();
    let mut out = vec![0; a.len()];
    let err = snapshot.read_region("a", &mut out).unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkMissing { chunk: 2, .. }),
        "{err}"
    );
}
