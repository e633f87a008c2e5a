//! What every decoder of bytes from outside the process must do with any
//! input: return a value or a typed error, never panic, hang or allocate
//! beyond its bound; and what it accepts must encode to bytes it decodes to
//! the same value again.
//!
//! Each check takes one input. The fuzz targets (`fuzz/`, run by
//! `cargo fuzz`) call them, and `core/tests/fuzz_corpus.rs` replays the seed
//! corpus and every input the fuzzers ever found (`fuzz/regressions/`)
//! through them in `make test`. Not an API for applications.

use crate::format::{self, Manifest};
use crate::gossip;
use crate::history;
use crate::proto;
use crate::store::CommitRecord;
use crate::transport::tcp;
use crate::wire::{self, JobSecret, Limits, Session};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Read, Write};
use std::path::Path;

/// A check: panics if the decoder misbehaves on the input.
pub type Check = fn(&[u8]);

/// Seed inputs, each with the name of the check it is for.
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every check, by the name of its fuzz target and corpus directory.
pub const CHECKS: &[(&str, Check)] = &[
    ("wire_stream", wire_stream),
    ("wire_hello", wire_hello),
    ("messages", messages),
    ("manifest", manifest),
    ("commit_record", commit_record),
    ("history", history),
    ("gossip", gossip),
];

/// The secret of the fuzzed handshakes: any fixed one will do.
const SECRET: [u8; 32] = [7; 32];

/// A connection whose peer sent `input` and reads whatever is written.
struct Peer<'a> {
    input: &'a [u8],
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn accept(input: &[u8]) -> Result<Session, wire::WireError> {
    let limits = Limits { max_body: 4096 };
    Session::accept(
        &mut Peer { input },
        &JobSecret::from_bytes(SECRET),
        "fuzz",
        "fuzz",
        limits,
    )
}

/// Raw bytes on an agent's port: without the secret no stream opens a
/// session (the header checks, the length bound and the MAC refuse it).
pub fn wire_stream(data: &[u8]) {
    assert!(
        accept(data).is_err(),
        "a stream without the secret opened a session"
    );
}

/// An authenticated client whose first frame carries `data`: the
/// handshake decodes it, and ends in an error since no `Confirm` follows.
pub fn wire_hello(data: &[u8]) {
    let frame = wire::sealed_first_frame(&JobSecret::from_bytes(SECRET), data);
    assert!(
        accept(&frame).is_err(),
        "a handshake without Confirm passed"
    );
}

/// Decodes `data` as `T`; if it decodes, its encoding must be a fixed point
/// (compared as bytes, since float fields may hold NaN).
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(value) = postcard::from_bytes::<T>(data) else {
        return;
    };
    let once = postcard::to_allocvec(&value).expect("a decoded message encodes");
    let again: T = postcard::from_bytes(&once).expect("an encoded message decodes");
    assert_eq!(postcard::to_allocvec(&again).unwrap(), once);
}

/// The body of an authenticated frame, as every link decodes it: the
/// first byte picks the message type, the rest is the body.
pub fn messages(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => round_trip::<proto::ToAgent>(body),
        1 => round_trip::<proto::FromAgent>(body),
        2 => round_trip::<proto::FromRank>(body),
        3 => round_trip::<proto::ToPartner>(body),
        4 => round_trip::<proto::FromPartner>(body),
        5 => round_trip::<proto::CtlRequest>(body),
        6 => round_trip::<proto::CtlReply>(body),
        7 => round_trip::<tcp::Request>(body),
        _ => round_trip::<tcp::Reply>(body),
    }
}

/// A manifest file, or a manifest body from a peer. With an odd first
/// byte the rest is wrapped in a valid header and checksum, so the body's
/// decoding and consistency checks are reached.
pub fn manifest(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode & 1 {
        0 => rest.to_vec(),
        _ => format::framed(rest),
    };
    let Ok(m) = Manifest::decode(&bytes, Path::new("fuzz")) else {
        return;
    };
    let again =
        Manifest::decode(&m.encode(), Path::new("fuzz")).expect("an encoded manifest decodes");
    assert_eq!(again, m);
}

