//! The transport conformance suite: what every backend of [`Transport`]
//! must do, as generic functions over a [`Harness`] that makes endpoints.
//!
//! A backend's tests instantiate it with [`transport_suite!`](crate::transport_suite)
//! (the TCP backend in `tcp_tests.rs`, the libfabric backend in its crate,
//! once per provider). Compiled for pm-core's own tests and, for other
//! crates' tests, with the `transport-suite` feature. Everything moves real
//! bytes between real endpoints; a peer killed mid-transfer is a child
//! process (the test binary run again), so its endpoint dies with the
//! process, as a node would.

use super::{
    Access, Completion, LocalSlice, Region, RegionKey, RemoteSlice, Transport, TransportError,
};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Makes the endpoints of one backend for the suite.
pub trait Harness {
    type T: Transport;

    /// A fresh endpoint; `node` names it in logs.
    fn endpoint(&self, node: &str) -> Self::T;

    /// How other endpoints reach `t`.
    fn peer(&self, t: &Self::T) -> <Self::T as Transport>::Peer;

    /// Stops `t` as if its node had died: its own later transfers fail with
    /// `Shutdown`, and peers' transfers to it fail (they must not hang).
    fn shutdown(&self, t: &Self::T);

    /// Why this backend cannot pass the suite's test `test` here, if it
    /// cannot (a documented limit of the provider, not of our code): the
    /// test then says so on stderr and passes.
    fn limitation(&self, test: &str) -> Option<String> {
        let _ = test;
        None
    }

    /// Whether `err` is how this backend reports that a peer refused
    /// `key` (unknown or deregistered there): `UnknownKey` naming it.
    fn is_refused_key(&self, err: &TransportError, key: RegionKey) -> bool {
        matches!(err, TransportError::UnknownKey { key: k, .. } if *k == key)
    }
}

/// Runs one suite test unless the harness names a limitation for it.
pub fn run<H: Harness>(h: &H, test: &str, f: impl FnOnce(&H)) {
    match h.limitation(test) {
        Some(why) => {
            // Straight to stderr: libtest captures only print!/eprint!.
            let _ = writeln!(std::io::stderr(), "{test} skipped: {why}");
        }
        None => f(h),
    }
}

/// How long any single transfer in the suite may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(20);

/// Waits for `c`, failing the test if it takes longer than [`HANG`].
pub fn wait(c: Completion) -> Result<u64, TransportError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait());
    });
    match rx.recv_timeout(HANG) {
        Ok(outcome) => outcome,
        Err(_) => panic!("a transfer did not end within {HANG:?}"),
    }
}

/// Deterministic, position-dependent bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("epoch.data");
    std::fs::write(&path, bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (dir, f)
}

fn buffer<T: Transport>(t: &T, len: usize) -> (RegionKey, Arc<Region>) {
    let r = Arc::new(Region::buffer(len, Access::ReadWrite).unwrap());
    (t.register(r.clone()).unwrap(), r)
}

fn contents(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len() as usize];
    r.copy_out(0, &mut v).unwrap();
    v
}

fn slice(key: RegionKey, offset: u64, len: u64) -> LocalSlice {
    LocalSlice { key, offset, len }
}

fn at(key: RegionKey, offset: u64) -> RemoteSlice {
    RemoteSlice { key, offset }
}

pub fn reads_and_writes_ranges_of_a_file_backed_region<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let peer = h.peer(&a);
    let data = pattern(3 << 20, 5);
    let (dir, file) = file_with(&data);
    let region = Arc::new(Region::map_file(&file, 0, data.len(), Access::ReadWrite).unwrap());
    let remote = a.register(region).unwrap();
    let (local, buf) = buffer(&b, 1 << 20);

    // An unaligned range crossing pieces.
    let got = wait(b.read(&peer, at(remote, 12_345), slice(local, 100, 700_000))).unwrap();
    assert_eq!(got, 700_000);
    assert!(
        contents(&buf)[100..700_100] == data[12_345..712_345],
        "read bytes differ"
    );

    // Write a range back and check it reached the file.
    let fresh = pattern(1 << 20, 99);
    buf.copy_in(0, &fresh).unwrap();
    wait(b.write(&peer, at(remote, 2 << 20), slice(local, 0, 1 << 20))).unwrap();
    let on_disk = std::fs::read(dir.path().join("epoch.data")).unwrap();
    assert!(
        on_disk[..2 << 20] == data[..2 << 20],
        "bytes outside the write changed"
    );
    assert!(
        on_disk[2 << 20..] == fresh[..],
        "written bytes did not reach the file"
    );
}

