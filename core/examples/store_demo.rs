//! `make demo`: the node-local checkpoint store at work, explained as it runs.
//!
//! A rank's 64 MiB grid is checkpointed three times; the newest snapshot is
//! then damaged on purpose, and a restart restores the previous good epoch,
//! bit for bit. Set `PM_STORE` to use another store root than RAM.

use pm_core::store::default_root;
use pm_core::{RegionBuf, RegionRef, Store, StoreOptions};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

const MIB: f64 = (1 << 20) as f64;
const ROWS: usize = 1024;
const COLS: usize = 8192;

/// One "time step": a hot band of rows moves through the grid, so each
/// checkpoint sees only part of the state change.
fn compute(grid: &mut [f64], step: usize) {
    let band = (step * 2) % ROWS;
    for row in band..(band + 8).min(ROWS) {
        for (c, x) in grid[row * COLS..(row + 1) * COLS].iter_mut().enumerate() {
            *x = 0.5 * *x + (step as f64 + c as f64).sin();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::var_os("PM_STORE").map_or_else(default_root, PathBuf::from);
    let job = format!("demo-{}", std::process::id());
    let mut store = Store::open(&root, &job, 0, StoreOptions::default())?;
    let medium = if store.is_durable() {
        "disk, fsync'd"
    } else {
        "RAM"
    };
    println!("pmrun demo: the node-local checkpoint store");
    println!("store: {} ({medium})\n", store.dir().display());

    let mut buf = RegionBuf::new(ROWS * COLS * 8)?;
    let grid: &mut [f64] = bytemuck::cast_slice_mut(&mut buf);
    println!(
        "1. A rank computes on a {} MiB grid and checkpoints every 100 steps.",
        (ROWS * COLS * 8) >> 20
    );
    let mut saved = Vec::new();
    for epoch in 1..=3u64 {
        for step in (epoch as usize - 1) * 100..epoch as usize * 100 {
            compute(grid, step);
        }
        let bytes: &[u8] = bytemuck::cast_slice(grid);
        let report = store.write(epoch, epoch * 100, &[RegionRef::new("grid", bytes)])?;
        println!(
            "   epoch {epoch} at step {}: {} of {} chunks changed, wrote {:.1} MiB in {:.1} ms",
            report.step,
            report.chunks_written,
            report.chunks,
            report.bytes_written as f64 / MIB,
            report.publish_time.as_secs_f64() * 1e3
        );
        saved.push(bytes.to_vec());
    }
    println!(
        "   kept epochs: {:?} (the store keeps the newest 2)\n",
        store.epochs()?
    );

    let manifest = store.manifest(3)?;
    let (index, chunk) = manifest.regions[0]
        .chunks
        .iter()
        .enumerate()
        .find(|(_, c)| c.file_epoch == 3)
        .expect("epoch 3 changed some chunks");
    let data = store.data_path(3);
    println!(
        "2. Damage: one byte of chunk {index} in {} is flipped,",
        data.display()
    );
    println!("   as a failing disk or a stray write would do.");
    let file = OpenOptions::new().read(true).write(true).open(&data)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, chunk.offset + 123)?;
    file.write_all_at(&[byte[0] ^ 0x20], chunk.offset + 123)?;

    println!("\n3. Restart: find the newest snapshot whose every chunk verifies.");
    let started = Instant::now();
    let recovery = store.latest_valid()?;
    for skipped in &recovery.skipped {
        println!("   skipped epoch {}: {}", skipped.epoch, skipped.error);
    }
    let snapshot = recovery.snapshot.ok_or("no valid snapshot left")?;
    grid.fill(0.0);
    snapshot.read_region("grid", bytemuck::cast_slice_mut(grid))?;
    println!(
        "   restored epoch {} (step {}) in {:.1} ms",
        snapshot.epoch(),
        snapshot.step(),
        started.elapsed().as_secs_f64() * 1e3
    );

    let same = bytemuck::cast_slice::<f64, u8>(grid) == &saved[snapshot.epoch() as usize - 1][..];
    println!(
        "\n4. Check: the restored grid {} the state checkpointed at step {}, bit for bit.",
        if same { "equals" } else { "DIFFERS FROM" },
        snapshot.step()
    );
    store.destroy()?;
    println!("   The demo's snapshots were removed.");
    if !same {
        return Err("restored state differs".into());
    }
    Ok(())
}
