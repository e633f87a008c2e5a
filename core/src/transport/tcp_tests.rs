//! The TCP backend over real loopback sockets and real files: the generic
//! transport suite, then what only TCP has (handshakes, framing, timeouts).

use super::*;
use crate::proto::ToAgent as Message;
use crate::transport::suite::Harness;
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

struct Tcp;

impl Harness for Tcp {
    type T = TcpTransport;
    fn endpoint(&self, node: &str) -> TcpTransport {
        endpoint(node, 1)
    }
    fn peer(&self, t: &TcpTransport) -> SocketAddr {
        t.local_addr()
    }
    fn shutdown(&self, t: &TcpTransport) {
        t.shutdown();
    }
}

crate::transport_suite!(Some(Tcp));

fn buffer(t: &TcpTransport, len: usize) -> (RegionKey, Arc<Region>) {
    let r = Arc::new(Region::buffer(len, Access::ReadWrite).unwrap());
    (t.register(r.clone()).unwrap(), r)
}

fn contents(r: &Region) -> Vec<u8> {
    let mut v = vec![0; r.len() as usize];
    r.copy_out(0, &mut v).unwrap();
    v
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
fn a_dead_endpoint_refuses_connections() {
    let (a, b) = (endpoint("a", 1), endpoint("b", 1));
    let (remote, _r) = buffer(&a, 4096);
    let (local, _l) = buffer(&b, 4096);
    let peer = a.local_addr();
    a.shutdown();
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
