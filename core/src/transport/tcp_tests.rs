//! The TCP backend over real loopback sockets and real files.

use super::*;
use crate::proto::ToAgent as Message;
use std::io::Write;
use std::net::Ipv4Addr;

fn secret(b: u8) -> JobSecret {
    JobSecret::from_bytes([b; 32])
}

fn endpoint(node: &str, s: u8) -> TcpTransport {
    let opts = TcpOptions {
        node: node.into(),
        timeout: Duration::from_secs(5),
        piece_size: 64 << 10,
        ..TcpOptions::default()
    };
    TcpTransport::bind((Ipv4Addr::LOCALHOST, 0).into(), secret(s), opts).unwrap()
}

/// Deterministic, position-dependent bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
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

fn buffer(t: &TcpTransport, len: usize) -> (RegionKey, Arc<Region>) {
    let r = Arc::new(Region::buffer(len, Access::ReadWrite).unwrap());
    (t.register(r.clone()).unwrap(), r)
}

fn contents(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len() as usize];
    r.copy_out(0, &mut v).unwrap();
    v
}

#[test]
fn reads_and_writes_ranges_of_a_file_backed_region() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let data = pattern(3 << 20, 5);
    let (_dir, file) = file_with(&data);
    let region = Arc::new(Region::map_file(&file, 0, data.len(), Access::ReadWrite).unwrap());
    let remote = a.register(region).unwrap();
    let (local, buf) = buffer(&b, 1 << 20);

    // An unaligned range crossing pieces.
    let got = b
        .read(
            &a.local_addr(),
            RemoteSlice {
                key: remote,
                offset: 12_345,
            },
            LocalSlice {
                key: local,
                offset: 100,
                len: 700_000,
            },
        )
        .wait()
        .unwrap();
    assert_eq!(got, 700_000);
    assert_eq!(contents(&buf)[100..700_100], data[12_345..712_345]);

    // Write a range back and check it reached the file.
    let fresh = pattern(1 << 20, 99);
    buf.copy_in(0, &fresh).unwrap();
    b.write(
        &a.local_addr(),
        RemoteSlice {
            key: remote,
            offset: 2 << 20,
        },
        LocalSlice {
            key: local,
            offset: 0,
            len: 1 << 20,
        },
    )
    .wait()
    .unwrap();
    let on_disk = std::fs::read(_dir.path().join("epoch.data")).unwrap();
    assert_eq!(on_disk[..2 << 20], data[..2 << 20]);
    assert_eq!(on_disk[2 << 20..], fresh[..]);
}

#[test]
fn many_transfers_in_flight_each_land_in_place() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let data = pattern(8 << 20, 3);
    let (src_key, src) = buffer(&a, data.len());
    src.copy_in(0, &data).unwrap();
    let (dst_key, dst) = buffer(&b, data.len());
    let piece = 256 << 10;
    let completions: Vec<Completion> = (0..data.len() / piece)
        .rev()
        .map(|i| {
            let off = (i * piece) as u64;
            b.read(
                &a.local_addr(),
                RemoteSlice {
                    key: src_key,
                    offset: off,
                },
                LocalSlice {
                    key: dst_key,
                    offset: off,
                    len: piece as u64,
                },
            )
        })
        .collect();
    assert_eq!(b.wait_all(completions).unwrap(), data.len() as u64);
    assert!(contents(&dst) == data);
}

#[test]
fn out_of_bounds_and_unknown_keys_are_refused_and_the_connection_goes_on() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let (remote, _r) = buffer(&a, 8192);
    let (local, _l) = buffer(&b, 8192);
    let peer = a.local_addr();
    let read = |key, offset, len| {
        b.read(
            &peer,
            RemoteSlice { key, offset },
            LocalSlice {
                key: local,
                offset: 0,
                len,
            },
        )
        .wait()
    };
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
    let unknown = RegionKey::from_u128(42);
    let err = read(unknown, 0, 10).unwrap_err();
    assert!(
        matches!(err, TransportError::UnknownKey { key, .. } if key == unknown),
        "{err}"
    );
    a.deregister(remote).unwrap();
    let err = read(remote, 0, 10).unwrap_err();
    assert!(matches!(err, TransportError::UnknownKey { .. }), "{err}");
    assert!(matches!(
        a.deregister(remote),
        Err(TransportError::UnknownKey { .. })
    ));
    // The same endpoints still transfer.
    let (again, _r2) = buffer(&a, 4096);
    assert_eq!(read(again, 0, 4096).unwrap(), 4096);
    // A refused write is drained and leaves the connection usable.
    let err = b
        .write(
            &peer,
            RemoteSlice {
                key: again,
                offset: 4000,
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 8192,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::OutOfBounds { .. }), "{err}");
    assert_eq!(read(again, 0, 4096).unwrap(), 4096);
}

