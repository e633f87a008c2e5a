//! A peer's address: the bytes of `fi_getname`, exchanged inside
//! authenticated control messages and resolved with `fi_av_insert`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// The endpoint name of a peer, as its provider formats it (a
/// `sockaddr_in` for `tcp;ofi_rxm`, a string for `shm`).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FabricAddr(Vec<u8>);

impl FabricAddr {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name of a `shm` peer's region: `<pid>:<n>:<m>` in its address
    /// `fi_shm://<pid>:<n>:<m>`, mapped from `/dev/shm/<pid>:<n>:<m>`.
    pub fn shm_region(&self) -> Option<&str> {
        let text = self.0.split(|&c| c == 0).next()?;
        let name = std::str::from_utf8(text.strip_prefix(b"fi_shm://")?).ok()?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// The process id in a `shm` peer's address.
    pub fn shm_pid(&self) -> Option<u32> {
        self.shm_region()?.split(':').next()?.parse().ok()
    }

    /// The socket address inside a `sockaddr_in`/`sockaddr_in6` name.
    fn socket_addr(&self) -> Option<SocketAddr> {
        let b = &self.0;
        let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
        let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
        match i32::from(family) {
            libc_af::INET if b.len() >= 8 => Some(SocketAddr::from((
                Ipv4Addr::new(b[4], b[5], b[6], b[7]),
                port,
            ))),
            libc_af::INET6 if b.len() >= 24 => {
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&b[8..24]);
                Some(SocketAddr::from((Ipv6Addr::from(ip), port)))
            }
            _ => None,
        }
    }
}

/// Address families as Linux numbers them (sockaddr's first field).
mod libc_af {
    pub const INET: i32 = 2;
    pub const INET6: i32 = 10;
}

impl fmt::Display for FabricAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(sa) = self.socket_addr() {
            return write!(f, "{sa}");
        }
        // shm names are strings ("fi_shm://pid:..."), NUL-padded.
        let text = self.0.split(|&c| c == 0).next().unwrap_or_default();
        if !text.is_empty() && text.iter().all(|c| c.is_ascii_graphic()) {
            return f.write_str(&String::from_utf8_lossy(text));
        }
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for FabricAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FabricAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_as_people_read_them() {
        let mut sin = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
        sin.extend([0; 8]);
        assert_eq!(FabricAddr::from_bytes(sin).to_string(), "127.0.0.1:8080");
        let mut shm = b"fi_shm://1234:0".to_vec();
        shm.extend([0; 4]);
        assert_eq!(FabricAddr::from_bytes(shm).to_string(), "fi_shm://1234:0");
        assert_eq!(FabricAddr::from_bytes(vec![0xff, 0x01]).to_string(), "ff01");
    }

    #[test]
    fn shm_names_carry_the_peers_pid_and_region() {
        let mut shm = b"fi_shm://1234:7:0".to_vec();
        shm.extend([0; 4]);
        let shm = FabricAddr::from_bytes(shm);
        assert_eq!(shm.shm_pid(), Some(1234));
        assert_eq!(shm.shm_region(), Some("1234:7:0"));
        let mut sin = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
        sin.extend([0; 8]);
        assert_eq!(FabricAddr::from_bytes(sin).shm_pid(), None);
        assert_eq!(
            FabricAddr::from_bytes(b"fi_shm://x:0".to_vec()).shm_pid(),
            None
        );
        assert_eq!(
            FabricAddr::from_bytes(b"fi_shm://../x".to_vec()).shm_region(),
            None
        );
        assert_eq!(FabricAddr::from_bytes(Vec::new()).shm_pid(), None);
    }
}
