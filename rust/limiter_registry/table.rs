//! The table: one slot per key in segments that never move, found through the
//! compact index (`slot_index`), the recency list of default-configuration
//! keys, eviction when full (`OnFull`) and incremental growth, all under one
//! spin lock (`Registry`). Free of `PyO3` types.

use super::slot_index::{fold, SlotIndex};
use crate::token_bucket::Limits;
use spin::mutex::{SpinMutex, SpinMutexGuard};
use std::collections::HashMap;

/// Key bytes stored inline (most keys are short ids); longer ones go to the heap.
const INLINE: usize = 22;

#[derive(Debug)]
enum Key {
    Vacant,
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Key {
    fn new(key: &str) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key.as_bytes());
            Self::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Self::Heap(key.into())
        }
    }

    fn is(&self, key: &str) -> bool {
        match self {
            Self::Vacant => false,
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)] == key.as_bytes(),
            Self::Heap(stored) => &**stored == key,
        }
    }
}

/// Configuration 0 is the registry's default; others were given by `set`.
const DEFAULT_CONFIG: u32 = 0;

/// No slot (the end of the recency list).
const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    hash: u64,
    key: Key,
    tat: u64,
    config: u32,
    /// Bumped whenever the slot is vacated, so stale handles notice.
    generation: u32,
    /// The recency list (keys with the default configuration only).
    newer: u32,
    older: u32,
}

/// Where a key lives: its slot and the slot's generation when it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub slot: u32,
    pub generation: u32,
}

impl Location {
    /// Packed into one word (for an atomic cache in a handle).
    #[must_use]
    pub fn pack(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.generation)
    }

    #[must_use]
    pub fn unpack(word: u64) -> Self {
        Self {
            slot: (word >> 32) as u32,
            generation: word as u32,
        }
    }
}

/// The registry is full and no key can be evicted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// Nanoseconds until a key becomes evictable.
    pub retry_after_ns: u64,
}

/// What a full registry does with a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Forget the least recently used key (of the default configuration).
    Evict,
    /// Forget keys idle for `idle_ttl`; if there are none, refuse the new key.
    Reject,
}

/// Decisions over all keys, counted under the table's lock (no atomic needed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Decisions {
    pub granted: u64,
    pub rejected: u64,
    /// Nanoseconds of waiting handed out by granted reservations.
    pub waited_ns: u64,
}

impl Decisions {
    /// Counts one decision; returns it.
    #[inline]
    pub fn count(&mut self, granted: bool) -> bool {
        if granted {
            self.granted += 1;
        } else {
            self.rejected += 1;
        }
        granted
    }

    /// Counts the wait a granted reservation handed out.
    #[inline]
    pub fn waited(&mut self, wait_ns: u64) {
        self.waited_ns = self.waited_ns.saturating_add(wait_ns);
    }
}

/// A key's configuration: its limits and a payload (the Python config object).
struct Config<C> {
    limits: Limits,
    payload: C,
}

/// Slots in segments that never move: segment 0 holds `FIRST_SEGMENT` slots
/// and segment k > 0 holds `FIRST_SEGMENT << (k - 1)`, so slot numbers below
/// `FIRST_SEGMENT << k` lie in segments 0..=k and growing allocates one new
/// segment (its pages are written only as slots are added).
const FIRST_SEGMENT: u32 = 64;
const FIRST_SEGMENT_BITS: u32 = FIRST_SEGMENT.trailing_zeros();

#[derive(Default)]
struct Slots {
    segments: Vec<Vec<Slot>>,
    len: u32,
}

impl Slots {
    #[inline]
    fn place(slot: u32) -> (usize, usize) {
        let high = slot >> FIRST_SEGMENT_BITS;
        if high == 0 {
            (0, slot as usize)
        } else {
            let segment = 32 - high.leading_zeros();
            let base = FIRST_SEGMENT << (segment - 1);
            (segment as usize, (slot - base) as usize)
        }
    }

    #[inline]
    fn get(&self, slot: u32) -> Option<&Slot> {
        let (segment, offset) = Self::place(slot);
        self.segments.get(segment)?.get(offset)
    }

    #[inline]
    fn get_mut(&mut self, slot: u32) -> Option<&mut Slot> {
        let (segment, offset) = Self::place(slot);
        self.segments.get_mut(segment)?.get_mut(offset)
    }

