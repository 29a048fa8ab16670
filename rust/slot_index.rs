//! A compact hash index from 32-bit key hashes to slot numbers (for `limiter_registry`).
//!
//! One `u64` per bucket holds the key's 32-bit hash and its slot number, so a
//! lookup reads one bucket (usually one cache line) before the slot itself,
//! and growing the index never touches the slots. Linear probing, at most
//! half full, with backward-shift deletion (no tombstones).

/// Bucket layout: hash in the high half, `slot + 1` in the low half; 0 is empty.
const EMPTY: u64 = 0;
const MIN_BUCKETS: usize = 16;

/// Folds a 64-bit hash into the 32 bits the index keeps.
#[inline]
#[must_use]
pub fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

#[inline]
fn pack(hash32: u32, slot: u32) -> u64 {
    (u64::from(hash32) << 32) | (u64::from(slot) + 1)
}

#[inline]
fn hash_of(bucket: u64) -> u32 {
    (bucket >> 32) as u32
}

#[inline]
fn slot_of(bucket: u64) -> u32 {
    (bucket as u32).wrapping_sub(1)
}

#[derive(Debug, Default)]
pub struct SlotIndex {
    buckets: Vec<u64>,
    len: usize,
}

impl SlotIndex {
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// The slot whose hash is `hash32` and for which `is_key(slot)` holds.
    #[inline]
    pub fn find(&self, hash32: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut pos = hash32 as usize & mask;
        loop {
            let bucket = self.buckets[pos];
            if bucket == EMPTY {
                return None;
            }
            if hash_of(bucket) == hash32 && is_key(slot_of(bucket)) {
                return Some(slot_of(bucket));
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds `slot` under `hash32` (the caller knows the key is not there yet).
    pub fn insert(&mut self, hash32: u32, slot: u32) {
        if (self.len + 1) * 2 > self.buckets.len() {
            self.grow();
        }
        self.place(pack(hash32, slot));
        self.len += 1;
    }

    fn place(&mut self, bucket: u64) {
        let mask = self.mask();
        let mut pos = hash_of(bucket) as usize & mask;
        while self.buckets[pos] != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.buckets[pos] = bucket;
    }

    fn grow(&mut self) {
        let size = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        crate::huge_pages::advise(&self.buckets);
        for bucket in old.into_iter().filter(|&b| b != EMPTY) {
            self.place(bucket);
        }
    }

    /// Removes `slot` (filed under `hash32`); whether it was there.
    pub fn remove(&mut self, hash32: u32, slot: u32) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let mask = self.mask();
        let target = pack(hash32, slot);
        let mut hole = hash32 as usize & mask;
        loop {
            match self.buckets[hole] {
                EMPTY => return false,
                bucket if bucket == target => break,
                _ => hole = (hole + 1) & mask,
            }
        }
        // Backward shift: pull later members of the run into the hole when
        // their ideal position lies at or before it.
        let mut next = hole;
        loop {
            next = (next + 1) & mask;
            let bucket = self.buckets[next];
            if bucket == EMPTY {
                break;
            }
            let ideal = hash_of(bucket) as usize & mask;
            if next.wrapping_sub(ideal) & mask >= next.wrapping_sub(hole) & mask {
                self.buckets[hole] = bucket;
                hole = next;
            }
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn matches_a_hash_map_under_inserts_and_removes() {
        // Few distinct hashes force long runs, collisions and wrap-around.
        let mut index = SlotIndex::default();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut seed = 7u64;
        for step in 0..20_000u32 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let slot = (seed >> 33) as u32 % 500;
            let hash32 = slot.wrapping_mul(2_654_435_761) % 64;
            if let std::collections::hash_map::Entry::Vacant(entry) = model.entry(slot) {
                index.insert(hash32, slot);
                entry.insert(hash32);
            } else if step % 3 != 0 {
                assert!(index.remove(hash32, slot));
                model.remove(&slot);
            }
            assert_eq!(index.len(), model.len());
        }
        for (&slot, &hash32) in &model {
            assert_eq!(index.find(hash32, |s| s == slot), Some(slot));
        }
        assert_eq!(index.find(3, |s| s == 100_000), None);
        assert!(!index.remove(3, 100_000));
    }

    #[test]
    fn folds_both_halves() {
        assert_eq!(fold(0x0000_0001_0000_0000), 1);
        assert_eq!(fold(0x0000_0000_0000_0002), 2);
    }
}