pub fn many_transfers_in_flight_each_land_in_place<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let peer = h.peer(&a);
    let data = pattern(8 << 20, 3);
    let (src_key, src) = buffer(&a, data.len());
    src.copy_in(0, &data).unwrap();
    let (dst_key, dst) = buffer(&b, data.len());
    let piece = 256 << 10;
    let completions: Vec<Completion> = (0..data.len() / piece)
        .rev()
        .map(|i| {
            let off = (i * piece) as u64;
            b.read(&peer, at(src_key, off), slice(dst_key, off, piece as u64))
        })
        .collect();
    let start = Instant::now();
    assert_eq!(b.wait_all(completions).unwrap(), data.len() as u64);
    assert!(start.elapsed() < HANG, "took {:?}", start.elapsed());
    assert!(contents(&dst) == data, "read bytes differ");

    // And as many writes the other way, into a fresh region of `a`.
    let (back_key, back) = buffer(&a, data.len());
    let completions: Vec<Completion> = (0..data.len() / piece)
        .map(|i| {
            let off = (i * piece) as u64;
            b.write(&peer, at(back_key, off), slice(dst_key, off, piece as u64))
        })
        .collect();
    assert_eq!(b.wait_all(completions).unwrap(), data.len() as u64);
    assert!(contents(&back) == data, "written bytes differ");
}

pub fn out_of_bounds_and_unknown_keys_are_refused_and_the_endpoint_goes_on<H: Harness>(h: &H) {
    let (a, b, c) = (h.endpoint("a"), h.endpoint("b"), h.endpoint("c"));
    let peer = h.peer(&a);
    let (remote, _r) = buffer(&a, 8192);
    let (local, _l) = buffer(&b, 8192);
    let read = |key, offset, len| wait(b.read(&peer, at(key, offset), slice(local, 0, len)));
    for (offset, len) in [(8000, 200), (8193, 0), (u64::MAX - 10, 100)] {
        let err = read(remote, offset, len).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::OutOfBounds {
                    region_len: 8192,
                    ..
                }
            ),
            "{offset}+{len}: {err}"
        );
    }
    // A key of another endpoint (of the same size, so only the key is wrong).
    let (elsewhere, _c) = buffer(&c, 8192);
    let err = read(elsewhere, 0, 10).unwrap_err();
    assert!(h.is_refused_key(&err, elsewhere), "{err}");
    a.deregister(remote).unwrap();
    let err = read(remote, 0, 10).unwrap_err();
    assert!(h.is_refused_key(&err, remote), "{err}");
    assert!(matches!(
        a.deregister(remote),
        Err(TransportError::UnknownKey { .. })
    ));
    // The same endpoints still transfer.
    let (again, r2) = buffer(&a, 4096);
    r2.copy_in(0, &[3; 4096]).unwrap();
    assert_eq!(read(again, 0, 4096).unwrap(), 4096);
    // A refused write leaves the endpoints usable and the region unchanged.
    let err = wait(b.write(&peer, at(again, 4000), slice(local, 0, 8192))).unwrap_err();
    assert!(matches!(err, TransportError::OutOfBounds { .. }), "{err}");
    assert_eq!(read(again, 0, 4096).unwrap(), 4096);
    assert!(contents(&r2).iter().all(|&x| x == 3));
}

pub fn read_only_regions_refuse_writes_and_stay_unchanged<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let data = pattern(8192, 1);
    let (dir, file) = file_with(&data);
    let remote = a
        .register(Arc::new(
            Region::map_file(&file, 0, 8192, Access::Read).unwrap(),
        ))
        .unwrap();
    let (local, buf) = buffer(&b, 8192);
    buf.copy_in(0, &[0xAA; 8192]).unwrap();
    let err = wait(b.write(&h.peer(&a), at(remote, 0), slice(local, 0, 8192))).unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    // Reads are still served.
    assert_eq!(
        wait(b.read(&h.peer(&a), at(remote, 0), slice(local, 0, 8192))).unwrap(),
        8192
    );
    assert!(contents(&buf) == data, "read bytes differ");
    assert!(
        std::fs::read(dir.path().join("epoch.data")).unwrap() == data,
        "a read-only region changed"
    );
}