    /// Appends a slot; its number.
    fn push(&mut self, slot: Slot) -> u32 {
        let number = self.len;
        let (segment, _) = Self::place(number);
        if segment == self.segments.len() {
            let size = if segment == 0 {
                FIRST_SEGMENT
            } else {
                FIRST_SEGMENT << (segment - 1)
            };
            let fresh = Vec::with_capacity(size as usize);
            crate::huge_pages::advise(&fresh);
            self.segments.push(fresh);
        }
        self.segments[segment].push(slot);
        self.len += 1;
        number
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.segments.iter_mut().flatten()
    }

    /// Bytes reserved for slots (including the unused end of the last segment).
    fn capacity_bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|segment| segment.capacity() * std::mem::size_of::<Slot>())
            .sum()
    }
}

impl std::ops::Index<u32> for Slots {
    type Output = Slot;
    #[inline]
    fn index(&self, slot: u32) -> &Slot {
        self.get(slot).expect("a slot in the table")
    }
}

impl std::ops::IndexMut<u32> for Slots {
    #[inline]
    fn index_mut(&mut self, slot: u32) -> &mut Slot {
        self.get_mut(slot).expect("a slot in the table")
    }
}

struct Table<C> {
    index: SlotIndex,
    slots: Slots,
    vacant: Vec<u32>,
    /// The recency list: most and least recently used keys of the default configuration.
    newest: u32,
    oldest: u32,
    configs: Vec<Option<Config<C>>>,
    vacant_configs: Vec<u32>,
    /// When full, no key becomes evictable before this instant (skips rescans).
    no_eviction_before: u64,
    decisions: Decisions,
    /// Keys removed before their bucket refilled, with their TAT: recreated
    /// within that time, a key starts from it, so removing a key in use never
    /// refills it (for handles still held, or a new `get`).
    removed: HashMap<Box<str>, u64>,
    /// `removed` is purged of refilled keys when it grows past this.
    purge_removed_above: usize,
}

/// The least `purge_removed_above`.
const REMOVED_PURGE_MIN: usize = 64;

/// The table and the caller's `extra` state, under one lock.
struct Locked<C, H> {
    table: Table<C>,
    extra: H,
}

impl<C, H> std::ops::Deref for Locked<C, H> {
    type Target = Table<C>;
    fn deref(&self) -> &Table<C> {
        &self.table
    }
}

impl<C, H> std::ops::DerefMut for Locked<C, H> {
    fn deref_mut(&mut self) -> &mut Table<C> {
        &mut self.table
    }
}

/// Per-key buckets, bounded by `max_keys`; `extra` is state of the caller's
/// that is read and written under the same lock as the table (see `find_with`).
pub struct Registry<C, H = ()> {
    table: SpinMutex<Locked<C, H>>,
    max_keys: usize,
    idle_ns: u64,
    on_full: OnFull,
}

impl<C> Table<C> {
    fn find(&self, key: &str, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(fold(hash), |i| {
            let slot = &slots[i];
            slot.hash == hash && slot.key.is(key)
        })
    }

    fn location(&self, slot: u32) -> Location {
        Location {
            slot,
            generation: self.slots[slot].generation,
        }
    }

    fn limits(&self, config: u32) -> &Limits {
        &self.configs[config as usize]
            .as_ref()
            .expect("a slot's configuration exists")
            .limits
    }