#[test]
fn read_only_regions_refuse_writes_and_stay_unchanged() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let data = pattern(8192, 1);
    let (_dir, file) = file_with(&data);
    let remote = a
        .register(Arc::new(
            Region::map_file(&file, 0, 8192, Access::Read).unwrap(),
        ))
        .unwrap();
    let (local, buf) = buffer(&b, 8192);
    buf.copy_in(0, &[0xAA; 8192]).unwrap();
    let err = b
        .write(
            &a.local_addr(),
            RemoteSlice {
                key: remote,
                offset: 0,
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 8192,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    assert_eq!(std::fs::read(_dir.path().join("epoch.data")).unwrap(), data);
}

#[test]
fn local_ranges_are_checked_before_anything_is_sent() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let (remote, _r) = buffer(&a, 4096);
    let ro = b
        .register(Arc::new(Region::buffer(4096, Access::Read).unwrap()))
        .unwrap();
    let (local, _l) = buffer(&b, 4096);
    let peer = a.local_addr();
    let rs = RemoteSlice {
        key: remote,
        offset: 0,
    };
    let err = b
        .read(
            &peer,
            rs,
            LocalSlice {
                key: ro,
                offset: 0,
                len: 10,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    let err = b
        .read(
            &peer,
            rs,
            LocalSlice {
                key: local,
                offset: 4000,
                len: 100,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::OutOfBounds { .. }), "{err}");
    let err = b
        .write(
            &peer,
            rs,
            LocalSlice {
                key: RegionKey::from_u128(1),
                offset: 0,
                len: 1,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::UnknownKey { .. }), "{err}");
}

/// Everything logged by any thread of this test binary.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&LOG).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

#[test]
fn a_peer_with_the_wrong_secret_is_rejected_and_others_are_still_served() {
    capture_logs();
    let a = endpoint("a", 1);
    let intruder = endpoint("intruder", 2);
    let friend = endpoint("friend", 1);
    let (remote, r) = buffer(&a, 4096);
    r.copy_in(0, &[7; 4096]).unwrap();
    let (ik, ibuf) = buffer(&intruder, 4096);
    let err = intruder
        .read(
            &a.local_addr(),
            RemoteSlice {
                key: remote,
                offset: 0,
            },
            LocalSlice {
                key: ik,
                offset: 0,
                len: 4096,
            },
        )
        .wait()
        .unwrap_err();
    assert!(matches!(err, TransportError::Handshake { .. }), "{err}");
    assert!(contents(&ibuf).iter().all(|&x| x == 0));
    // The server logged the rejection (before it closed the connection).
    let log = String::from_utf8_lossy(&lock(&LOG)).into_owned();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("rejected a transport connection")
            && l.contains("another job's secret")),
        "{log}"
    );
    let (fk, fbuf) = buffer(&friend, 4096);
    friend
        .read(
            &a.local_addr(),
            RemoteSlice {
                key: remote,
                offset: 0,
            },
            LocalSlice {
                key: fk,
                offset: 0,
                len: 4096,
            },
        )
        .wait()
        .unwrap();
    assert!(contents(&fbuf).iter().all(|&x| x == 7));
}

