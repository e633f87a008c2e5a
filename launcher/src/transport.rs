//! The bulk transport a job's agents replicate over, chosen at run time
//! (`pmrun --transport tcp|fabric[:PROVIDER]`).
//!
//! [`NodeTransport`] is one of the two backends behind the [`Transport`]
//! trait, so the agent's code is written once against the trait and the
//! choice is a value, not a type parameter threaded through every worker.
//! A job's agents all use the same backend; a peer address of the other
//! kind (an agent of another pmrun build or job) is refused per transfer.

use pm_core::transport::{
    Completion, LocalSlice, Region, RegionKey, RemoteSlice, TcpOptions, TcpTransport, Transport,
    TransportError,
};
use pm_core::wire::JobSecret;
use pm_transport_fabric::{FabricAddr, FabricError, FabricOptions, FabricTransport};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// What `--transport` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TransportChoice {
    /// Authenticated TCP connections (every machine).
    #[default]
    Tcp,
    /// libfabric RMA with the named provider (`verbs;ofi_rxm`, `cxi`,
    /// `efa`, `tcp;ofi_rxm`, `shm`, …), or the first one `fi_getinfo`
    /// offers with what the backend needs.
    Fabric { provider: Option<String> },
}

impl FromStr for TransportChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "tcp" => Ok(Self::Tcp),
            None if s == "fabric" => Ok(Self::Fabric { provider: None }),
            Some(("fabric", p)) if !p.is_empty() => Ok(Self::Fabric {
                provider: Some(p.to_owned()),
            }),
            _ => Err(format!(
                "{s:?} is not a transport: use tcp, fabric (the best libfabric provider offered) or fabric:PROVIDER (e.g. fabric:verbs;ofi_rxm; `fi_info -l` lists them)"
            )),
        }
    }
}

impl fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Fabric { provider: None } => f.write_str("fabric"),
            Self::Fabric { provider: Some(p) } => write!(f, "fabric:{p}"),
        }
    }
}

/// Why a node's transport could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot listen on {addr} for transfers: {source}")]
    Tcp {
        addr: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--transport {choice}: {source}")]
    Fabric {
        choice: TransportChoice,
        #[source]
        source: Box<FabricError>,
    },
}

/// A node's endpoint of the chosen backend.
pub enum NodeTransport {
    Tcp(TcpTransport),
    Fabric(FabricTransport),
}

/// Where a peer's endpoint is reached, of either backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePeer {
    Tcp(SocketAddr),
    Fabric(FabricAddr),
}

impl NodeTransport {
    /// Opens the endpoint `choice` names on the node's address `addr`
    /// (libfabric is asked for an endpoint on that address, which its IP
    /// providers honour and the others ignore).
    pub fn open(
        choice: &TransportChoice,
        addr: IpAddr,
        node: &str,
        secret: JobSecret,
    ) -> Result<Self, OpenError> {
        match choice {
            TransportChoice::Tcp => {
                let opts = TcpOptions {
                    node: node.to_owned(),
                    ..TcpOptions::default()
                };
                TcpTransport::bind(SocketAddr::new(addr, 0), secret, opts)
                    .map(Self::Tcp)
                    .map_err(|source| OpenError::Tcp { addr, source })
            }
            TransportChoice::Fabric { provider } => {
                let opts = FabricOptions {
                    node: node.to_owned(),
                    source: Some(addr.to_string()),
                    ..FabricOptions::default()
                };
                FabricTransport::open(provider.as_deref(), opts)
                    .map(Self::Fabric)
                    .map_err(|source| OpenError::Fabric {
                        choice: choice.clone(),
                        source: Box::new(source),
                    })
            }
        }
    }

    /// Where peers reach this endpoint.
    pub fn address(&self) -> NodePeer {
        match self {
            Self::Tcp(t) => NodePeer::Tcp(t.local_addr()),
            Self::Fabric(t) => NodePeer::Fabric(t.address()),
        }
    }

    /// Stops the endpoint as if the node had died (transfers to it fail).
    pub fn shutdown(&self) {
        match self {
            Self::Tcp(t) => t.shutdown(),
            Self::Fabric(t) => t.shutdown(),
        }
    }

    /// The backend and provider, as `ctl status` shows them: `tcp`, or
    /// `fabric:<provider>`.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(_) => "tcp".into(),
            Self::Fabric(t) => format!("fabric:{}", t.provider()),
        }
    }

    /// A peer address of the other backend: an error of its own, since it
    /// means the peer belongs to another configuration.
    fn mismatch(&self, peer: &NodePeer) -> Completion {
        Completion::ready(Err(TransportError::Protocol {
            peer: peer.to_string(),
            reason: format!(
                "it is an address of another transport than this node's {}; every agent of a job uses the same --transport",
                self.describe()
            ),
        }))
    }
}

impl Transport for NodeTransport {
    type Peer = NodePeer;

    fn register(&self, region: Arc<Region>) -> Result<RegionKey, TransportError> {
        match self {
            Self::Tcp(t) => t.register(region),
            Self::Fabric(t) => t.register(region),
        }
    }