    /// Takes `slot` out of the recency list (it must be in it).
    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let s = &self.slots[slot];
            (s.newer, s.older)
        };
        if newer == NIL {
            self.newest = older;
        } else {
            self.slots[newer].older = older;
        }
        if older == NIL {
            self.oldest = newer;
        } else {
            self.slots[older].newer = newer;
        }
    }

    /// Puts `slot` (not in the recency list) at its front.
    fn push_newest(&mut self, slot: u32) {
        let previous = self.newest;
        {
            let s = &mut self.slots[slot];
            s.newer = NIL;
            s.older = previous;
        }
        if previous == NIL {
            self.oldest = slot;
        } else {
            self.slots[previous].newer = slot;
        }
        self.newest = slot;
    }

    /// Marks `slot` as just used (keys with their own configuration are not listed).
    #[inline]
    fn touch(&mut self, slot: u32) {
        if slot != self.newest && self.slots[slot].config == DEFAULT_CONFIG {
            self.unlink(slot);
            self.push_newest(slot);
        }
    }

    fn add_config(&mut self, config: Config<C>) -> u32 {
        if let Some(id) = self.vacant_configs.pop() {
            self.configs[id as usize] = Some(config);
            id
        } else {
            self.configs.push(Some(config));
            (self.configs.len() - 1) as u32
        }
    }

    /// Frees a key's own configuration; its payload is returned so that the
    /// caller drops it after releasing the lock (dropping may run Python code).
    #[must_use]
    fn take_config(&mut self, id: u32) -> Option<C> {
        if id == DEFAULT_CONFIG {
            return None;
        }
        self.vacant_configs.push(id);
        self.configs[id as usize]
            .take()
            .map(|config| config.payload)
    }

    /// Gives `slot` the configuration `config` (the recency list follows).
    fn set_config(&mut self, slot: u32, config: u32) -> u32 {
        let old = self.slots[slot].config;
        if old == DEFAULT_CONFIG && config != DEFAULT_CONFIG {
            self.unlink(slot);
        } else if old != DEFAULT_CONFIG && config == DEFAULT_CONFIG {
            self.push_newest(slot);
        }
        self.slots[slot].config = config;
        old
    }

    #[must_use]
    fn vacate(&mut self, slot: u32) -> Option<C> {
        let hash = self.slots[slot].hash;
        self.index.remove(fold(hash), slot);
        if self.slots[slot].config == DEFAULT_CONFIG {
            self.unlink(slot);
        }
        let config = {
            let s = &mut self.slots[slot];
            s.key = Key::Vacant;
            s.generation = s.generation.wrapping_add(1);
            std::mem::replace(&mut s.config, DEFAULT_CONFIG)
        };
        self.vacant.push(slot);
        self.take_config(config)
    }

    /// Adds a key with the default configuration (listed as the newest).
    fn insert(&mut self, key: &str, hash: u64, now: u64) -> u32 {
        let mut tat = self.limits(DEFAULT_CONFIG).initial_tat(now);
        if !self.removed.is_empty() {
            if let Some(carried) = self.removed.remove(key) {
                // Removed before it refilled: its tokens stay spent.
                tat = tat.max(carried);
            }
        }
        let slot = if let Some(slot) = self.vacant.pop() {
            let s = &mut self.slots[slot];
            s.hash = hash;
            s.key = Key::new(key);
            s.tat = tat;
            s.config = DEFAULT_CONFIG;
            slot
        } else {
            self.slots.push(Slot {
                hash,
                key: Key::new(key),
                tat,
                config: DEFAULT_CONFIG,
                generation: 0,
                newer: NIL,
                older: NIL,
            })
        };
        self.push_newest(slot);
        self.index.insert(fold(hash), slot);
        slot
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn remember_removed(&mut self, key: &str, tat: u64, now: u64) {
        self.removed.insert(key.into(), tat);
        if self.removed.len() > self.purge_removed_above {
            self.removed.retain(|_, carried| *carried > now);
            self.purge_removed_above = REMOVED_PURGE_MIN.max(2 * self.removed.len());
        }
    }

    /// Evicts the least recently used key of the default configuration;
    /// when there is none (every key has its own), as `evict_idle`.
    fn evict_oldest(&mut self, now: u64, idle_ns: u64) -> Result<(), Full> {
        if self.oldest == NIL {
            return self.evict_idle(now, idle_ns);
        }
        // Only keys with the default configuration are listed: no payload.
        let _ = self.vacate(self.oldest);
        Ok(())
    }

    /// Evicts keys that have been full for `idle_ns` and use the default
    /// configuration: the least recently used one if it is (no scan), else
    /// every such key; when none can go, the time until one can.
    fn evict_idle(&mut self, now: u64, idle_ns: u64) -> Result<(), Full> {
        if self.oldest != NIL && Limits::idle(self.slots[self.oldest].tat, now, idle_ns) {
            let _ = self.vacate(self.oldest);
            return Ok(());
        }
        if now < self.no_eviction_before {
            return Err(Full {
                retry_after_ns: self.no_eviction_before - now,
            });
        }
        let mut evicted = false;
        let mut soonest = u64::MAX;
        for slot in 0..self.slots.len {
            let s = &self.slots[slot];
            if matches!(s.key, Key::Vacant) || s.config != DEFAULT_CONFIG {
                continue;
            }
            if Limits::idle(s.tat, now, idle_ns) {
                let _ = self.vacate(slot);
                evicted = true;
            } else {
                soonest = soonest.min(s.tat.saturating_add(idle_ns));
            }
        }
        if evicted {
            return Ok(());
        }
        // Only keys with their own configuration: nothing will become evictable.
        let retry_after_ns = soonest.saturating_sub(now).max(1);
        self.no_eviction_before = now.saturating_add(retry_after_ns);
        Err(Full { retry_after_ns })
    }
}

