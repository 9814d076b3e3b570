//! The jump cache: a direct-mapped table from a block's start (RIP and the mode facts of its
//! [`BlockKey`]) to its code-cache slot and physical key, consulted when the predecessor's
//! successor memo misses — returns, indirect calls and jumps, the first entry after the
//! monitor — before translating the fetch address and hashing into the code cache's map.
//!
//! An entry filled in the current translation epoch vouches for the linear → physical mapping
//! of the fetch address, as a successor memo does; an entry from an older epoch (a TLB flush or
//! CR3 write since) still names the right slot if the fetch address translates to the same
//! physical address, which the engine checks through the TLB — far cheaper than hashing into
//! the code cache, and page-table churn (munmap, fork, context switches) no longer empties it.
//! Invalidation and flushes (slots may be reused) clear it, in O(1): entries carry the
//! generation they were filled in. (QEMU keeps the same structure per CPU, `tb_jmp_cache`.)

use crate::jit::BlockKey;

/// Entries in the table (a power of two; 4096 × 48 bytes ≈ 192 KiB).
const ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: BlockKey,
    /// The generation it was filled in (0: never).
    generation: u64,
    slot: u32,
    phys: u64,
    /// The translation epoch it was filled in.
    epoch: u64,
}

/// Block start → (slot, physical address of its first byte), for the current generation.
pub(crate) struct JumpCache {
    entries: Box<[Entry]>,
    generation: u64,
}

impl JumpCache {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        let empty = Entry {
            key: BlockKey {
                start: 0,
                code_bits: 0,
                stack_bits: 0,
                cpl: 0,
                alignment_checks: false,
            },
            generation: 0,
            slot: 0,
            phys: 0,
            epoch: 0,
        };
        JumpCache {
            entries: vec![empty; ENTRIES].into_boxed_slice(),
            generation: 1,
        }
    }

    fn index(start: u64) -> usize {
        ((start ^ (start >> 12) ^ (start >> 24)) as usize) & (ENTRIES - 1)
    }

    /// The slot, physical address and translation epoch recorded for `key` in this generation.
    pub(crate) fn get(&self, key: &BlockKey) -> Option<(u32, u64, u64)> {
        let e = self.entries.get(Self::index(key.start))?;
        (e.generation == self.generation && e.key == *key).then_some((e.slot, e.phys, e.epoch))
    }

    /// Records that `key` runs the block in `slot`, whose first byte is at `phys`, as seen in
    /// translation epoch `epoch`.
    pub(crate) fn insert(&mut self, key: BlockKey, slot: u32, phys: u64, epoch: u64) {
        let generation = self.generation;
        if let Some(e) = self.entries.get_mut(Self::index(key.start)) {
            *e = Entry {
                key,
                generation,
                slot,
                phys,
                epoch,
            };
        }
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(start: u64, cpl: u8) -> BlockKey {
        BlockKey {
            start,
            code_bits: 64,
            stack_bits: 64,
            cpl,
            alignment_checks: false,
        }
    }

    #[test]
    fn hits_only_the_same_key_in_the_same_generation() {
        let mut c = JumpCache::new();
        assert_eq!(c.get(&key(0x1000, 0)), None);
        c.insert(key(0x1000, 0), 7, 0x5000, 3);
        assert_eq!(c.get(&key(0x1000, 0)), Some((7, 0x5000, 3)));
        assert_eq!(c.get(&key(0x1000, 3)), None, "other CPL");
        // A colliding start replaces the entry (direct-mapped).
        let other = (0x1000..)
            .step_by(0x10)
            .find(|&s| s != 0x1000 && JumpCache::index(s) == JumpCache::index(0x1000))
            .unwrap();
        c.insert(key(other, 0), 9, 0x6000, 3);
        assert_eq!(c.get(&key(0x1000, 0)), None);
        assert_eq!(c.get(&key(other, 0)), Some((9, 0x6000, 3)));
        c.clear();
        assert_eq!(c.get(&key(other, 0)), None, "cleared");
        c.insert(key(other, 0), 1, 0x7000, 4);
        assert_eq!(c.get(&key(other, 0)), Some((1, 0x7000, 4)));
    }
}