pub fn local_ranges_are_checked_before_anything_is_sent<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let peer = h.peer(&a);
    let (remote, _r) = buffer(&a, 4096);
    let ro = b
        .register(Arc::new(Region::buffer(4096, Access::Read).unwrap()))
        .unwrap();
    let (local, _l) = buffer(&b, 4096);
    let (foreign, _f) = buffer(&a, 4096);
    let rs = at(remote, 0);
    let err = wait(b.read(&peer, rs, slice(ro, 0, 10))).unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    let err = wait(b.read(&peer, rs, slice(local, 4000, 100))).unwrap_err();
    assert!(matches!(err, TransportError::OutOfBounds { .. }), "{err}");
    // A key `b` never registered (it belongs to `a`) is no local region.
    let err = wait(b.write(&peer, rs, slice(foreign, 0, 1))).unwrap_err();
    assert!(
        matches!(err, TransportError::UnknownKey { key, .. } if key == foreign),
        "{err}"
    );
}

pub fn a_dead_endpoint_fails_transfers_instead_of_hanging<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let peer = h.peer(&a);
    let (remote, _r) = buffer(&a, 64 << 20);
    let (local, _l) = buffer(&b, 64 << 20);
    // Warm the path, then kill the endpoint under it.
    wait(b.read(&peer, at(remote, 0), slice(local, 0, 4096))).unwrap();
    let inflight = b.read(&peer, at(remote, 0), slice(local, 0, 64 << 20));
    h.shutdown(&a);
    // The transfer in flight either finished before the cut or fails; it never hangs.
    let _ = wait(inflight);
    let err = wait(b.read(&peer, at(remote, 0), slice(local, 0, 4096))).unwrap_err();
    assert!(!matches!(err, TransportError::Shutdown), "{err}");
}

pub fn a_shut_down_endpoint_refuses_new_transfers<H: Harness>(h: &H) {
    let (a, b) = (h.endpoint("a"), h.endpoint("b"));
    let peer = h.peer(&a);
    let (remote, _r) = buffer(&a, 4096);
    let (local, _l) = buffer(&b, 4096);
    wait(b.read(&peer, at(remote, 0), slice(local, 0, 4096))).unwrap();
    h.shutdown(&b);
    h.shutdown(&b); // idempotent
    let err = wait(b.read(&peer, at(remote, 0), slice(local, 0, 4096))).unwrap_err();
    assert!(matches!(err, TransportError::Shutdown), "{err}");
}

/// The environment variable that turns the suite's `child_endpoint` test
/// into the peer of [`a_peer_killed_mid_transfer_fails_it`].
pub const CHILD_ENV: &str = "PM_TRANSPORT_SUITE_CHILD";
const KILL_LEN: usize = 256 << 20;

/// In the child process only: serves one large region filled with 0xA5,
/// prints `READY <peer> <key>` (hex of their postcard encodings), then
/// waits to be killed.
pub fn child_endpoint<H: Harness>(h: &H) {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let t = h.endpoint("child");
    let rw = Region::buffer(KILL_LEN, Access::ReadWrite).unwrap();
    for off in (0..KILL_LEN).step_by(1 << 20) {
        rw.copy_in(off as u64, &[0xA5; 1 << 20]).unwrap();
    }
    let key = t.register(Arc::new(rw)).unwrap();
    let peer = postcard::to_stdvec(&h.peer(&t)).unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "READY {} {}", hex(&peer), hex(&key.to_bytes())).unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// Runs `child_test` (the full test name of this suite's `child_endpoint`