impl<C> Registry<C> {
    /// A registry whose keys get `default` (with its payload) unless `set` says otherwise.
    pub fn new(default: Limits, payload: C, max_keys: usize, idle_ns: u64) -> Self {
        Registry::with_extra(default, payload, max_keys, idle_ns, ())
    }
}

impl<C, H> Registry<C, H> {
    /// As `new`, with the caller's `extra` state kept under the table's lock.
    pub fn with_extra(
        default: Limits,
        payload: C,
        max_keys: usize,
        idle_ns: u64,
        extra: H,
    ) -> Self {
        Self {
            table: SpinMutex::new(Locked {
                extra,
                table: Table {
                    index: SlotIndex::default(),
                    slots: Slots::default(),
                    vacant: Vec::new(),
                    newest: NIL,
                    oldest: NIL,
                    configs: vec![Some(Config {
                        limits: default,
                        payload,
                    })],
                    vacant_configs: Vec::new(),
                    no_eviction_before: 0,
                    decisions: Decisions::default(),
                    removed: HashMap::new(),
                    purge_removed_above: REMOVED_PURGE_MIN,
                },
            }),
            max_keys,
            idle_ns,
            on_full: OnFull::Evict,
        }
    }

    /// What the registry does when full (default: `OnFull::Evict`).
    #[must_use]
    pub fn on_full(mut self, on_full: OnFull) -> Self {
        self.on_full = on_full;
        self
    }

