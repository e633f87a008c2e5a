//! Replicating a rank's snapshot between two stores ("nodes" in two
//! directories, endpoints on two loopback addresses), over each transport
//! the agents can choose: every test that moves bytes runs once over TCP
//! and once over libfabric's `tcp;ofi_rxm` (skipped, and said on stderr,
//! where libfabric or the provider is missing).

use pm_core::StoreError;
use pm_core::proto::ToPartner as Message;
use pm_core::replicate::{self, ReplicateError};
use pm_core::store::{ChunkFetch, ImportTarget};
use pm_core::transport::{TcpOptions, TcpTransport, Transport};
use pm_core::wire::JobSecret;
use pm_core::{RegionRef, Store, StoreOptions};
use pm_launcher::transport::NodeTransport;
use pm_transport_fabric::{FabricOptions, FabricTransport};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 128;

/// The backend a test's nodes use.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Fabric(&'static str),
}

/// Fabric tests one at a time: every endpoint has a progress thread, and
/// on two cores a dozen of them at once starve the transfers under test.
static FABRIC: Mutex<()> = Mutex::new(());

/// Whether `kind` can run here; holds the fabric lock while it does.
fn available(kind: Kind) -> Option<Option<MutexGuard<'static, ()>>> {
    let Kind::Fabric(provider) = kind else {
        return Some(None);
    };
    pm_tests::fabric::offered(provider)
        .then(|| Some(FABRIC.lock().unwrap_or_else(|e| e.into_inner())))
}

/// Declares `#[test]`s that run each body once per backend.
macro_rules! over_each_transport {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(#[test] fn $name() { super::$name(super::Kind::Tcp) })*
        }
        mod fabric_tcp_rxm {
            $(#[test] fn $name() {
                let kind = super::Kind::Fabric("tcp;ofi_rxm");
                if let Some(_serial) = super::available(kind) {
                    super::$name(kind)
                }
            })*
        }
    };
}

over_each_transport!(
    a_pull_reports_what_it_moves_as_it_moves_it,
    a_full_then_a_slightly_changed_snapshot_move_exactly_the_changed_chunks,
    a_partner_that_missed_epochs_fetches_from_older_data_files,
    a_transfer_interrupted_midway_leaves_the_previous_replica_intact,
    a_dead_source_fails_the_pull_without_touching_the_replica,
    a_snapshot_ready_message_round_trips_and_inconsistent_ones_are_refused,
    an_exposer_maps_recycled_data_files_once_and_replicas_stay_exact,
);

struct Node {
    _root: tempfile::TempDir,
    store: Store,
    transport: NodeTransport,
}

fn node(kind: Kind, last_octet: u8) -> Node {
    let root = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        chunk_size: CHUNK,
        keep: 2,
        ..StoreOptions::default()
    };
    let store = Store::open(root.path(), "job-r", 0, opts).unwrap();
    let ip = Ipv4Addr::new(127, 0, 0, last_octet);
    let node = format!("n{last_octet}");
    let transport = match kind {
        Kind::Tcp => NodeTransport::Tcp(
            TcpTransport::bind(
                SocketAddr::new(IpAddr::V4(ip), 0),
                JobSecret::from_bytes([4; 32]),
                TcpOptions {
                    node,
                    ..TcpOptions::default()
                },
            )
            .unwrap(),
        ),
        Kind::Fabric(provider) => NodeTransport::Fabric(
            FabricTransport::open(
                Some(provider),
                FabricOptions {
                    node,
                    source: Some(ip.to_string()),
                    // A dead source is reported by the provider, or by
                    // this deadline.
                    timeout: Duration::from_secs(5),
                    ..FabricOptions::default()
                },
            )
            .unwrap(),
        ),
    };
    Node {
        _root: root,
        store,
        transport,
    }
}

