//! The run history survives a SIGKILL in the middle of a save: a real writer
//! process saves a multi-megabyte history in a loop and is killed at varying
//! moments; the file must then load, hold the newest saved generation (or the
//! one being saved, if its rename had happened), and be internally consistent.

use pm_core::history::{self, AppSignature};
use pm_tests::Bounded;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WRITER: &str = env!("CARGO_BIN_EXE_history_writer");
const SIGNATURE: AppSignature = AppSignature(0x5eed);
const RANKS: usize = 200_000;
const KILLS: u64 = 12;

#[test]
fn history_survives_sigkill_mid_write() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("history");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut state = seed | 1;
    let mut newest = 0u64;
    for kill in 0..KILLS {
        let mut child = Command::new(WRITER)
            .arg(&path)
            .arg(RANKS.to_string())
            .stdout(Stdio::piped())
            .spawn_grouped()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("saved "), "writer said {line:?}");
        // xorshift: a kill 0..40 ms after the first save, spread over save phases.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_micros(state % 40_000));
        child.kill().unwrap();
        pm_tests::bounded::wait_within(&mut child, pm_tests::bounded::LIMIT, "the workload");
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        for l in line.lines().chain(rest.lines()) {
            newest = l.strip_prefix("saved ").unwrap().parse().unwrap();
        }

        let h = history::load(&path).unwrap_or_else(|e| panic!("kill {kill} (seed {seed}): {e}"));
        let runs = h.runs(SIGNATURE);
        let last = runs.last().expect("a run is recorded");
        let generation = last.weights[0] as u64;
        assert!(
            generation == newest || generation == newest + 1,
            "kill {kill}: file holds generation {generation}, writer had saved {newest}"
        );
        assert_eq!(last.weights.len(), RANKS);
        assert!(last.weights.iter().all(|&w| w as u64 == generation));
        assert!(last.state_bytes.iter().all(|&b| b == generation));
        // Earlier runs are the preceding generations, in order.
        for (i, r) in runs.iter().enumerate() {
            assert_eq!(
                r.weights[0] as u64 + (runs.len() - 1 - i) as u64,
                generation
            );
        }
        newest = generation;
    }
    // Each writer saved at least once, deleting the temporaries of the ones killed before.
    let temporaries = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != "history")
        .count();
    assert!(temporaries <= 1, "{temporaries} temporary files left");
}