    /// Takes the table's lock. A panic under it leaves the table consistent
    /// (it is after every statement that can panic), and releases the lock.
    #[inline]
    fn lock(&self) -> SpinMutexGuard<'_, Locked<C, H>> {
        if let Some(guard) = self.table.try_lock() {
            return guard;
        }
        self.lock_contended()
    }

    #[cold]
    fn lock_contended(&self) -> SpinMutexGuard<'_, Locked<C, H>> {
        const SPINS: u32 = 100;
        let mut spins = 0;
        loop {
            if let Some(guard) = self.table.try_lock() {
                return guard;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                // The holder may have been preempted: let it run.
                std::thread::yield_now();
            }
        }
    }

    /// Reads the payload of the default configuration.
    pub fn default_payload<R>(&self, read: impl FnOnce(&C) -> R) -> R {
        let table = self.lock();
        read(
            &table.configs[DEFAULT_CONFIG as usize]
                .as_ref()
                .expect("the default configuration exists")
                .payload,
        )
    }

    #[must_use]
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    #[must_use]
    pub fn idle_ns(&self) -> u64 {
        self.idle_ns
    }

    #[must_use]
    pub fn full_policy(&self) -> OnFull {
        self.on_full
    }

    fn find_or_insert(
        &self,
        table: &mut Table<C>,
        key: &str,
        hash: u64,
        now: u64,
    ) -> Result<u32, Full> {
        if let Some(slot) = table.find(key, hash) {
            table.touch(slot);
            return Ok(slot);
        }
        if table.len() >= self.max_keys {
            match self.on_full {
                OnFull::Evict => table.evict_oldest(now, self.idle_ns)?,
                OnFull::Reject => table.evict_idle(now, self.idle_ns)?,
            }
        }
        Ok(table.insert(key, hash, now))
    }

    /// The key's location, if it is held.
    #[must_use]
    pub fn find(&self, key: &str, hash: u64) -> Option<Location> {
        self.find_with(key, hash, |location, _| location)
    }

    /// Runs `then` on the key's location (if it is held) and the `extra`
    /// state, under one lock. `then` must not call back into the registry.
    /// Finding a key counts as using it (see `OnFull::Evict`).
    pub fn find_with<R>(
        &self,
        key: &str,
        hash: u64,
        then: impl FnOnce(Option<Location>, &mut H) -> R,
    ) -> R {
        let mut guard = self.lock();
        let locked = &mut *guard;
        let location = locked.table.find(key, hash).map(|slot| {
            locked.table.touch(slot);
            locked.table.location(slot)
        });
        then(location, &mut locked.extra)
    }

    /// Runs `read` on the `extra` state, unless the lock is held (for the
    /// collector, which may run while it is).
    pub fn try_with_extra<R>(&self, read: impl FnOnce(&H) -> R) -> Option<R> {
        self.table.try_lock().map(|guard| read(&guard.extra))
    }

    /// Runs `write` on the `extra` state under the lock.
    pub fn with_extra_mut<R>(&self, write: impl FnOnce(&mut H) -> R) -> R {
        write(&mut self.lock().extra)
    }

    /// The key's location, creating its bucket (default configuration) if needed.
    pub fn get(&self, key: &str, hash: u64, now: u64) -> Result<Location, Full> {
        let mut table = self.lock();
        let slot = self.find_or_insert(&mut table, key, hash, now)?;
        let location = table.location(slot);
        let retired = table.index.take_retired();
        drop(table);
        drop(retired); // outside the lock (see `SlotIndex::take_retired`)
        Ok(location)
    }

    /// Runs `op` on the key's limits and TAT at `location` if that slot still
    /// holds the key (hash `hash`); otherwise gives `op` back.
    pub fn with_bucket_at<R, F: FnOnce(&Limits, &mut u64, &mut Decisions) -> R>(
        &self,
        location: Location,
        hash: u64,
        op: F,
    ) -> Result<R, F> {
        let mut guard = self.lock();
        let table = &mut guard.table;
        // A slot's generation changes whenever it is vacated, so a matching
        // generation (and hash) means the slot still holds this key.
        let valid = table
            .slots
            .get(location.slot)
            .is_some_and(|s| s.generation == location.generation && s.hash == hash);
        if !valid {
            return Err(op);
        }
        table.touch(location.slot);
        Ok(Self::run_op(table, location.slot, op))
    }

    #[inline]
    fn run_op<R>(
        table: &mut Table<C>,
        slot: u32,
        op: impl FnOnce(&Limits, &mut u64, &mut Decisions) -> R,
    ) -> R {
        let s = &mut table.slots[slot];
        let limits = &table.configs[s.config as usize]
            .as_ref()
            .expect("a slot's configuration exists")
            .limits;
        op(limits, &mut s.tat, &mut table.decisions)
    }

    /// Runs `op` on the key's limits and TAT, finding or creating the key:
    /// one lookup and one decision under one lock.
    pub fn with_key<R>(
        &self,
        key: &str,
        hash: u64,
        now: u64,
        op: impl FnOnce(&Limits, &mut u64, &mut Decisions) -> R,
    ) -> Result<R, Full> {
        let mut guard = self.lock();
        let table = &mut guard.table;
        let slot = self.find_or_insert(table, key, hash, now)?;
        let result = Self::run_op(table, slot, op);
        let retired = table.index.take_retired();
        drop(guard);
        drop(retired); // outside the lock (see `SlotIndex::take_retired`)
        Ok(result)
    }

    /// Runs `op` on the key's limits and TAT: at `location` if it still holds
    /// the key, else wherever the key is found or recreated (returned).
    pub fn with_bucket<R>(
        &self,
        location: Location,
        key: &str,
        hash: u64,
        now: u64,
        op: impl FnOnce(&Limits, &mut u64, &mut Decisions) -> R,
    ) -> Result<(R, Location), Full> {
        let mut guard = self.lock();
        let table = &mut guard.table;
        // A slot's generation changes whenever it is vacated, so a matching
        // generation (and hash) means the slot still holds this key.
        let valid = table
            .slots
            .get(location.slot)
            .is_some_and(|s| s.generation == location.generation && s.hash == hash);
        let slot = if valid {
            table.touch(location.slot);
            location.slot
        } else {
            self.find_or_insert(table, key, hash, now)?
        };
        let generation = table.slots[slot].generation;
        let result = Self::run_op(table, slot, op);
        let retired = table.index.take_retired();
        drop(guard);
        drop(retired); // outside the lock (see `SlotIndex::take_retired`)
        Ok((result, Location { slot, generation }))
    }

    /// Reads the payload of the key's configuration (creating the key if needed).
    pub fn with_payload<R>(
        &self,
        key: &str,
        hash: u64,
        now: u64,
        read: impl FnOnce(&C) -> R,
    ) -> Result<R, Full> {
        let mut table = self.lock();
        let slot = self.find_or_insert(&mut table, key, hash, now)?;
        let config = table.slots[slot].config;
        let result = read(
            &table.configs[config as usize]
                .as_ref()
                .expect("a slot's configuration exists")
                .payload,
        );
        let retired = table.index.take_retired();
        drop(table);
        drop(retired); // outside the lock (see `SlotIndex::take_retired`)
        Ok(result)
    }

    /// Gives the key its own configuration and a fresh bucket; such keys are
    /// never evicted (only `remove` forgets them).
    pub fn set(
        &self,
        key: &str,
        hash: u64,
        limits: Limits,
        payload: C,
        now: u64,
    ) -> Result<Location, Full> {
        let mut table = self.lock();
        let slot = self.find_or_insert(&mut table, key, hash, now)?;
        let config = table.add_config(Config { limits, payload });
        let old = table.set_config(slot, config);
        let old_payload = table.take_config(old);
        table.slots[slot].tat = limits.initial_tat(now);
        let location = table.location(slot);
        let retired = table.index.take_retired();
        drop(table);
        drop(old_payload);
        drop(retired); // outside the lock (see `SlotIndex::take_retired`)
        Ok(location)
    }

    /// Forgets the key (and its configuration); whether it was there. If its
    /// bucket is not full at `now`, its TAT is remembered until it would be:
    /// the key recreated before then starts from it (see `Table::removed`).
    pub fn remove(&self, key: &str, hash: u64, now: u64) -> bool {
        let mut table = self.lock();
        let Some(slot) = table.find(key, hash) else {
            return false;
        };
        let tat = table.slots[slot].tat;
        let payload = table.vacate(slot);
        if tat > now {
            table.remember_removed(key, tat, now);
        }
        drop(table);
        drop(payload);
        true
    }

    /// Every bucket back to its configured initial tokens.
    pub fn reset_all(&self, now: u64) {
        let mut guard = self.lock();
        let table = &mut guard.table;
        table.removed.clear();
        // Refilled buckets may become evictable sooner than the cached bound.
        table.no_eviction_before = 0;
        let configs = &table.configs;
        for slot in table.slots.iter_mut() {
            if !matches!(slot.key, Key::Vacant) {
                let limits = &configs[slot.config as usize]
                    .as_ref()
                    .expect("a slot's configuration exists")
                    .limits;
                slot.tat = limits.initial_tat(now);
            }
        }
    }

    /// Decisions counted so far (see `Decisions`).
    #[must_use]
    pub fn decisions(&self) -> Decisions {
        self.lock().decisions
    }

    #[must_use]
    pub fn contains(&self, key: &str, hash: u64) -> bool {
        self.lock().find(key, hash).is_some()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of the default configuration, least recently used first
    /// (the order in which a full registry evicts them).
    pub fn eviction_order(&self, mut visit: impl FnMut(&str)) {
        let table = self.lock();
        let mut slot = table.oldest;
        let mut text = String::new();
        while slot != NIL {
            let s = &table.slots[slot];
            text.clear();
            match &s.key {
                Key::Inline { len, bytes } => text.push_str(
                    std::str::from_utf8(&bytes[..usize::from(*len)]).expect("keys are text"),
                ),
                Key::Heap(stored) => text.push_str(stored),
                Key::Vacant => {}
            }
            visit(&text);
            slot = s.newer;
        }
    }

    /// Bytes of native memory the table reserves (slots, index, free lists;
    /// not the text of keys longer than 22 bytes).
    #[must_use]
    pub fn table_bytes(&self) -> usize {
        let table = self.lock();
        table.slots.capacity_bytes()
            + table.index.capacity_bytes()
            + table.vacant.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};

    const SEC: u64 = 1_000_000_000;

    fn h(key: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    fn registry(max_keys: usize, idle_ns: u64) -> Registry<()> {
        Registry::new(Limits::new(1.0, 2.0, 2.0).unwrap(), (), max_keys, idle_ns)
    }

    fn take(r: &Registry<()>, key: &str, now: u64) -> bool {
        let loc = r.get(key, h(key), now).unwrap();
        r.with_bucket(loc, key, h(key), now, |limits, tat, _| {
            limits
                .grant(*tat, now, limits.interval_ns)
                .map(|next| *tat = next)
                .is_some()
        })
        .unwrap()
        .0
    }

    #[test]
    fn one_bucket_per_key() {
        let r = registry(10, 0);
        let long = "a-key-longer-than-twenty-two-bytes";
        assert_eq!(r.get("a", h("a"), 0), r.get("a", h("a"), 0));
        assert_eq!(r.get(long, h(long), 0), r.get(long, h(long), 0));
        assert!(take(&r, "a", 0) && take(&r, "a", 0) && !take(&r, "a", 0));
        assert!(take(&r, long, 0));
        assert_eq!(r.len(), 2);
    }

    fn rejecting(max_keys: usize, idle_ns: u64) -> Registry<()> {
        registry(max_keys, idle_ns).on_full(OnFull::Reject)
    }

    fn order(r: &Registry<()>) -> Vec<String> {
        let mut keys = Vec::new();
        r.eviction_order(|key| keys.push(key.to_owned()));
        keys
    }

    #[test]
    fn rejecting_registry_evicts_idle_keys_only() {
        let r = rejecting(2, SEC);
        assert!(take(&r, "a", 0));
        assert!(take(&r, "b", 0));
        // Neither is full again (and idle) before 1 s + 1 s.
        assert_eq!(
            r.get("c", h("c"), SEC),
            Err(Full {
                retry_after_ns: SEC
            })
        );
        assert_eq!(
            r.get("c", h("c"), SEC + 1),
            Err(Full {
                retry_after_ns: SEC - 1
            })
        );
        // The least recently used key is idle: it goes, without a scan.
        assert!(r.get("c", h("c"), 2 * SEC).is_ok());
        assert_eq!(r.len(), 2);
        assert!(r.contains("c", h("c")) && !r.contains("a", h("a")));
    }

    #[test]
    fn rejecting_registry_scans_when_the_oldest_is_busy() {
        let r = rejecting(3, SEC);
        assert!(take(&r, "a", 0) && take(&r, "a", 0)); // empty until 2 s, idle at 3 s
        assert!(take(&r, "b", 0));
        assert!(take(&r, "c", 0));
        // At 2.5 s "a" (the oldest) is not idle; "b" and "c" are: both go.
        let now = 2 * SEC + SEC / 2;
        assert!(r.get("d", h("d"), now).is_ok());
        assert_eq!(order(&r), ["a", "d"]);
    }

    #[test]
    fn full_registry_evicts_the_least_recently_used_key() {
        let r = registry(3, SEC);
        for key in ["a", "b", "c"] {
            assert!(take(&r, key, 0));
        }
        assert!(take(&r, "a", 0)); // "b" is now the least recently used
        assert_eq!(order(&r), ["b", "c", "a"]);
        assert!(r.get("d", h("d"), 0).is_ok());
        assert_eq!(order(&r), ["c", "a", "d"]);
        assert!(r.find("c", h("c")).is_some()); // finding is using
        assert!(r.get("e", h("e"), 0).is_ok());
        assert_eq!(order(&r), ["d", "c", "e"]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn keys_with_their_own_configuration_are_not_listed() {
        let r = registry(2, 0);
        let own = Limits::new(5.0, 5.0, 5.0).unwrap();
        r.set("p", h("p"), own, (), 0).unwrap();
        assert!(take(&r, "a", 0));
        assert!(r.get("b", h("b"), 0).is_ok()); // evicts "a", never "p"
        assert_eq!(order(&r), ["b"]);
        assert!(r.contains("p", h("p")));
        assert!(r.remove("p", h("p"), 0));
        assert!(r.get("c", h("c"), 0).is_ok());
        assert_eq!(order(&r), ["b", "c"]);
    }

    #[test]
    fn grows_across_segments_and_evicts_in_order() {
        let r = registry(5_000, 0);
        let keys: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
        for key in &keys {
            assert!(r.get(key, h(key), 0).is_ok());
        }
        for key in &keys {
            let loc = r.find(key, h(key)).unwrap();
            assert_eq!(r.get(key, h(key), 0), Ok(loc));
        }
        // Every lookup above touched its key in creation order, so the
        // next 5,000 new keys evict them in that order.
        for (i, key) in keys.iter().enumerate() {
            let fresh = format!("n{i}");
            assert!(r.get(&fresh, h(&fresh), 0).is_ok());
            assert!(!r.contains(key, h(key)));
            if i + 1 < keys.len() {
                assert!(r.contains(&keys[i + 1], h(&keys[i + 1])));
            }
        }
        assert_eq!(r.len(), 5_000);
        assert!(r.table_bytes() >= 5_000 * 56);
    }

    #[test]
    fn growing_never_moves_a_slot() {
        let r = registry(100_000, 0);
        let address =
            |r: &Registry<()>, slot: u32| std::ptr::from_ref(&r.lock().table.slots[slot]) as usize;
        assert!(r.get("first", h("first"), 0).is_ok());
        let first = address(&r, 0);
        for i in 0..50_000 {
            let key = format!("k{i}");
            assert!(r.get(&key, h(&key), 0).is_ok());
        }
        // Segments are added, never reallocated: slot 0 stays where it was.
        assert_eq!(address(&r, 0), first);
        assert!(r.lock().table.slots.segments.len() > 5);
    }

    #[test]
    fn segments_place_every_slot_once() {
        let mut seen = std::collections::HashSet::new();
        for slot in 0..100_000u32 {
            let (segment, offset) = Slots::place(slot);
            let size = if segment == 0 {
                64
            } else {
                64 << (segment - 1)
            };
            assert!(offset < size);
            assert!(seen.insert((segment, offset)));
        }
        assert_eq!(Slots::place(64), (1, 0));
        assert_eq!(Slots::place(128), (2, 0));
        assert_eq!(Slots::place(255), (2, 127));
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }

    #[test]
    fn stale_handles_find_their_key_again() {
        let r = registry(1, 0);
        let a = r.get("a", h("a"), 0).unwrap();
        let b = r.get("b", h("b"), 0).unwrap(); // evicts "a", reuses its slot
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        let ((), moved) = r.with_bucket(a, "a", h("a"), 0, |_, _, _| ()).unwrap();
        assert_ne!(moved, a);
        assert!(r.contains("a", h("a")) && !r.contains("b", h("b")));
    }

    #[test]
    fn set_keys_are_pinned_and_remove_forgets_them() {
        let r = registry(1, 0);
        let premium = Limits::new(50.0, 50.0, 50.0).unwrap();
        r.set("p", h("p"), premium, (), 0).unwrap();
        assert!(r.get("q", h("q"), 10 * SEC).is_err());
        assert!(r.remove("p", h("p"), 10 * SEC));
        assert!(!r.remove("p", h("p"), 10 * SEC));
        assert!(r.get("q", h("q"), 10 * SEC).is_ok());
    }

    #[test]
    fn a_removed_key_keeps_its_spent_tokens_until_it_refills() {
        let r = registry(4, 0);
        assert!(take(&r, "a", 0) && take(&r, "a", 0) && !take(&r, "a", 0));
        assert!(r.remove("a", h("a"), 0));
        assert!(!take(&r, "a", 0)); // recreated from the spent state
        assert!(r.remove("a", h("a"), 0));
        // Once it would have refilled, nothing is carried over.
        assert!(take(&r, "a", 10 * SEC) && take(&r, "a", 10 * SEC));
    }

    #[test]
    fn reset_all_refills() {
        let r = registry(4, 0);
        assert!(take(&r, "a", 0) && take(&r, "a", 0) && !take(&r, "a", 0));
        r.reset_all(0);
        assert!(take(&r, "a", 0));
    }

    #[test]
    fn location_packs_into_a_word() {
        let loc = Location {
            slot: 7,
            generation: u32::MAX,
        };
        assert_eq!(Location::unpack(loc.pack()), loc);
    }
}
