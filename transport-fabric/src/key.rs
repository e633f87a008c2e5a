//! What a [`RegionKey`] of this backend carries.
//!
//! An initiator of a one-sided transfer needs, besides the peer's address,
//! the provider's key of the remote registration, the address to name its
//! first byte by (the region's virtual address under `FI_MR_VIRT_ADDR`,
//! else 0: offsets), its length (to refuse out-of-bounds ranges before
//! anything is sent, with the same error as TCP) and whether it accepts
//! writes. They are packed into the 32 bytes of a `RegionKey`, which the
//! owner hands out only inside authenticated control messages. The last
//! bytes are random, so two registrations never share a `RegionKey` even
//! when the provider reuses its key.
//!
//! Layout (little-endian): 0..8 provider key, 8..16 remote address of
//! byte 0, 16..24 length, 24 flags (bit 0: writable), 25..32 random.

use pm_core::transport::RegionKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FabricKey {
    pub provider_key: u64,
    pub remote_addr: u64,
    pub len: u64,
    pub writable: bool,
    pub tag: [u8; 7],
}

const WRITABLE: u8 = 1;

impl FabricKey {
    pub fn encode(&self) -> RegionKey {
        let mut b = [0u8; RegionKey::LEN];
        b[0..8].copy_from_slice(&self.provider_key.to_le_bytes());
        b[8..16].copy_from_slice(&self.remote_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24] = if self.writable { WRITABLE } else { 0 };
        b[25..32].copy_from_slice(&self.tag);
        RegionKey::from_bytes(b)
    }

    /// Any 32 bytes decode: a made-up key names some provider key, which
    /// the provider then refuses.
    pub fn decode(key: RegionKey) -> Self {
        let b = key.to_bytes();
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let mut tag = [0u8; 7];
        tag.copy_from_slice(&b[25..32]);
        Self {
            provider_key: word(0),
            remote_addr: word(8),
            len: word(16),
            writable: b[24] & WRITABLE != 0,
            tag,
        }
    }

    /// The remote address of `offset..offset + len`, if it lies inside.
    pub fn address_of(&self, offset: u64, len: u64) -> Option<u64> {
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| self.remote_addr.wrapping_add(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bound_their_ranges() {
        let k = FabricKey {
            provider_key: 0xdead_beef_0123_4567,
            remote_addr: 0x7f00_0000_1000,
            len: 8192,
            writable: true,
            tag: [1, 2, 3, 4, 5, 6, 7],
        };
        assert_eq!(FabricKey::decode(k.encode()), k);
        let ro = FabricKey {
            writable: false,
            ..k
        };
        assert_eq!(FabricKey::decode(ro.encode()), ro);
        assert_eq!(k.address_of(100, 8092), Some(0x7f00_0000_1000 + 100));
        assert_eq!(k.address_of(8192, 0), Some(0x7f00_0000_1000 + 8192));
        assert_eq!(k.address_of(8000, 200), None);
        assert_eq!(k.address_of(u64::MAX - 10, 100), None);
    }
}
