//! Test helper: saves the run history over and over, so that a test can
//! SIGKILL it in the middle of a save.
//!
//! Usage: `history_writer PATH RANKS`
//!
//! Continues from the history at PATH: generation g records a run whose every
//! weight is g (and every state size g), then saves. Prints `saved <g>` after
//! each save returned.

use pm_core::history::{self, AppSignature, HistoryLimits, RunRecord};
use std::io::Write;
use std::path::PathBuf;

pub const SIGNATURE: AppSignature = AppSignature(0x5eed);

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: history_writer PATH RANKS";
    let path = PathBuf::from(args.next().expect(usage));
    let ranks: usize = args.next().expect(usage).parse().expect(usage);
    let mut h = history::load(&path).unwrap();
    let mut generation = h.runs(SIGNATURE).last().map_or(0, |r| r.weights[0] as u64) + 1;
    let limits = HistoryLimits::default();
    loop {
        let run = RunRecord {
            weights: vec![generation as f32; ranks],
            state_bytes: vec![generation; ranks],
            steps: 100,
        };
        h.record(SIGNATURE, run, &limits);
        history::save(&path, &h).unwrap();
        println!("saved {generation}");
        std::io::stdout().flush().unwrap();
        generation += 1;
    }
}