/// A commit record file.
pub fn commit_record(data: &[u8]) {
    if let Ok(r) = CommitRecord::decode(data, Path::new("fuzz")) {
        assert_eq!(
            CommitRecord::decode(&r.encode(), Path::new("fuzz")).unwrap(),
            r
        );
    }
}

/// A history file; with an odd first byte the rest is wrapped in a valid
/// header and checksum.
pub fn history(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode & 1 {
        0 => rest.to_vec(),
        _ => history::file::frame(rest),
    };
    let Ok(h) = history::file::decode(&bytes, Path::new("fuzz")) else {
        return;
    };
    let once = history::file::encode(&h).expect("a decoded history encodes");
    let again =
        history::file::decode(&once, Path::new("fuzz")).expect("an encoded history decodes");
    assert_eq!(history::file::encode(&again).unwrap(), once);
}

/// A gossip datagram: bounded in size and records.
pub fn gossip(data: &[u8]) {
    let Ok(m) = gossip::Message::decode(data) else {
        return;
    };
    assert!(m.records.len() <= gossip::MAX_RECORDS);
    let once = m.encode().expect("a decoded gossip message encodes");
    assert!(once.len() <= gossip::MAX_MESSAGE_BYTES);
    let again = gossip::Message::decode(&once).expect("an encoded gossip message decodes");
    assert_eq!(again.encode().unwrap(), once);
}

/// Seed inputs for every check, by check name, made by the real code: a
/// recorded handshake and message, real messages of every link, files the
/// store and the history write into `scratch`, gossip rounds.
pub fn seeds(scratch: &Path) -> Result<Seeds, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let stream = recorded_connection()?;
    let first_len = u32::from_le_bytes(stream[8..12].try_into()?) as usize;
    out.push((
        "wire_hello",
        stream[wire::HEADER_LEN..wire::HEADER_LEN + first_len].to_vec(),
    ));
    out.push(("wire_stream", stream));

    for (kind, body) in message_seeds()? {
        out.push(("messages", [&[kind][..], &body].concat()));
    }

    let regions = [("grid", 3 << 20), ("step", 8)];
    let state: Vec<Vec<u8>> = regions
        .iter()
        .map(|&(_, len)| (0..len).map(|i: usize| (i % 251) as u8).collect())
        .collect();
    let refs: Vec<_> = regions
        .iter()
        .zip(&state)
        .map(|(&(name, _), bytes)| crate::RegionRef::new(name, bytes))
        .collect();
    let mut store = crate::Store::open(scratch, "fuzz-seed", 0, crate::StoreOptions::default())?;
    store.write(1, 10, &refs)?;
    let manifest = std::fs::read(store.manifest_path(1))?;
    out.push(("manifest", [&[0][..], &manifest].concat()));
    out.push((
        "manifest",
        [&[1][..], &manifest[16..manifest.len() - 8]].concat(),
    ));
    let m = Manifest::decode(&manifest, Path::new("seed"))?;
    out.push((
        "messages",
        [
            &[3][..],
            &postcard::to_allocvec(&proto::ToPartner::SnapshotReady {
                job: "fuzz-seed".into(),
                rank: 0,
                epoch: 1,
                manifest_bytes: m.encode(),
                data_keys: vec![(1, crate::transport::RegionKey::from_u128(5))],
                changed: vec![(0, 3 << 20)],
            })?,
        ]
        .concat(),
    ));

    let record = scratch.join("committed");
    crate::store::commit::write_record(
        &record,
        CommitRecord {
            epoch: 1,
            step: 10,
            ranks: 4,
        },
        false,
    )?;
    out.push(("commit_record", std::fs::read(&record)?));

    let mut h = history::History::new();
    let sig =
        history::AppSignature::new(0xfeed, &["heat".into(), "--rows".into(), "512".into()], 4);
    let run = history::RunRecord {
        weights: vec![0.5, 0.25, 1.0, 0.75],
        state_bytes: vec![1 << 20; 4],
        steps: 1000,
    };
    h.record(sig, run, &history::HistoryLimits::default());
    let file = scratch.join("history");
    history::save(&file, &h)?;
    let saved = std::fs::read(&file)?;
    out.push(("history", [&[0][..], &saved].concat()));
    out.push(("history", [&[1][..], &saved[28..]].concat()));

    use rand::SeedableRng;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut nodes: Vec<_> = (0..4)
        .map(|n| gossip::Gossip::new(n, 4, gossip::GossipConfig::default()))
        .collect();
    for round in 0..3 {
        for n in 0..nodes.len() {
            nodes[n].publish(1.0 + n as f32 * 0.5, 2.0);
            let r = nodes[n].tick(&mut rng);
            for &p in &r.peers {
                nodes[p as usize].receive(&r.message);
            }
            if round == 2 {
                out.push(("gossip", r.message.encode()?));
            }
        }
    }
    Ok(out)
}

