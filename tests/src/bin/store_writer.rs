//! Test helper: writes the snapshots of `pm_tests::store_workload` in an
//! endless loop, continuing after the newest valid snapshot, so that a test
//! can SIGKILL it at any moment and inspect the store.
//!
//! Usage: `store_writer ROOT ram|disk [--stop-at PHASE --after N]`
//!
//! Prints `ready <epoch>` once it is about to write, `published <epoch>` after
//! every write. The number of the write phase it is in (1-based index into
//! `WritePhase::ALL`, 0 before the first write) is kept in the file
//! `ROOT/phase` so a test learns where a kill landed. With `--stop-at`, it
//! prints `stopped` when it enters PHASE during its N-th write and waits
//! there to be killed.

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
    let usage = "usage: store_writer ROOT ram|disk [--stop-at PHASE --after N]";
    let root = PathBuf::from(args.get(1).expect(usage));
    let durability = match args.get(2).map(String::as_str) {
        Some("ram") => Durability::Auto,
        Some("disk") => Durability::Always,
        _ => panic!("{usage}"),
    };
    let stop: Option<(WritePhase, u64)> = match args.get(3).map(String::as_str) {
        Some("--stop-at") => {
            let phase = WritePhase::ALL
                .into_iter()
                .find(|p| format!("{p:?}") == args[4])
                .expect("unknown phase");
            Some((phase, args[6].parse().expect(usage)))
        }
        _ => None,
    };

    let phase_file = Arc::new(File::create(root.join("phase")).unwrap());
    phase_file.write_at(&[0], 0).unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let hook = {
        let (phase_file, writes) = (phase_file.clone(), writes.clone());
        move |phase: WritePhase| {
            let index = WritePhase::ALL.iter().position(|&p| p == phase).unwrap() as u8 + 1;
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
    println!("ready {epoch}");
    std::io::stdout().flush().unwrap();
    loop {
        let regions = state(epoch);
        let refs: Vec<RegionRef> = regions.iter().map(|(n, b)| RegionRef::new(n, b)).collect();
        store.write(epoch, epoch, &refs).unwrap();
        writes.fetch_add(1, Ordering::SeqCst);
        println!("published {epoch}");
        std::io::stdout().flush().unwrap();
        epoch += 1;
    }
}