/// in the calling binary) as a child process, starts reading its region,
/// SIGKILLs it once the first bytes have landed: the transfer must end with
/// an error, not hang, and so must a later one.
pub fn a_peer_killed_mid_transfer_fails_it<H: Harness>(h: &H, child_test: &str) {
    let ChildPeer {
        mut child,
        peer,
        key,
    } = ChildPeer::<H::T>::spawn(child_test);
    let me = h.endpoint("killer");
    let local = Arc::new(Region::buffer(KILL_LEN, Access::ReadWrite).unwrap());
    let local_key = me.register(local.clone()).unwrap();
    let transfer = me.read(&peer, at(key, 0), slice(local_key, 0, KILL_LEN as u64));
    // Kill the peer as soon as its first bytes have landed.
    let start = Instant::now();
    let mut first = [0u8; 1];
    while first[0] != 0xA5 && start.elapsed() < HANG {
        std::thread::yield_now();
        local.copy_out(0, &mut first).unwrap();
    }
    child.kill();
    assert_eq!(first[0], 0xA5, "no byte arrived before the kill");

    let err = wait(transfer).unwrap_err();
    assert!(!matches!(err, TransportError::Shutdown), "{err}");
    let err = wait(me.read(&peer, at(key, 0), slice(local_key, 0, 4096))).unwrap_err();
    assert!(!matches!(err, TransportError::Shutdown), "{err}");
}

/// The endpoint [`child_endpoint`] serves in a child process: its address
/// and the key of its region of `KILL_LEN` bytes of 0xA5. The child is
/// killed when this is dropped, so it never outlives a failed test.
pub struct ChildPeer<T: Transport> {
    pub child: KilledOnDrop,
    pub peer: T::Peer,
    pub key: RegionKey,
}

impl<T: Transport> ChildPeer<T> {
    /// Runs `child_test` (the full test name of the suite's `child_endpoint`
    /// in the calling binary) as a child process and waits until it serves.
    pub fn spawn(child_test: &str) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", child_test, "--ignored", "--nocapture"])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KilledOnDrop(child);
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        // libtest may print the test's name on the same line first.
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.find("READY ").map(|i| l[i..].to_owned()));
        let Some(ready) = ready else {
            panic!("the child endpoint ({child_test}) did not start");
        };
        let mut parts = ready.split_whitespace().skip(1);
        let peer = postcard::from_bytes(&unhex(parts.next().unwrap())).unwrap();
        let key = RegionKey::from_bytes(unhex(parts.next().unwrap()).try_into().unwrap());
        Self { child, peer, key }
    }
}

/// A child process, killed and reaped when dropped.
pub struct KilledOnDrop(std::process::Child);

impl KilledOnDrop {
    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The libtest name of `test` in the module `module` (a `module_path!()`):
/// the path without the crate's name.
pub fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_, rest)) => format!("{rest}::{test}"),
        None => test.to_owned(),
    }
}

/// Instantiates the suite as `#[test]`s in the calling module. `$harness`
/// is an expression of type `Option<impl Harness>`, evaluated in every
/// test; `None` (a backend not available here) makes the test pass after
/// the harness has said why it skipped.
#[macro_export]
macro_rules! transport_suite {
    ($harness:expr) => {
        $crate::transport_suite!(@tests $harness;
            reads_and_writes_ranges_of_a_file_backed_region,
            many_transfers_in_flight_each_land_in_place,
            out_of_bounds_and_unknown_keys_are_refused_and_the_endpoint_goes_on,
            read_only_regions_refuse_writes_and_stay_unchanged,
            local_ranges_are_checked_before_anything_is_sent,
            a_dead_endpoint_fails_transfers_instead_of_hanging,
            a_shut_down_endpoint_refuses_new_transfers,
        );

        #[test]
        #[ignore = "the peer of a_peer_killed_mid_transfer_fails_it, run as a child process"]
        fn child_endpoint() {
            if let Some(h) = $harness {
                $crate::transport::suite::child_endpoint(&h);
            }
        }

        #[test]
        fn a_peer_killed_mid_transfer_fails_it() {
            if let Some(h) = $harness {
                let name = $crate::transport::suite::test_name(module_path!(), "child_endpoint");
                $crate::transport::suite::run(&h, "a_peer_killed_mid_transfer_fails_it", |h| {
                    $crate::transport::suite::a_peer_killed_mid_transfer_fails_it(h, &name)
                });
            }
        }
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(h) = $harness {
                    $crate::transport::suite::run(&h, stringify!($name), $crate::transport::suite::$name);
                }
            }
        )*
    };
}
