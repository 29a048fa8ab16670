//! A compact hash index from 32-bit key hashes to slot numbers (for `limiter_registry`).
//!
//! One `u64` per bucket holds the key's 32-bit hash and its slot number, so a
//! lookup reads one bucket (usually one cache line) before the slot itself,
//! and growing the index never touches the slots. Linear probing, at most
//! half full, with backward-shift deletion (no tombstones).
//!
//! Growing is incremental: a full index allocates one twice the size (zeroed
//! pages from the allocator, not written here) and every later insert moves at
//! most `MIGRATE_STEP` buckets of the old one into it, so no single call (and
//! no caller holding the registry's lock) rehashes the whole index. While
//! both exist, a key is in exactly one of them and a lookup reads both.
//!
//! The move starts just after an empty bucket of the old index (`start - 1`)
//! and walks forward from there, emptying what it moved. A probe in the old
//! index that begins in the moved part jumps to the first bucket not yet
//! moved: the keys whose ideal bucket was moved and which are still there sit
//! in the run that begins at that bucket. The empty bucket before `start` is
//! moved last and stays empty until then (the old index takes no inserts),
//! so every probe ends before it reaches the moved part again.

/// Bucket layout: hash in the high half, `slot + 1` in the low half; 0 is empty.
const EMPTY: u64 = 0;
const MIN_BUCKETS: usize = 16;
/// Old buckets moved per insert while growing. From the moment the index
/// grows (half full) to the moment the new one would be half full, there are
/// as many inserts as half the old buckets, so two per insert would do.
const MIGRATE_STEP: usize = 8;

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

/// The index being moved out of while the index grows.
#[derive(Debug, Default)]
struct Old {
    buckets: Vec<u64>,
    /// The first bucket moved (the one after an empty bucket).
    start: usize,
    /// How many buckets have been moved, from `start` on (wrapping).
    moved: usize,
}

impl Old {
    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Where a probe for a key whose ideal bucket is `pos` begins.
    #[inline]
    fn probe_start(&self, pos: usize) -> usize {
        let mask = self.mask();
        if pos.wrapping_sub(self.start) & mask < self.moved {
            (self.start + self.moved) & mask
        } else {
            pos
        }
    }
}

#[derive(Debug, Default)]
pub struct SlotIndex {
    buckets: Vec<u64>,
    /// Non-empty only while growing.
    old: Old,
    /// The old index once every bucket has moved, for the caller to free
    /// (`take_retired`): freeing megabytes of pages is best done unlocked.
    retired: Option<Vec<u64>>,
    len: usize,
}

/// Finds the bucket of `hash32` for which `is_key(slot)` holds, probing from `pos`.
#[inline]
fn probe(
    buckets: &[u64],
    mut pos: usize,
    hash32: u32,
    mut is_key: impl FnMut(u32) -> bool,
) -> Option<usize> {
    let mask = buckets.len() - 1;
    loop {
        let bucket = buckets[pos];
        if bucket == EMPTY {
            return None;
        }
        if hash_of(bucket) == hash32 && is_key(slot_of(bucket)) {
            return Some(pos);
        }
        pos = (pos + 1) & mask;
    }
}

/// Empties `hole` (a member of a run) by backward shift: later members of
/// the run move into the hole when their ideal position lies at or before it.
fn remove_at(buckets: &mut [u64], mut hole: usize) {
    let mask = buckets.len() - 1;
    let mut next = hole;
    loop {
        next = (next + 1) & mask;
        let bucket = buckets[next];
        if bucket == EMPTY {
            break;
        }
        let ideal = hash_of(bucket) as usize & mask;
        if next.wrapping_sub(ideal) & mask >= next.wrapping_sub(hole) & mask {
            buckets[hole] = bucket;
            hole = next;
        }
    }
    buckets[hole] = EMPTY;
}