/// The bytes a client sends on a real connection: its handshake and one
/// message.
fn recorded_connection() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    struct Recorder<S> {
        inner: S,
        sent: Vec<u8>,
    }
    impl<S: Read> Read for Recorder<S> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }
    impl<S: Write> Write for Recorder<S> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let (client, mut server) = std::os::unix::net::UnixStream::pair()?;
    let secret = JobSecret::from_bytes(SECRET);
    let serving = {
        let secret = secret.clone();
        std::thread::spawn(move || {
            let mut s =
                Session::accept(&mut server, &secret, "client", "node0", Limits::default())?;
            s.recv::<proto::ToAgent, _>(&mut server)
        })
    };
    let mut rec = Recorder {
        inner: client,
        sent: Vec::new(),
    };
    let mut s = Session::connect(
        &mut rec,
        &secret,
        "node0",
        "launcher",
        wire::Role::Launcher,
        Limits::default(),
    )?;
    s.send(
        &mut rec,
        &proto::ToAgent::Commit {
            epoch: 3,
            step: 30,
            ranks: 4,
        },
    )?;
    serving
        .join()
        .map_err(|_| "the recording server panicked")??;
    Ok(rec.sent)
}

/// Messages of every link, each with its `messages` kind byte.
fn message_seeds() -> Result<Vec<(u8, Vec<u8>)>, postcard::Error> {
    use crate::transport::RegionKey;
    let peer = |node| proto::Peer {
        node: proto::NodeId(node),
        control: format!("127.0.0.{}:7000", node + 2).into(),
    };
    let load = proto::RankLoad {
        rank: 1,
        step: 120,
        window_steps: 10,
        compute_s: 0.5,
        compute_sq_s2: 0.026,
        cpu_s: 0.49,
        io_wait_s: 0.0,
        state_bytes: 1 << 20,
        total_steps: Some(1000),
    };
    Ok(vec![
        (
            0,
            encoded(&proto::ToAgent::Placement {
                generation: 2,
                local: vec![0, 1],
                partners: vec![(0, vec![proto::NodeId(1)]), (1, vec![proto::NodeId(2)])],
                peers: vec![peer(0), peer(1), peer(2)],
            })?,
        ),
        (0, encoded(&proto::ToAgent::SetCpus { cpus: 1.5 })?),
        (
            1,
            encoded(&proto::FromAgent::Published {
                rank: 1,
                epoch: 4,
                step: 40,
                state_bytes: 1 << 20,
                written_bytes: 1 << 16,
            })?,
        ),
        (
            1,
            encoded(&proto::FromAgent::RankLoad {
                load: load.clone(),
                share: 0.5,
            })?,
        ),
        (2, encoded(&proto::FromRank::Hello { rank: 1, pid: 4242 })?),
        (2, encoded(&proto::FromRank::Load(load))?),
        (
            3,
            encoded(&proto::ToPartner::Hello {
                node: proto::NodeId(1),
                transport: "127.0.0.3:7001".into(),
            })?,
        ),
        (
            4,
            encoded(&proto::FromPartner::Refused {
                reason: "no space left".into(),
            })?,
        ),
        (
            5,
            encoded(&proto::CtlRequest::Drain {
                node: "node2".into(),
            })?,
        ),
        (
            6,
            encoded(&proto::CtlReply::Committed { epoch: 4, step: 40 })?,
        ),
        (
            7,
            encoded(&tcp::Request::Read {
                key: RegionKey::from_u128(9),
                offset: 4096,
                len: 1 << 20,
            })?,
        ),
        (
            8,
            encoded(&tcp::Reply::Refused(tcp::Refusal::OutOfBounds {
                region_len: 4096,
            }))?,
        ),
    ])
}

fn encoded<T: Serialize>(message: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(message)
}