    fn deregister(&self, key: RegionKey) -> Result<(), TransportError> {
        match self {
            Self::Tcp(t) => t.deregister(key),
            Self::Fabric(t) => t.deregister(key),
        }
    }

    fn read(&self, peer: &NodePeer, remote: RemoteSlice, local: LocalSlice) -> Completion {
        match (self, peer) {
            (Self::Tcp(t), NodePeer::Tcp(p)) => t.read(p, remote, local),
            (Self::Fabric(t), NodePeer::Fabric(p)) => t.read(p, remote, local),
            _ => self.mismatch(peer),
        }
    }

    fn write(&self, peer: &NodePeer, remote: RemoteSlice, local: LocalSlice) -> Completion {
        match (self, peer) {
            (Self::Tcp(t), NodePeer::Tcp(p)) => t.write(p, remote, local),
            (Self::Fabric(t), NodePeer::Fabric(p)) => t.write(p, remote, local),
            _ => self.mismatch(peer),
        }
    }
}

/// The prefix of a fabric peer's text form; a TCP peer is its socket
/// address, as before there was a choice.
const FABRIC_PREFIX: &str = "fabric:";

impl NodePeer {
    /// The form control messages carry (`ToPartner::Hello`): a TCP peer's
    /// socket address, or `fabric:` and the hex of its endpoint name.
    pub fn to_wire(&self) -> String {
        match self {
            Self::Tcp(a) => a.to_string(),
            Self::Fabric(a) => {
                let hex: String = a.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
                format!("{FABRIC_PREFIX}{hex}")
            }
        }
    }

    /// Reads [`NodePeer::to_wire`]'s form.
    pub fn from_wire(text: &str) -> Result<Self, BadPeer> {
        let bad = || BadPeer(text.chars().take(80).collect());
        match text.strip_prefix(FABRIC_PREFIX) {
            Some(hex) => {
                // An endpoint name is at most a few hundred bytes.
                if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 1024 {
                    return Err(bad());
                }
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        let pair = hex.get(i..i + 2).ok_or_else(bad)?;
                        u8::from_str_radix(pair, 16).map_err(|_| bad())
                    })
                    .collect::<Result<Vec<u8>, _>>()?;
                Ok(Self::Fabric(FabricAddr::from_bytes(bytes)))
            }
            None => text.parse().map(Self::Tcp).map_err(|_| bad()),
        }
    }
}

impl fmt::Display for NodePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Fabric(a) => a.fmt(f),
        }
    }
}

/// A transport address that is neither a socket address nor a fabric name.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a transport address (a socket address, or fabric: and hex digits)")]
pub struct BadPeer(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for text in ["tcp", "fabric", "fabric:tcp;ofi_rxm", "fabric:shm"] {
            let c: TransportChoice = text.parse().unwrap();
            assert_eq!(c.to_string(), text);
        }
        assert_eq!(
            "fabric:verbs;ofi_rxm".parse::<TransportChoice>().unwrap(),
            TransportChoice::Fabric {
                provider: Some("verbs;ofi_rxm".into())
            }
        );
        for bad in ["", "rdma", "fabric:", "tcp:x", "TCP"] {
            let e = bad.parse::<TransportChoice>().unwrap_err();
            assert!(e.contains("use tcp, fabric"), "{bad}: {e}");
        }
    }

    #[test]
    fn peers_cross_the_wire_unchanged() {
        let tcp = NodePeer::Tcp("127.0.0.2:4711".parse().unwrap());
        assert_eq!(tcp.to_wire(), "127.0.0.2:4711");
        let fabric = NodePeer::Fabric(FabricAddr::from_bytes(vec![2, 0, 0x12, 0x67, 127, 0, 0, 1]));
        assert_eq!(fabric.to_wire(), "fabric:020012677f000001");
        for p in [tcp, fabric] {
            assert_eq!(NodePeer::from_wire(&p.to_wire()).unwrap(), p);
        }
        for bad in [
            "",
            "fabric:",
            "fabric:0",
            "fabric:zz",
            "fabric:é1",
            "not an address",
        ] {
            assert!(NodePeer::from_wire(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_peer_of_the_other_backend_is_refused_per_transfer() {
        let t = NodeTransport::open(
            &TransportChoice::Tcp,
            "127.0.0.1".parse().unwrap(),
            "n0",
            JobSecret::from_bytes([7; 32]),
        )
        .unwrap();
        let region = Arc::new(Region::buffer(4096, pm_core::transport::Access::Read).unwrap());
        let key = t.register(region).unwrap();
        let peer = NodePeer::Fabric(FabricAddr::from_bytes(vec![1, 2, 3]));
        let remote = RemoteSlice { key, offset: 0 };
        let local = LocalSlice {
            key,
            offset: 0,
            len: 16,
        };
        let err = t.read(&peer, remote, local).wait().unwrap_err();
        assert!(err.to_string().contains("same --transport"), "{err}");
    }
}