fn place(buckets: &mut [u64], bucket: u64) {
    let mask = buckets.len() - 1;
    let mut pos = hash_of(bucket) as usize & mask;
    while buckets[pos] != EMPTY {
        pos = (pos + 1) & mask;
    }
    buckets[pos] = bucket;
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

    /// Bytes reserved for buckets (both indexes while growing).
    #[must_use]
    pub fn capacity_bytes(&self) -> usize {
        (self.buckets.capacity() + self.old.buckets.capacity()) * std::mem::size_of::<u64>()
    }

    /// The old index, empty, once growing is done (to free outside any lock).
    #[inline]
    pub fn take_retired(&mut self) -> Option<Vec<u64>> {
        self.retired.take()
    }

    /// Whether the index is still moving buckets out of a smaller one.
    #[must_use]
    pub fn is_growing(&self) -> bool {
        !self.old.buckets.is_empty()
    }

    /// The slot whose hash is `hash32` and for which `is_key(slot)` holds.
    #[inline]
    pub fn find(&self, hash32: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let pos = hash32 as usize & (self.buckets.len() - 1);
        if let Some(found) = probe(&self.buckets, pos, hash32, &mut is_key) {
            return Some(slot_of(self.buckets[found]));
        }
        if self.old.buckets.is_empty() {
            return None;
        }
        let old = &self.old;
        let pos = old.probe_start(hash32 as usize & old.mask());
        probe(&old.buckets, pos, hash32, is_key).map(|found| slot_of(old.buckets[found]))
    }

    /// Adds `slot` under `hash32` (the caller knows the key is not there yet).
    pub fn insert(&mut self, hash32: u32, slot: u32) {
        if self.is_growing() {
            self.migrate(MIGRATE_STEP);
        }
        if (self.len + 1) * 2 > self.buckets.len() {
            // Never while growing (see MIGRATE_STEP); finish the move if it were.
            self.migrate(usize::MAX);
            self.grow();
        }
        place(&mut self.buckets, pack(hash32, slot));
        self.len += 1;
    }

    /// Starts growing: a twice larger index; the old one is moved by `migrate`.
    fn grow(&mut self) {
        let size = (self.buckets.len() * 2).max(MIN_BUCKETS);
        let old = std::mem::replace(&mut self.buckets, vec![EMPTY; size]);
        crate::huge_pages::advise(&self.buckets);
        if self.len == 0 {
            return;
        }
        // At most half full: an empty bucket is near (expected O(1) probes).
        let mask = old.len() - 1;
        let empty = old
            .iter()
            .position(|&b| b == EMPTY)
            .expect("the index is at most half full");
        self.old = Old {
            buckets: old,
            start: (empty + 1) & mask,
            moved: 0,
        };
    }

    /// Moves up to `count` buckets of the old index into the new one.
    fn migrate(&mut self, count: usize) {
        let old = &mut self.old;
        let size = old.buckets.len();
        let mut left = count;
        while old.moved < size && left > 0 {
            let pos = (old.start + old.moved) & (size - 1);
            let bucket = std::mem::replace(&mut old.buckets[pos], EMPTY);
            if bucket != EMPTY {
                place(&mut self.buckets, bucket);
            }
            old.moved += 1;
            left -= 1;
        }
        if old.moved == size && size > 0 {
            self.retired = Some(std::mem::take(&mut self.old).buckets);
        }
    }

    /// Removes `slot` (filed under `hash32`); whether it was there.
    pub fn remove(&mut self, hash32: u32, slot: u32) -> bool {
        if self.buckets.is_empty() {
            return false;
        }
        let pos = hash32 as usize & (self.buckets.len() - 1);
        if let Some(found) = probe(&self.buckets, pos, hash32, |s| s == slot) {
            remove_at(&mut self.buckets, found);
            self.len -= 1;
            return true;
        }
        if self.old.buckets.is_empty() {
            return false;
        }
        let old = &mut self.old;
        let pos = old.probe_start(hash32 as usize & old.mask());
        let Some(found) = probe(&old.buckets, pos, hash32, |s| s == slot) else {
            return false;
        };
        // The shift stops at the empty bucket before `start`: it never
        // reaches the moved part, and the bucket it empties is not moved yet.
        remove_at(&mut old.buckets, found);
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn check_all(index: &SlotIndex, model: &HashMap<u32, u32>) {
        for (&slot, &hash32) in model {
            assert_eq!(index.find(hash32, |s| s == slot), Some(slot));
        }
    }

    #[test]
    fn matches_a_hash_map_under_inserts_and_removes() {
        // Few distinct hashes force long runs, collisions and wrap-around;
        // every growth is checked while its buckets are being moved.
        let mut index = SlotIndex::default();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut seed = 7u64;
        let mut seen_growing = 0;
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
            if index.is_growing() {
                seen_growing += 1;
                check_all(&index, &model);
            }
        }
        assert!(seen_growing > 10);
        check_all(&index, &model);
        assert_eq!(index.find(3, |s| s == 100_000), None);
        assert!(!index.remove(3, 100_000));
    }

    #[test]
    fn grows_incrementally_with_spread_hashes() {
        let mut index = SlotIndex::default();
        let mut model = HashMap::new();
        let mut retired = 0;
        for slot in 0..100_000u32 {
            let hash32 = slot.wrapping_mul(2_654_435_761);
            index.insert(hash32, slot);
            if let Some(old) = index.take_retired() {
                // Handed over once every bucket has moved: empty, half the size.
                assert!(old.iter().all(|&b| b == EMPTY));
                assert!(!index.is_growing());
                retired += 1;
            }
            model.insert(slot, hash32);
            if slot % 7 == 3 {
                let gone = slot - 3;
                assert!(index.remove(model[&gone], gone));
                model.remove(&gone);
            }
            if index.is_growing() && slot % 101 == 0 {
                check_all(&index, &model);
            }
        }
        check_all(&index, &model);
        assert_eq!(index.len(), model.len());
        assert!(retired >= 10);
    }

    #[test]
    fn folds_both_halves() {
        assert_eq!(fold(0x0000_0001_0000_0000), 1);
        assert_eq!(fold(0x0000_0000_0000_0002), 2);
    }
}
