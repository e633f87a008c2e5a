//! Copies between stores (a node's and a flush directory): only changed
//! chunks move, the copy verifies, damage publishes nothing, and the job's
//! record in the flush directory keeps the committed epoch from pruning.

use pm_core::store::commit::CommitRecord;
use pm_core::store::flush::{copy_snapshot, read_job_record, record_job_commit};
use pm_core::{RegionRef, Store, StoreError, StoreOptions};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

const CHUNK: usize = 4096;

fn open(root: &Path, rank: u32) -> Store {
    let opts = StoreOptions {
        chunk_size: CHUNK,
        auto_commit: false,
        ..StoreOptions::default()
    };
    Store::open(root, "job-f", rank, opts).unwrap()
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn write(store: &mut Store, epoch: u64, a: &[u8], b: &[u8]) {
    let regions = [RegionRef::new("a", a), RegionRef::new("b", b)];
    store.write(epoch, epoch * 10, &regions).unwrap();
    store.commit(epoch, 1).unwrap();
}

fn region(store: &Store, epoch: u64, name: &str, len: usize) -> Vec<u8> {
    let snapshot = store.open_snapshot(epoch).unwrap();
    snapshot.verify().unwrap();
    let mut out = vec![0; len];
    snapshot.read_region(name, &mut out).unwrap();
    out
}

#[test]
fn a_copy_moves_only_changed_chunks_and_reads_back_exactly() {
    let node = tempfile::tempdir().unwrap();
    let flush = tempfile::tempdir().unwrap();
    let mut src = open(node.path(), 0);
    let mut dst = open(flush.path(), 0);
    let (a, mut b) = (bytes(1, 5 * CHUNK + 100), bytes(2, 3 * CHUNK));
    write(&mut src, 1, &a, &b);
    let first = copy_snapshot(&src, 1, &mut dst).unwrap();
    assert_eq!(first.bytes_fetched, (a.len() + b.len()) as u64);

    b[CHUNK + 7] ^= 0xff;
    write(&mut src, 2, &a, &b);
    let second = copy_snapshot(&src, 2, &mut dst).unwrap();
    assert_eq!(
        second.bytes_fetched, CHUNK as u64,
        "only b's chunk 1 changed"
    );
    assert_eq!(region(&dst, 2, "a", a.len()), a);
    assert_eq!(region(&dst, 2, "b", b.len()), b);
    assert_eq!(dst.manifest(2).unwrap().step, 20);

    // And back into an empty node store, as a resume does.
    let other = tempfile::tempdir().unwrap();
    let mut back = open(other.path(), 0);
    copy_snapshot(&dst, 2, &mut back).unwrap();
    assert_eq!(region(&back, 2, "b", b.len()), b);
}

#[test]
fn a_damaged_source_chunk_publishes_nothing() {
    let node = tempfile::tempdir().unwrap();
    let flush = tempfile::tempdir().unwrap();
    let mut src = open(node.path(), 3);
    let mut dst = open(flush.path(), 3);
    write(&mut src, 1, &bytes(1, 4 * CHUNK), &bytes(2, CHUNK));
    let data = fs::OpenOptions::new()
        .write(true)
        .open(src.data_path(1))
        .unwrap();
    data.write_all_at(b"X", 2 * CHUNK as u64 + 5).unwrap();
    let err = copy_snapshot(&src, 1, &mut dst).unwrap_err();
    assert!(
        matches!(&err, StoreError::Fetch { source, .. } if source.to_string().contains("region \"a\" chunk 2")),
        "{err}"
    );
    assert!(dst.epochs().unwrap().is_empty());
}

#[test]
fn the_job_record_names_the_flushed_epoch_and_protects_it_from_pruning() {
    let node = tempfile::tempdir().unwrap();
    let flush = tempfile::tempdir().unwrap();
    assert_eq!(read_job_record(flush.path(), "job-f").unwrap(), None);
    let mut src: Vec<Store> = (0..2).map(|r| open(node.path(), r)).collect();
    let mut dst: Vec<Store> = (0..2).map(|r| open(flush.path(), r)).collect();
    for s in &mut src {
        write(s, 1, &bytes(1, CHUNK), &bytes(2, CHUNK));
    }
    for (s, d) in src.iter().zip(&mut dst) {
        copy_snapshot(s, 1, d).unwrap();
    }
    let record = CommitRecord {
        epoch: 1,
        step: 10,
        ranks: 2,
    };
    record_job_commit(flush.path(), "job-f", record, 2).unwrap();
    assert_eq!(
        read_job_record(flush.path(), "job-f").unwrap(),
        Some(record)
    );

    // Three more epochs reach the flush directory but are never recorded
    // for the job (a flush that never completed on every rank): epoch 1
    // stays, since it is what a resume would restore.
    for epoch in 2..5 {
        write(
            &mut src[0],
            epoch,
            &bytes(epoch as u8, CHUNK),
            &bytes(2, CHUNK),
        );
        copy_snapshot(&src[0], epoch, &mut dst[0]).unwrap();
    }
    let kept = dst[0].epochs().unwrap();
    assert!(kept.contains(&1), "{kept:?}");
    assert_eq!(region(&dst[0], 1, "a", CHUNK), bytes(1, CHUNK));
    assert!(read_job_record(flush.path(), "../x").is_err());
}
