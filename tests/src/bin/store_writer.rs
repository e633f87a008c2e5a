//! Test helper: writes the snapshots of `pm_tests::store_workload` in an
//! endless loop, continuing after the newest valid snapshot, so that a test
//! can SIGKILL it at any moment and inspect the store.
//!
//! Usage: `store_writer ROOT ram|disk sync|async [--stop-at PHASE --after N]`
//!
//! The store is pre-faulted in the background from the start, so kills land
//! while that runs too. `async` takes every snapshot with
//! `Store::write_async` and waits for it to be published.
//!
//! Prints `ready <epoch>` once it is about to write, `published <epoch>` after
//! every write. The number of the write phase it is in (1-based index into
//! `WritePhase::ALL`, or `WritePhase::ASYNC` with `async`; 0 before the
//! first write) is kept in the file `ROOT/phase` so a test learns where a
//! kill landed. With `--stop-at`, it prints `stopped` when it enters PHASE
//! during its N-th write and waits there to be killed (in the background
//! thread, for the phases an asynchronous write runs there).

use pm_core::store::data_file_len;
use pm_core::{Durability, RegionRef, Store, StoreOptions, WritePhase};
use pm_tests::store_workload::{CHUNK, JOB, KEEP, state};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: store_writer ROOT ram|disk sync|async [--stop-at PHASE --after N]";
    let root = PathBuf::from(args.get(1).expect(usage));
    let durability = match args.get(2).map(String::as_str) {
        Some("ram") => Durability::Auto,
        Some("disk") => Durability::Always,
        _ => panic!("{usage}"),
    };
    let asynchronous = match args.get(3).map(String::as_str) {
        Some("sync") => false,
        Some("async") => true,
        _ => panic!("{usage}"),
    };
    let phases: &'static [WritePhase] = if asynchronous {
        &WritePhase::ASYNC
    } else {
        &WritePhase::ALL
    };
    let stop: Option<(WritePhase, u64)> = match args.get(4).map(String::as_str) {
        Some("--stop-at") => {
            let phase = phases
                .iter()
                .copied()
                .find(|p| format!("{p:?}") == args[5])
                .expect("unknown phase");
            Some((phase, args[7].parse().expect(usage)))
        }
        _ => None,
    };

    let phase_file = Arc::new(File::create(root.join("phase")).unwrap());
    phase_file.write_at(&[0], 0).unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let hook = {
        let (phase_file, writes) = (phase_file.clone(), writes.clone());
        move |phase: WritePhase| {
            let index = phases.iter().position(|&p| p == phase).unwrap() as u8 + 1;
            phase_file.write_at(&[index], 0).unwrap();
            if stop == Some((phase, writes.load(Ordering::SeqCst) + 1)) {
                println!("stopped");
                std::io::stdout().flush().unwrap();
                loop {
                    std::thread::park();
                }
            }
        }
    };
    let opts = StoreOptions {
        keep: KEEP,
        chunk_size: CHUNK,
        durability,
        phase_hook: Some(Arc::new(hook)),
        ..StoreOptions::default()
    };
    let mut store = Store::open(&root.join("store"), JOB, 0, opts).unwrap();
    let recovery = store.latest_valid().unwrap();
    let mut epoch = recovery.snapshot.map_or(0, |s| s.epoch()) + 1;
    let len = data_file_len(state(epoch).iter().map(|(_, b)| b.len() as u64));
    store.prefault(len).unwrap();
    println!("ready {epoch}");
    std::io::stdout().flush().unwrap();
    loop {
        let regions = state(epoch);
        let refs: Vec<RegionRef> = regions.iter().map(|(n, b)| RegionRef::new(n, b)).collect();
        if asynchronous {
            store.write_async(epoch, epoch, &refs).unwrap();
            store.finish_staged().unwrap();
        } else {
            store.write(epoch, epoch, &refs).unwrap();
        }
        writes.fetch_add(1, Ordering::SeqCst);
        println!("published {epoch}");
        std::io::stdout().flush().unwrap();
        epoch += 1;
    }
}
