//! A fast hasher for the code cache's maps (keys are guest addresses and mode facts the guest
//! cannot choose adversarially against us to any benefit: a collision only costs it time).
//! std's SipHash showed as ~4% of a Linux boot under the BT in dispatch's map lookups.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing in the style of rustc's FxHasher.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

/// A large odd constant with well-spread bits (2^64 / φ).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl FastHasher {
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // hashbrown takes the top 7 bits as the tag and the low bits as the index: fold the
        // high half down so both see every input bit.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn hash<T: Hash>(t: &T) -> u64 {
        let mut h = FastHasher::default();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn nearby_keys_spread() {
        // Page-aligned addresses (the common case) must not collide in the low bits.
        let mut low: Vec<u64> = (0..4096u64).map(|p| hash(&(p << 12)) & 0xfff).collect();
        low.sort_unstable();
        low.dedup();
        assert!(low.len() > 2500, "{} distinct of 4096", low.len());
        assert_ne!(hash(&(1u64, 2u32)), hash(&(2u64, 1u32)));
    }
}
