//! The fuzz targets' inputs, replayed in `make test`: the seed corpus
//! (`fuzz/corpus/<target>/`) and every input a fuzzer ever found
//! (`fuzz/regressions/<target>/`) go through the targets' checks
//! (`pm_core::fuzz`). `PM_WRITE_SEEDS=1` rewrites the seed corpus from
//! what the code writes today.

use pm_core::fuzz::{CHECKS, seeds};
use pm_core::wire::{JobSecret, Limits, Session, WireErrorKind};
use pm_core::{Manifest, gossip, history};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_input_fuzzing_found_passes_its_check() {
    if std::env::var_os("PM_WRITE_SEEDS").is_some() {
        let scratch = tempfile::tempdir().unwrap();
        for (i, (name, bytes)) in seeds(scratch.path()).unwrap().into_iter().enumerate() {
            let dir = fuzz_dir().join("corpus").join(name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("seed-{i:02}")), bytes).unwrap();
        }
    }
    for &(name, check) in CHECKS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "no seed corpus for the fuzz target {name}: run `PM_WRITE_SEEDS=1 cargo test -p pm-core --test fuzz_corpus`"
        );
        for file in seeds
            .iter()
            .chain(&inputs(&fuzz_dir().join("regressions").join(name)))
        {
            let bytes = fs::read(file).unwrap();
            if std::panic::catch_unwind(|| check(&bytes)).is_err() {
                panic!("the {name} check fails on {}", file.display());
            }
        }
    }
}

/// The seeds reach past the first checks of their decoders: a fuzzer that
/// starts from them explores the bodies, not only the headers.
#[test]
fn the_seeds_are_valid_inputs_of_their_decoders() {
    let scratch = tempfile::tempdir().unwrap();
    let seeds = seeds(scratch.path()).unwrap();
    let of = |name: &str| -> Vec<&Vec<u8>> {
        let found: Vec<_> = seeds.iter().filter(|s| s.0 == name).map(|s| &s.1).collect();
        assert!(!found.is_empty(), "no seed for {name}");
        found
    };
    for &(name, _) in CHECKS {
        of(name);
    }
    // The recorded client authenticates its Hello; only the replay's
    // Confirm fails, bound to the nonce of the connection it came from.
    let stream = of("wire_stream")[0];
    let err = Session::accept(
        &mut ReplayedPeer(std::io::Cursor::new(stream.clone())),
        &JobSecret::from_bytes([7; 32]),
        "replay",
        "node",
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err.kind, WireErrorKind::BadMac { seq: 1 }),
        "{err}"
    );

    for m in of("manifest") {
        if m[0] == 0 {
            Manifest::decode(&m[1..], Path::new("seed")).unwrap();
        }
    }
    for h in of("history") {
        if h[0] == 0 {
            history::file::decode(&h[1..], Path::new("seed")).unwrap();
        }
    }
    for g in of("gossip") {
        assert!(!gossip::Message::decode(g).unwrap().records.is_empty());
    }
}

/// A peer that replays recorded bytes and ignores what it is sent.
struct ReplayedPeer(std::io::Cursor<Vec<u8>>);

impl Read for ReplayedPeer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReplayedPeer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