/// Two regions, the second of an odd length so that its last chunk is short.
fn state(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let gen_bytes = |n: usize, s: u64| {
        let mut x = s.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    (
        gen_bytes(CHUNK * (CHUNKS - 8), seed),
        gen_bytes(CHUNK * 7 + 1234, seed + 1),
    )
}

fn write(n: &mut Node, epoch: u64, s: &(Vec<u8>, Vec<u8>)) -> u64 {
    let regions = [RegionRef::new("grid", &s.0), RegionRef::new("aux", &s.1)];
    n.store
        .write(epoch, epoch * 10, &regions)
        .unwrap()
        .bytes_written
}

fn pull(
    src: &Node,
    dst: &mut Node,
    epoch: u64,
) -> Result<pm_core::store::ImportReport, ReplicateError> {
    pull_reporting(src, dst, epoch, &mut |_, _| {})
}

/// `dst` pulls what `src` exposed, as it stands.
fn pull_exposed(
    src: &Node,
    dst: &mut Node,
    exposed: &replicate::ExposedSnapshot,
) -> Result<pm_core::store::ImportReport, ReplicateError> {
    replicate::pull(
        &dst.transport,
        &src.transport.address(),
        &exposed.manifest,
        &exposed.data_keys,
        &mut dst.store,
    )
}

/// [`pull`], passing the pull's progress to `progress(moved, total)`.
fn pull_reporting(
    src: &Node,
    dst: &mut Node,
    epoch: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<pm_core::store::ImportReport, ReplicateError> {
    let snap = src.store.open_snapshot(epoch).unwrap();
    let exposed = replicate::expose(&src.transport, &src.store, &snap).unwrap();
    let report = replicate::Puller::new(&dst.transport).pull_with_progress(
        &src.transport.address(),
        &exposed.manifest,
        &exposed.data_keys,
        &mut dst.store,
        progress,
    );
    exposed.withdraw(&src.transport).unwrap();
    report
}

fn a_pull_reports_what_it_moves_as_it_moves_it(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let mut s = state(5);
    write(&mut a, 1, &s);
    pull(&a, &mut b, 1).unwrap();
    touch(&mut s, 3, 0);
    let written = write(&mut a, 2, &s);
    let mut calls = Vec::new();
    let report = pull_reporting(&a, &mut b, 2, &mut |moved, total| {
        calls.push((moved, total))
    })
    .unwrap();
    // First what is to move (only the changed chunks), then growing
    // counts up to all of it.
    assert_eq!(calls.first(), Some(&(0, written)), "{calls:?}");
    assert_eq!(calls.last(), Some(&(written, written)), "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0), "{calls:?}");
    assert_eq!(report.bytes_fetched, written);
}

fn assert_restores(n: &Node, epoch: u64, s: &(Vec<u8>, Vec<u8>)) {
    let snap = n.store.open_snapshot(epoch).unwrap();
    snap.verify().unwrap();
    let mut grid = vec![0; s.0.len()];
    let mut aux = vec![0; s.1.len()];
    snap.read_region("grid", &mut grid).unwrap();
    snap.read_region("aux", &mut aux).unwrap();
    assert!(
        grid == s.0 && aux == s.1,
        "epoch {epoch} does not restore bit-exactly"
    );
}

/// Changes one byte in each of `n` chunks spread over the grid.
fn touch(s: &mut (Vec<u8>, Vec<u8>), n: usize, salt: u8) {
    for i in 0..n {
        let at = (i * 37 % (CHUNKS - 8)) * CHUNK + 5;
        s.0[at] = s.0[at].wrapping_add(1 + salt);
    }
}

fn a_full_then_a_slightly_changed_snapshot_move_exactly_the_changed_chunks(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let mut s = state(1);
    write(&mut a, 1, &s);
    let full = pull(&a, &mut b, 1).unwrap();
    assert_eq!(full.bytes_fetched, full.state_bytes);
    assert_restores(&b, 1, &s);

    touch(&mut s, 2, 0);
    let written = write(&mut a, 2, &s);
    assert_eq!(written, 2 * CHUNK as u64);
    let incr = pull(&a, &mut b, 2).unwrap();
    assert_eq!(incr.bytes_fetched, written, "only the changed chunks move");
    assert_eq!(incr.chunks_fetched, 2);
    assert!(incr.bytes_fetched * 50 < incr.state_bytes);
    assert_restores(&b, 2, &s);
    // The replica's own manifest points into its own files.
    assert_eq!(b.store.epochs().unwrap(), vec![1, 2]);
}

fn a_partner_that_missed_epochs_fetches_from_older_data_files(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let mut s = state(2);
    write(&mut a, 1, &s);
    pull(&a, &mut b, 1).unwrap();
    touch(&mut s, 3, 0);
    write(&mut a, 2, &s);
    touch(&mut s, 5, 1);
    write(&mut a, 3, &s);
    // Epoch 3 references data files 1, 2 and 3 on the source.
    let report = pull(&a, &mut b, 3).unwrap();
    assert!(report.chunks_fetched >= 5, "{report:?}");
    assert_restores(&b, 3, &s);
}

fn a_transfer_interrupted_midway_leaves_the_previous_replica_intact(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let s1 = state(3);
    write(&mut a, 1, &s1);
    pull(&a, &mut b, 1).unwrap();
    let mut s = s1.clone();
    touch(&mut s, 4, 0);
    write(&mut a, 2, &s);
    touch(&mut s, 9, 1);
    write(&mut a, 3, &s);

    // Chunks of data file 2 arrive, those of data file 3 fail: the source
    // withdrew that file mid-replication.
    let snap = a.store.open_snapshot(3).unwrap();
    let exposed = replicate::expose(&a.transport, &a.store, &snap).unwrap();
    let (_, key3) = *exposed.data_keys.iter().find(|(e, _)| *e == 3).unwrap();
    a.transport.deregister(key3).unwrap();
    let err = pull_exposed(&a, &mut b, &exposed).unwrap_err();
    assert!(
        matches!(
            &err,
            ReplicateError::Store(StoreError::Fetch { epoch: 3, .. })
        ),
        "{err}"
    );
    // tcp;ofi_rxm answers a key it does not hold by cutting the
    // connection, which may reach the reader first as "not connected".
    let refused = err.to_string().contains("not registered")
        || matches!(kind, Kind::Fabric("tcp;ofi_rxm")) && err.to_string().contains("not connected");
    assert!(refused, "{err}");
    assert_eq!(b.store.epochs().unwrap(), vec![1]);
    assert_restores(&b, 1, &s1);
    let latest = b.store.latest_valid().unwrap().snapshot.unwrap();
    assert_eq!(latest.epoch(), 1);

    // A retry with the source back completes, reusing what arrived.
    let retried = pull(&a, &mut b, 3).unwrap();
    assert_restores(&b, 3, &s);
    assert!(retried.bytes_fetched < retried.state_bytes);
}

fn a_dead_source_fails_the_pull_without_touching_the_replica(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let s1 = state(4);
    write(&mut a, 1, &s1);
    pull(&a, &mut b, 1).unwrap();
    let mut s = s1.clone();
    touch(&mut s, 4, 0);
    write(&mut a, 2, &s);
    let snap = a.store.open_snapshot(2).unwrap();
    let exposed = replicate::expose(&a.transport, &a.store, &snap).unwrap();
    a.transport.shutdown();
    let err = pull_exposed(&a, &mut b, &exposed).unwrap_err();
    assert!(
        matches!(&err, ReplicateError::Store(StoreError::Fetch { .. })),
        "{err}"
    );
    assert_eq!(b.store.epochs().unwrap(), vec![1]);
    assert_restores(&b, 1, &s1);
}

#[test]
fn fetched_bytes_that_do_not_match_their_hash_are_never_published() {
    let (mut a, mut b) = (node(Kind::Tcp, 2), node(Kind::Tcp, 3));
    let s = state(5);
    write(&mut a, 1, &s);
    let manifest = a.store.manifest(1).unwrap();
    let source = File::open(a.store.data_path(1)).unwrap();
    let err = b
        .store
        .import_snapshot(
            &manifest,
            |dst: &ImportTarget<'_>, chunks: &[ChunkFetch]| {
                for (i, c) in chunks.iter().enumerate() {
                    let mut buf = vec![0; c.len as usize];
                    source.read_exact_at(&mut buf, c.source.offset)?;
                    if i == 17 {
                        buf[100] ^= 1; // damaged in transit
                    }
                    dst.file().write_all_at(&buf, c.dest_offset)?;
                }
                Ok::<(), std::io::Error>(())
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkCorrupt { chunk: 17, .. }),
        "{err}"
    );
    assert!(b.store.epochs().unwrap().is_empty());
}

#[test]
fn a_snapshot_of_another_rank_is_refused() {
    let (mut a, b) = (node(Kind::Tcp, 2), node(Kind::Tcp, 3));
    write(&mut a, 1, &state(6));
    let mut other = Store::open(b._root.path(), "job-r", 1, StoreOptions::default()).unwrap();
    let manifest = a.store.manifest(1).unwrap();
    let err = other
        .import_snapshot(&manifest, |_: &ImportTarget<'_>, _: &[ChunkFetch]| {
            Ok::<(), std::io::Error>(())
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
}

fn a_snapshot_ready_message_round_trips_and_inconsistent_ones_are_refused(kind: Kind) {
    let mut a = node(kind, 2);
    let mut s = state(7);
    write(&mut a, 1, &s);
    touch(&mut s, 3, 0);
    write(&mut a, 2, &s);
    let snap = a.store.open_snapshot(2).unwrap();
    let exposed = replicate::expose(&a.transport, &a.store, &snap).unwrap();
    let msg = exposed.announcement();
    let Message::SnapshotReady { changed, .. } = &msg else {
        panic!("{msg:?}")
    };
    let changed_bytes: u64 = changed.iter().map(|(_, len)| len).sum();
    assert_eq!(changed_bytes, 3 * CHUNK as u64);
    let back = replicate::ExposedSnapshot::from_announcement(&msg).unwrap();
    assert_eq!(back.manifest, exposed.manifest);
    assert_eq!(back.data_keys, exposed.data_keys);

    let mut wrong_epoch = msg.clone();
    if let Message::SnapshotReady { epoch, .. } = &mut wrong_epoch {
        *epoch = 3;
    }
    let err = replicate::ExposedSnapshot::from_announcement(&wrong_epoch).unwrap_err();
    assert!(matches!(err, ReplicateError::Announcement(_)), "{err}");
    let mut missing_key = msg.clone();
    if let Message::SnapshotReady { data_keys, .. } = &mut missing_key {
        data_keys.retain(|(e, _)| *e == 2);
    }
    let err = replicate::ExposedSnapshot::from_announcement(&missing_key).unwrap_err();
    assert!(
        matches!(err, ReplicateError::MissingKey { file_epoch: 1, .. }),
        "{err}"
    );
    let mut damaged = msg;
    if let Message::SnapshotReady { manifest_bytes, .. } = &mut damaged {
        manifest_bytes[20] ^= 1;
    }
    let err = replicate::ExposedSnapshot::from_announcement(&damaged).unwrap_err();
    assert!(matches!(err, ReplicateError::Store(_)), "{err}");
}

fn an_exposer_maps_recycled_data_files_once_and_replicas_stay_exact(kind: Kind) {
    let (mut a, mut b) = (node(kind, 2), node(kind, 3));
    let mut exposer = replicate::Exposer::default();
    let mut puller = replicate::Puller::new(&b.transport);
    let mut s = state(7);
    let mut made_after_warm_up = 0;
    for epoch in 1..=8 {
        // Every "grid" chunk changes: each epoch writes a new data file,
        // which from the fourth on is a recycled one (keep 2, plus the spare).
        touch(&mut s, CHUNKS, epoch as u8);
        write(&mut a, epoch, &s);
        let snap = a.store.open_snapshot(epoch).unwrap();
        let exposed = exposer.expose(&a.transport, &a.store, &snap).unwrap();
        puller
            .pull(
                &a.transport.address(),
                &exposed.manifest,
                &exposed.data_keys,
                &mut b.store,
            )
            .unwrap();
        exposed.withdraw(&a.transport).unwrap();
        assert_restores(&b, epoch, &s);
        if epoch == 4 {
            made_after_warm_up = exposer.mappings_made();
        }
    }
    assert_eq!(
        exposer.mappings_made(),
        made_after_warm_up,
        "recycled data files were mapped again"
    );
    // What the last three rounds exposed: their own data files, and epoch
    // 1's, which still holds the unchanged "aux" chunks.
    let file = (CHUNK * CHUNKS) as u64;
    assert!(
        exposer.mapped_bytes() <= 4 * file,
        "{} bytes kept mapped",
        exposer.mapped_bytes()
    );
}