/// A fake peer that completes the real handshake, answers one read with a
/// promise of `promised` bytes, sends `sent`, then either dies (drops the
/// socket) or stalls (keeps it open, silent).
fn faulty_peer(promised: u64, sent: usize, stall: bool) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut session = Session::accept(
            &mut s,
            &secret(1),
            "client",
            "faulty",
            Limits { max_body: 4096 },
        )
        .unwrap();
        let _: Request = session.recv(&mut s).unwrap();
        session
            .send(&mut s, &Reply::Data { len: promised })
            .unwrap();
        s.write_all(&vec![1u8; sent]).unwrap();
        if stall {
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    addr
}

#[test]
fn a_peer_that_dies_mid_transfer_gives_an_error_naming_the_progress() {
    let b = endpoint("b", 1);
    let (local, _l) = buffer(&b, 1 << 20);
    let peer = faulty_peer(1 << 20, 300_000, false);
    let err = b
        .read(
            &peer,
            RemoteSlice {
                key: RegionKey::from_u128(9),
                offset: 0,
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 1 << 20,
            },
        )
        .wait()
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Data { moved: 300_000, len, .. } if *len == 1 << 20),
        "{err}"
    );
}

#[test]
fn a_peer_that_stalls_mid_transfer_times_out() {
    let opts = TcpOptions {
        timeout: Duration::from_millis(300),
        ..TcpOptions::default()
    };
    let b = TcpTransport::bind((Ipv4Addr::LOCALHOST, 0).into(), secret(1), opts).unwrap();
    let (local, _l) = buffer(&b, 1 << 20);
    let peer = faulty_peer(1 << 20, 1000, true);
    let err = b
        .read(
            &peer,
            RemoteSlice {
                key: RegionKey::from_u128(9),
                offset: 0,
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 1 << 20,
            },
        )
        .wait()
        .unwrap_err();
    match &err {
        TransportError::Data {
            moved: 1000,
            source,
            ..
        } => {
            assert!(
                matches!(
                    source.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{err}"
            )
        }
        _ => panic!("{err}"),
    }
}

#[test]
fn a_dead_endpoint_fails_transfers_instead_of_hanging() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let (remote, _r) = buffer(&a, 64 << 20);
    let (local, _l) = buffer(&b, 64 << 20);
    let peer = a.local_addr();
    // Warm a pooled connection, then kill the endpoint under it.
    b.read(
        &peer,
        RemoteSlice {
            key: remote,
            offset: 0,
        },
        LocalSlice {
            key: local,
            offset: 0,
            len: 4096,
        },
    )
    .wait()
    .unwrap();
    let inflight = b.read(
        &peer,
        RemoteSlice {
            key: remote,
            offset: 0,
        },
        LocalSlice {
            key: local,
            offset: 0,
            len: 64 << 20,
        },
    );
    a.shutdown();
    // The transfer in flight either finished before the cut or fails; it never hangs.
    let _ = inflight.wait();
    let err = b
        .read(
            &peer,
            RemoteSlice {
                key: remote,
                offset: 0,
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 4096,
            },
        )
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Connect { .. }
                | TransportError::Handshake { .. }
                | TransportError::Wire(_)
        ),
        "{err}"
    );
}

#[test]
fn garbage_on_the_port_is_rejected_and_the_server_keeps_serving() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    for junk in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0xff; 64][..], &[][..]] {
        let mut s = TcpStream::connect(a.local_addr()).unwrap();
        s.write_all(junk).unwrap();
    }
    // An authenticated client that sends a Message where a Request is expected.
    let mut s = TcpStream::connect(a.local_addr()).unwrap();
    let mut session = Session::connect(
        &mut s,
        &secret(1),
        "a",
        "odd",
        Role::Agent,
        Limits { max_body: 4096 },
    )
    .unwrap();
    session
        .send(
            &mut s,
            &Message::Commit {
                epoch: 1,
                step: 1,
                ranks: 1,
            },
        )
        .unwrap();
    let (remote, _r) = buffer(&a, 4096);
    let (local, _l) = buffer(&b, 4096);
    assert_eq!(
        b.read(
            &a.local_addr(),
            RemoteSlice {
                key: remote,
                offset: 0
            },
            LocalSlice {
                key: local,
                offset: 0,
                len: 4096
            }
        )
        .wait()
        .unwrap(),
        4096
    );
}
