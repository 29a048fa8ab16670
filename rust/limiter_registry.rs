//! Per-key token buckets: one GCRA state per key in a compact table.
//!
//! Memory is the constraint (a million keys in well under 100 bytes each), so
//! no Python object is kept per key: a key is a slot of 48 bytes (its hash,
//! its text inline when short, its TAT, its configuration and a generation)
//! in one `Vec`, found through a compact index (`slot_index.rs`). `get_limiter`
//! hands out a small handle holding the slot number and generation; a handle
//! whose slot was evicted or reused finds (or recreates) its key again.
//! Handing out a handle allocates nothing in the common cases: a hot key's
//! handle is cached, and on a build with the GIL the last handle given out
//! is re-pointed to the next key once nobody holds it (reference count 1).
//! The slot table and the index are advised for huge pages (`huge_pages.rs`):
//! over a million keys each lookup would otherwise also miss the TLB.
//!
//! One mutex guards the table; every critical section is a lookup and a few
//! integer operations, never user code. The registry is bounded by
//! `max_keys`: when full, keys that have been full for `idle_ttl` are evicted
//! (forgetting a full bucket loses nothing). Keys given their own
//! configuration by `set` are never evicted. If nothing can be evicted, a new
//! key is refused with the time until one can.

use crate::slot_index::{fold, SlotIndex};
use crate::token_bucket::Limits;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

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

#[derive(Debug)]
struct Slot {
    hash: u64,
    key: Key,
    tat: u64,
    config: u32,
    /// Bumped whenever the slot is vacated, so stale handles notice.
    generation: u32,
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

/// A key's configuration: its limits and a payload (the Python config object).
struct Config<C> {
    limits: Limits,
    payload: C,
}

struct Table<C> {
    index: SlotIndex,
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    configs: Vec<Option<Config<C>>>,
    vacant_configs: Vec<u32>,
    /// When full, no key becomes evictable before this instant (skips rescans).
    no_eviction_before: u64,
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
    table: Mutex<Locked<C, H>>,
    max_keys: usize,
    idle_ns: u64,
}

impl<C> Table<C> {
    fn find(&self, key: &str, hash: u64) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(fold(hash), |i| {
            let slot = &slots[i as usize];
            slot.hash == hash && slot.key.is(key)
        })
    }

    fn location(&self, slot: u32) -> Location {
        Location {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn limits(&self, config: u32) -> &Limits {
        &self.configs[config as usize]
            .as_ref()
            .expect("a slot's configuration exists")
            .limits
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

    #[must_use]
    fn vacate(&mut self, slot: u32) -> Option<C> {
        let hash = self.slots[slot as usize].hash;
        self.index.remove(fold(hash), slot);
        let config = {
            let s = &mut self.slots[slot as usize];
            s.key = Key::Vacant;
            s.generation = s.generation.wrapping_add(1);
            std::mem::replace(&mut s.config, DEFAULT_CONFIG)
        };
        self.vacant.push(slot);
        self.take_config(config)
    }

    fn insert(&mut self, key: &str, hash: u64, config: u32, now: u64) -> u32 {
        let mut tat = self.limits(config).initial_tat(now);
        if !self.removed.is_empty() {
            if let Some(carried) = self.removed.remove(key) {
                // Removed before it refilled: its tokens stay spent.
                tat = tat.max(carried);
            }
        }
        let slot = if let Some(slot) = self.vacant.pop() {
            let s = &mut self.slots[slot as usize];
            s.hash = hash;
            s.key = Key::new(key);
            s.tat = tat;
            s.config = config;
            slot
        } else {
            if self.slots.len() == self.slots.capacity() {
                self.grow_slots();
            }
            self.slots.push(Slot {
                hash,
                key: Key::new(key),
                tat,
                config,
                generation: 0,
            });
            (self.slots.len() - 1) as u32
        };
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

    /// Doubles the slot table and advises it for huge pages. The pages moved
    /// by `realloc` keep their size; the new half gets huge ones. (Moving the
    /// slots into a fresh allocation instead would leave freed tables behind
    /// in the heap: about 18 bytes of RSS per key over a million keys.)
    fn grow_slots(&mut self) {
        self.slots.reserve_exact(self.slots.capacity().max(64));
        crate::huge_pages::advise(&self.slots);
    }

    /// Evicts every key that has been full for `idle_ns` and uses the default
    /// configuration; when none can go, the time until one can.
    fn evict_idle(&mut self, now: u64, idle_ns: u64) -> Result<(), Full> {
        if now < self.no_eviction_before {
            return Err(Full {
                retry_after_ns: self.no_eviction_before - now,
            });
        }
        let mut evicted = false;
        let mut soonest = u64::MAX;
        for slot in 0..self.slots.len() as u32 {
            let s = &self.slots[slot as usize];
            if matches!(s.key, Key::Vacant) || s.config != DEFAULT_CONFIG {
                continue;
            }
            if Limits::idle(s.tat, now, idle_ns) {
                // Only keys with the default configuration are evicted: no payload.
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
            table: Mutex::new(Locked {
                extra,
                table: Table {
                    index: SlotIndex::default(),
                    slots: Vec::new(),
                    vacant: Vec::new(),
                    configs: vec![Some(Config {
                        limits: default,
                        payload,
                    })],
                    vacant_configs: Vec::new(),
                    no_eviction_before: 0,
                    removed: HashMap::new(),
                    purge_removed_above: REMOVED_PURGE_MIN,
                },
            }),
            max_keys,
            idle_ns,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Locked<C, H>> {
        // The table is consistent after every statement that can panic.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
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

    fn find_or_insert(
        &self,
        table: &mut Table<C>,
        key: &str,
        hash: u64,
        now: u64,
    ) -> Result<u32, Full> {
        if let Some(slot) = table.find(key, hash) {
            return Ok(slot);
        }
        if table.len() >= self.max_keys {
            table.evict_idle(now, self.idle_ns)?;
        }
        Ok(table.insert(key, hash, DEFAULT_CONFIG, now))
    }

    /// The key's location, if it is held.
    #[must_use]
    pub fn find(&self, key: &str, hash: u64) -> Option<Location> {
        self.find_with(key, hash, |location, _| location)
    }

    /// Runs `then` on the key's location (if it is held) and the `extra`
    /// state, under one lock. `then` must not call back into the registry.
    pub fn find_with<R>(
        &self,
        key: &str,
        hash: u64,
        then: impl FnOnce(Option<Location>, &mut H) -> R,
    ) -> R {
        let mut guard = self.lock();
        let locked = &mut *guard;
        let location = locked
            .table
            .find(key, hash)
            .map(|slot| locked.table.location(slot));
        then(location, &mut locked.extra)
    }

    /// Runs `read` on the `extra` state, unless the lock is held (for the
    /// collector, which may run while it is).
    pub fn try_with_extra<R>(&self, read: impl FnOnce(&H) -> R) -> Option<R> {
        match self.table.try_lock() {
            Ok(guard) => Some(read(&guard.extra)),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                Some(read(&poisoned.into_inner().extra))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Runs `write` on the `extra` state under the lock.
    pub fn with_extra_mut<R>(&self, write: impl FnOnce(&mut H) -> R) -> R {
        write(&mut self.lock().extra)
    }

    /// The key's location, creating its bucket (default configuration) if needed.
    pub fn get(&self, key: &str, hash: u64, now: u64) -> Result<Location, Full> {
        let mut table = self.lock();
        let slot = self.find_or_insert(&mut table, key, hash, now)?;
        Ok(table.location(slot))
    }

    /// Runs `op` on the key's limits and TAT at `location` if that slot still
    /// holds the key (hash `hash`); otherwise gives `op` back.
    pub fn with_bucket_at<R, F: FnOnce(&Limits, &mut u64) -> R>(
        &self,
        location: Location,
        hash: u64,
        op: F,
    ) -> Result<R, F> {
        let mut guard = self.lock();
        let table = &mut guard.table;
        match table.slots.get_mut(location.slot as usize) {
            // A slot's generation changes whenever it is vacated, so a matching
            // generation (and hash) means the slot still holds this key.
            Some(s) if s.generation == location.generation && s.hash == hash => {
                let limits = &table.configs[s.config as usize]
                    .as_ref()
                    .expect("a slot's configuration exists")
                    .limits;
                Ok(op(limits, &mut s.tat))
            }
            _ => Err(op),
        }
    }

    /// Runs `op` on the key's limits and TAT: at `location` if it still holds
    /// the key, else wherever the key is found or recreated (returned).
    pub fn with_bucket<R>(
        &self,
        location: Location,
        key: &str,
        hash: u64,
        now: u64,
        op: impl FnOnce(&Limits, &mut u64) -> R,
    ) -> Result<(R, Location), Full> {
        let mut guard = self.lock();
        let table = &mut guard.table;
        // A slot's generation changes whenever it is vacated, so a matching
        // generation (and hash) means the slot still holds this key.
        let valid = table
            .slots
            .get(location.slot as usize)
            .is_some_and(|s| s.generation == location.generation && s.hash == hash);
        let slot = if valid {
            location.slot
        } else {
            self.find_or_insert(table, key, hash, now)?
        };
        let s = &mut table.slots[slot as usize];
        let generation = s.generation;
        let limits = &table.configs[s.config as usize]
            .as_ref()
            .expect("a slot's configuration exists")
            .limits;
        let result = op(limits, &mut s.tat);
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
        let config = table.slots[slot as usize].config;
        Ok(read(
            &table.configs[config as usize]
                .as_ref()
                .expect("a slot's configuration exists")
                .payload,
        ))
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
        let old = std::mem::replace(&mut table.slots[slot as usize].config, config);
        let old_payload = table.take_config(old);
        table.slots[slot as usize].tat = limits.initial_tat(now);
        let location = table.location(slot);
        drop(table);
        drop(old_payload);
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
        let tat = table.slots[slot as usize].tat;
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
        for slot in &mut table.slots {
            if !matches!(slot.key, Key::Vacant) {
                let limits = &table.configs[slot.config as usize]
                    .as_ref()
                    .expect("a slot's configuration exists")
                    .limits;
                slot.tat = limits.initial_tat(now);
            }
        }
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
}

#[cfg(feature = "python")]
pub use binding::{KeyedLimiter, RateLimiterRegistry};

#[cfg(feature = "python")]
mod binding {
    use super::{Full, Location, Registry};
    use crate::clock::{ns_to_secs, secs_to_ns, Clock};
    use crate::token_bucket::{
        cancel_error, invalid_value_error, number_arg, rate_limit_exceeded, read_limits, ticket_of,
        timeout_arg, tokens_error, Decisions, InvalidValue, Limits, Reservation,
    };
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::gc::PyVisit;
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyFloat, PyList, PyString};
    use pyo3::PyTraverseError;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Limiters handed out recently, one per slot modulo this size (a power of two).
    const HANDLE_CACHE: usize = 1024;

    /// Handles the registry keeps (under the table's lock: one lock per lookup).
    pub struct Handles {
        /// Per entry: the packed location last asked for, and its handle once asked twice.
        hot: Vec<(u64, Option<Py<KeyedLimiter>>)>,
        /// The handle last given out for a key seen once; re-pointed to the
        /// next such key when nobody else holds it (see `get_limiter`).
        spare: Option<Py<KeyedLimiter>>,
    }

    fn full_error(py: Python<'_>, full: Full) -> PyErr {
        rate_limit_exceeded(
            py,
            ns_to_secs(full.retry_after_ns),
            Some("rate limiter registry is full (max_keys) and no key is idle yet"),
        )
    }

    /// The core of `shared.resilience.RateLimiterRegistry`: buckets per key in Rust.
    #[pyclass(subclass, frozen, module = "shared._native")]
    pub struct RateLimiterRegistry {
        /// The table, and the handles it keeps: hot keys get their limiter back
        /// without allocating one (keyed by packed location, so a reused slot
        /// never returns another key's), and the spare (see `get_limiter`).
        core: Registry<Py<PyAny>, Handles>,
        clock: Clock,
        idle_ttl: f64,
        /// Whether the spare handle may be re-pointed: only where a reference
        /// count of 1 proves that nobody else holds it (a build with the GIL).
        reuse_spare: bool,
        /// The decisions of every key together (one series per registry in metrics).
        decisions: Decisions,
    }

    /// What `get_limiter` found under the lock.
    enum Found {
        /// The key is not held yet.
        Missing,
        /// A handle to return, and what it replaced (to drop outside the lock).
        Ready(Py<KeyedLimiter>, Option<(Py<PyAny>, HotEntry)>),
        /// A handle must be allocated (outside the lock).
        New { packed: u64, seen_before: bool },
    }

    type HotEntry = (u64, Option<Py<KeyedLimiter>>);

    /// Whether the interpreter runs with the GIL (every build before 3.13 does).
    fn gil_enabled(py: Python<'_>) -> PyResult<bool> {
        match py.import("sys")?.getattr("_is_gil_enabled") {
            Ok(is_enabled) => is_enabled.call0()?.is_truthy(),
            Err(_) => Ok(true),
        }
    }

    /// Whether `handle` is referenced only by the registry's own field.
    #[allow(deprecated)] // `get_refcnt` is the safe way to read the count in PyO3 0.30.
    fn held_only_here(py: Python<'_>, handle: &Py<KeyedLimiter>) -> bool {
        handle.get_refcnt(py) == 1
    }

    /// The key's text and hash (Python's own `str` hash, cached in the string).
    /// A str that is not valid text (a lone surrogate) gets the shared `ValueError`.
    fn key_parts<'a>(key: &'a Bound<'_, PyString>) -> PyResult<(&'a str, u64)> {
        if let Ok(text) = key.to_str() {
            return Ok((text, key.hash()? as u64));
        }
        key.py()
            .import("shared._validation")?
            .getattr("key")?
            .call1((key,))?;
        Err(PyValueError::new_err("key must be valid text"))
    }

    /// The key as a `str`, or a `TypeError` that names the parameter (`PyO3`
    /// names it only in a note, which Python 3.9 and 3.10 do not have).
    fn key_str(key: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyString>> {
        key.cast_into::<PyString>().map_err(|err| {
            let given = err.into_inner();
            PyTypeError::new_err(format!(
                "key must be a str, got {}",
                given
                    .get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string())
            ))
        })
    }

    #[pymethods]
    impl RateLimiterRegistry {
        /// `max_keys` and `idle_ttl` are checked by `shared._validation`, the
        /// rules both backends share (construction is no hot path).
        #[new]
        #[pyo3(
            signature = (default_config, *, max_keys = None, idle_ttl = None, clock = None),
            text_signature = "(default_config, *, max_keys=1000000, idle_ttl=60.0, clock=None)"
        )]
        fn new(
            default_config: &Bound<'_, PyAny>,
            max_keys: Option<&Bound<'_, PyAny>>,
            idle_ttl: Option<&Bound<'_, PyAny>>,
            clock: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<Self> {
            let py = default_config.py();
            let limits = read_limits(default_config)?;
            let validation = py.import("shared._validation")?;
            let max_keys: usize = match max_keys {
                Some(value) if !value.is_none() => validation
                    .getattr("int_in_range")?
                    .call1(("max_keys", value, 1, u32::MAX - 1))?
                    .extract()?,
                _ => 1_000_000,
            };
            let idle_ttl: f64 = match idle_ttl {
                Some(value) if !value.is_none() => validation
                    .getattr("non_negative_finite")?
                    .call1(("idle_ttl", value))?
                    .extract()?,
                _ => 60.0,
            };
            Ok(Self {
                core: Registry::with_extra(
                    limits,
                    default_config.clone().unbind(),
                    max_keys,
                    secs_to_ns(idle_ttl),
                    Handles {
                        hot: (0..HANDLE_CACHE).map(|_| (u64::MAX, None)).collect(),
                        spare: None,
                    },
                ),
                clock: Clock::from_py(clock)?,
                idle_ttl,
                reuse_spare: gil_enabled(default_config.py())?,
                decisions: Decisions::default(),
            })
        }

        /// Monotonic decision counters of all keys together, for metrics (as
        /// `TokenBucket.counters`; never cleared by `reset_all()`).
        fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
            self.decisions.to_dict(py)
        }

        /// The key's limiter (a handle; the bucket lives in the registry).
        fn get_limiter(slf: &Bound<'_, Self>, key: Bound<'_, PyAny>) -> PyResult<Py<KeyedLimiter>> {
            let py = slf.py();
            let this = slf.get();
            let key = key_str(key)?;
            let (text, hash) = key_parts(&key)?;
            let (packed, seen_before) = loop {
                let found =
                    this.core
                        .find_with(text, hash, |location, handles| -> PyResult<Found> {
                            let Some(location) = location else {
                                return Ok(Found::Missing);
                            };
                            let packed = location.pack();
                            let index = location.slot as usize & (HANDLE_CACHE - 1);
                            // A key's handle is cached the second time in a row it is asked
                            // for here, so a stream of distinct keys never churns the cache.
                            let seen_before = match &handles.hot[index] {
                                (cached, Some(handle)) if *cached == packed => {
                                    return Ok(Found::Ready(handle.clone_ref(py), None));
                                }
                                (cached, None) => *cached == packed,
                                (_, Some(_)) => false,
                            };
                            if !seen_before && this.reuse_spare {
                                // With the GIL held, a count of 1 means no caller, container,
                                // bound method or running call holds the spare (handles take
                                // no weak references), so re-pointing it changes nothing
                                // anybody can see: it is as good as a new handle.
                                if let Some(spare) = handles.spare.as_ref() {
                                    if held_only_here(py, spare) {
                                        let old_key = spare.get().repoint(&key, hash, packed)?;
                                        let replaced = std::mem::replace(
                                            &mut handles.hot[index],
                                            (packed, None),
                                        );
                                        let spare = spare.clone_ref(py);
                                        return Ok(Found::Ready(spare, Some((old_key, replaced))));
                                    }
                                }
                            }
                            Ok(Found::New {
                                packed,
                                seen_before,
                            })
                        })?;
                match found {
                    // Dropped here, outside the lock: dropping may free objects.
                    Found::Ready(handle, _replaced) => return Ok(handle),
                    Found::New {
                        packed,
                        seen_before,
                    } => break (packed, seen_before),
                    // The clock is read only to create a bucket, not to find one.
                    Found::Missing => {
                        this.core
                            .get(text, hash, this.clock.now_ns(py)?)
                            .map_err(|full| full_error(py, full))?;
                    }
                }
            };
            // Allocated outside the lock: allocating may run the collector, which
            // may call back here.
            let handle = Py::new(
                py,
                KeyedLimiter::new(slf.clone().unbind(), &key, hash, packed),
            )?;
            let index = Location::unpack(packed).slot as usize & (HANDLE_CACHE - 1);
            let replaced = this.core.with_extra_mut(|handles| {
                if seen_before {
                    let entry = (packed, Some(handle.clone_ref(py)));
                    (std::mem::replace(&mut handles.hot[index], entry), None)
                } else {
                    (
                        std::mem::replace(&mut handles.hot[index], (packed, None)),
                        handles.spare.replace(handle.clone_ref(py)),
                    )
                }
            });
            drop(replaced); // outside the lock: dropping a handle may free objects
            Ok(handle)
        }

        /// Gives `key` its own configuration and a fresh bucket; returns its limiter.
        fn set_limiter(
            slf: &Bound<'_, Self>,
            key: Bound<'_, PyAny>,
            config: &Bound<'_, PyAny>,
        ) -> PyResult<KeyedLimiter> {
            let py = slf.py();
            let key = key_str(key)?;
            let this = slf.get();
            let limits = read_limits(config)?;
            let (text, hash) = key_parts(&key)?;
            let location = this
                .core
                .set(
                    text,
                    hash,
                    limits,
                    config.clone().unbind(),
                    this.clock.now_ns(py)?,
                )
                .map_err(|full| full_error(py, full))?;
            Ok(KeyedLimiter::new(
                slf.clone().unbind(),
                &key,
                hash,
                location.pack(),
            ))
        }

        /// Forgets `key` and its configuration; whether it was there. Tokens
        /// it spent stay spent until its bucket would have refilled.
        fn remove_limiter(&self, py: Python<'_>, key: Bound<'_, PyAny>) -> PyResult<bool> {
            let key = key_str(key)?;
            let (text, hash) = key_parts(&key)?;
            Ok(self.core.remove(text, hash, self.clock.now_ns(py)?))
        }

        /// Every bucket back to its configured initial tokens.
        fn reset_all(&self, py: Python<'_>) -> PyResult<()> {
            self.core.reset_all(self.clock.now_ns(py)?);
            Ok(())
        }

        fn __len__(&self) -> usize {
            self.core.len()
        }

        fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
            // A key that cannot be stored (not a str, or not valid text) is not there.
            match key.cast::<PyString>() {
                Ok(key) => match key.to_str() {
                    Ok(text) => Ok(self.core.contains(text, key.hash()? as u64)),
                    Err(_) => Ok(false),
                },
                Err(_) => Ok(false),
            }
        }

        fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
            // Handles refer back to the registry; the collector must see that cycle.
            self.core
                .try_with_extra(|handles| {
                    for (_, handle) in &handles.hot {
                        visit.call(handle)?;
                    }
                    visit.call(&handles.spare)
                })
                .unwrap_or(Ok(()))
        }

        fn __clear__(&self) {
            let cleared = self.core.with_extra_mut(|handles| {
                let hot: Vec<_> = handles.hot.iter_mut().map(|(_, h)| h.take()).collect();
                (hot, handles.spare.take())
            });
            drop(cleared); // outside the lock: dropping a handle may free objects
        }

        #[getter]
        fn default_config(&self, py: Python<'_>) -> Py<PyAny> {
            self.core.default_payload(|config| config.clone_ref(py))
        }

        #[getter]
        fn max_keys(&self) -> usize {
            self.core.max_keys()
        }

        #[getter]
        fn idle_ttl(&self) -> f64 {
            self.idle_ttl
        }

        #[getter]
        fn clock(&self, py: Python<'_>) -> Py<PyAny> {
            self.clock.to_py(py)
        }
    }

    static ACQUIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static ACQUIRE_ASYNC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

    /// The blocking and async waits are Python (they sleep); they live with the public API.
    fn waiting_helper<'py>(
        py: Python<'py>,
        cell: &'static PyOnceLock<Py<PyAny>>,
        name: &str,
    ) -> PyResult<&'py Bound<'py, PyAny>> {
        cell.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("shared.resilience.rate_limiter")?
                    .getattr(name)?
                    .unbind(),
            )
        })
        .map(|helper| helper.bind(py))
    }

    /// One key's limiter in a `RateLimiterRegistry`: the `TokenBucket` API on
    /// the registry's bucket for that key. Cheap to create; holds no state of its own.
    #[pyclass(frozen, module = "shared._native")]
    pub struct KeyedLimiter {
        registry: Py<RateLimiterRegistry>,
        /// The key (a one-item list: a cell the GIL guards, cheaper than a
        /// mutex) and its hash change only when the registry re-points its
        /// spare handle, which nobody else holds at that moment.
        key: Py<PyList>,
        hash: AtomicU64,
        /// Where the key was last found (a cache; revalidated on every use).
        location: AtomicU64,
    }

    impl KeyedLimiter {
        fn new(
            registry: Py<RateLimiterRegistry>,
            key: &Bound<'_, PyString>,
            hash: u64,
            location: u64,
        ) -> Self {
            Self {
                registry,
                key: PyList::new(key.py(), [key])
                    .expect("a list of one item")
                    .unbind(),
                hash: AtomicU64::new(hash),
                location: AtomicU64::new(location),
            }
        }

        fn key_of<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
            Ok(self.key.bind(py).get_item(0)?.cast_into::<PyString>()?)
        }

        /// Makes this handle another key's; returns the old key (to drop
        /// outside the registry's lock). Only for a handle nobody else holds.
        fn repoint(
            &self,
            key: &Bound<'_, PyString>,
            hash: u64,
            location: u64,
        ) -> PyResult<Py<PyAny>> {
            let cell = self.key.bind(key.py());
            let old = cell.get_item(0)?.unbind();
            cell.set_item(0, key)?;
            self.hash.store(hash, Ordering::Relaxed);
            self.location.store(location, Ordering::Relaxed);
            Ok(old)
        }

        fn with_bucket<R>(
            &self,
            py: Python<'_>,
            op: impl FnOnce(&Limits, &mut u64, u64) -> Result<R, InvalidValue>,
        ) -> PyResult<R> {
            let registry = self.registry.get();
            let now = registry.clock.now_ns(py)?;
            let hash = self.hash.load(Ordering::Relaxed);
            let cached = Location::unpack(self.location.load(Ordering::Relaxed));
            let op = |limits: &Limits, tat: &mut u64| op(limits, tat, now);
            let result = match registry.core.with_bucket_at(cached, hash, op) {
                Ok(result) => result,
                Err(op) => {
                    // The slot was evicted or reused: find (or recreate) the key.
                    let key = self.key_of(py)?;
                    let (result, location) = registry
                        .core
                        .with_bucket(cached, key.to_str()?, hash, now, op)
                        .map_err(|full| full_error(py, full))?;
                    self.location.store(location.pack(), Ordering::Relaxed);
                    result
                }
            };
            result.map_err(|error| match error.tokens {
                Some((tokens, burst)) => tokens_error(py, tokens, burst),
                None => invalid_value_error(error),
            })
        }

        /// Reservations of this key carry this identity (its registry and key).
        fn owner(&self) -> usize {
            (self.registry.as_ptr() as usize) ^ (self.hash.load(Ordering::Relaxed) as usize)
        }
    }

    fn one_token_if_absent<'py>(
        py: Python<'py>,
        tokens: Option<&Bound<'py, PyAny>>,
    ) -> Bound<'py, PyAny> {
        tokens.map_or_else(|| PyFloat::new(py, 1.0).into_any(), Bound::clone)
    }

    /// A `tokens` argument as a number (absent: one token); the range is checked
    /// against the key's own burst under the lock.
    #[inline]
    fn tokens_arg(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        tokens.map_or(Ok(1.0), |tokens| number_arg(tokens, "tokens"))
    }

    #[pymethods]
    impl KeyedLimiter {
        /// Takes `tokens` if they are there now; never waits.
        #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
        fn try_acquire(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
            let tokens = tokens_arg(tokens)?;
            let granted = self.with_bucket(py, |limits, tat, now| {
                let cost = limits.cost_ns(tokens)?;
                Ok(limits
                    .grant(*tat, now, cost)
                    .map(|next| *tat = next)
                    .is_some())
            })?;
            Ok(self.registry.get().decisions.decided(granted))
        }

        /// Reserves `tokens`: `(seconds to wait, ticket)` (see `TokenBucket.reserve`).
        #[pyo3(
            signature = (tokens = None, timeout = None),
            text_signature = "($self, /, tokens=1.0, timeout=None)"
        )]
        fn reserve(
            &self,
            py: Python<'_>,
            tokens: Option<&Bound<'_, PyAny>>,
            timeout: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<(f64, Reservation)> {
            let tokens = tokens_arg(tokens)?;
            let max_wait = timeout_arg(timeout)?;
            let outcome = self.with_bucket(py, |limits, tat, now| {
                let cost = limits.cost_ns(tokens)?;
                Ok(limits
                    .reserve(*tat, now, cost, max_wait)
                    .map(|(next, wait_ns)| {
                        *tat = next;
                        (wait_ns, next, cost)
                    }))
            })?;
            let decisions = &self.registry.get().decisions;
            match outcome {
                Ok((wait_ns, tat, cost)) => {
                    decisions.reserved(wait_ns);
                    Ok((
                        ns_to_secs(wait_ns),
                        Reservation::new(self.owner(), tat, cost, tokens),
                    ))
                }
                Err(too_long) => {
                    decisions.refused();
                    Err(rate_limit_exceeded(py, ns_to_secs(too_long.wait_ns), None))
                }
            }
        }

        /// Withdraws a reservation if nothing happened since (see `TokenBucket.cancel_reservation`).
        #[pyo3(signature = (tokens, ticket))]
        fn cancel_reservation(
            &self,
            py: Python<'_>,
            tokens: &Bound<'_, PyAny>,
            ticket: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let reservation = ticket_of(ticket)?.get();
            let tokens = number_arg(tokens, "tokens")?;
            let cost = self.with_bucket(py, |limits, _, _| limits.cost_ns(tokens))?;
            let tat = cancel_error(py, reservation, self.owner(), cost, tokens)?;
            self.with_bucket(py, |limits, current, _| {
                Ok(Limits::cancel(*current, tat, limits.cost_ns(tokens)?)
                    .map(|previous| *current = previous)
                    .is_some())
            })
        }

        /// Seconds until `tokens` are available (0.0 if they are now).
        #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
        fn retry_after(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
            let tokens = tokens_arg(tokens)?;
            self.with_bucket(py, |limits, tat, now| {
                Ok(ns_to_secs(limits.wait_ns(
                    *tat,
                    now,
                    limits.cost_ns(tokens)?,
                )))
            })
        }

        /// Tokens in the key's bucket now.
        #[getter]
        fn available_tokens(&self, py: Python<'_>) -> PyResult<f64> {
            self.with_bucket(py, |limits, tat, now| Ok(limits.available(*tat, now)))
        }

        /// The key's bucket back to its configured initial tokens.
        fn reset(&self, py: Python<'_>) -> PyResult<()> {
            self.with_bucket(py, |limits, tat, now| {
                *tat = limits.initial_tat(now);
                Ok(())
            })
        }

        /// Waits until `tokens` are granted (see `TokenBucket.acquire`).
        #[pyo3(
            signature = (tokens = None, timeout = None),
            text_signature = "($self, /, tokens=1.0, timeout=None)"
        )]
        fn acquire(
            slf: &Bound<'_, Self>,
            tokens: Option<&Bound<'_, PyAny>>,
            timeout: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<()> {
            let tokens = one_token_if_absent(slf.py(), tokens);
            waiting_helper(slf.py(), &ACQUIRE, "_acquire")?.call1((slf, tokens, timeout))?;
            Ok(())
        }

        /// Awaitable: waits until `tokens` are granted (see `TokenBucket.acquire_async`).
        #[pyo3(
            signature = (tokens = None, timeout = None),
            text_signature = "($self, /, tokens=1.0, timeout=None)"
        )]
        fn acquire_async<'py>(
            slf: &Bound<'py, Self>,
            tokens: Option<&Bound<'py, PyAny>>,
            timeout: Option<&Bound<'py, PyAny>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            let tokens = one_token_if_absent(slf.py(), tokens);
            waiting_helper(slf.py(), &ACQUIRE_ASYNC, "_acquire_async")?
                .call1((slf, tokens, timeout))
        }

        /// The key's configuration (the registry's default unless `set_limiter` gave one).
        #[getter]
        fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
            let registry = self.registry.get();
            let now = registry.clock.now_ns(py)?;
            let key = self.key_of(py)?;
            let hash = self.hash.load(Ordering::Relaxed);
            registry
                .core
                .with_payload(key.to_str()?, hash, now, |config| config.clone_ref(py))
                .map_err(|full| full_error(py, full))
        }

        #[getter]
        fn key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
            self.key_of(py)
        }

        #[getter]
        fn registry(&self, py: Python<'_>) -> Py<RateLimiterRegistry> {
            self.registry.clone_ref(py)
        }

        #[getter]
        fn clock(&self, py: Python<'_>) -> Py<PyAny> {
            self.registry.get().clock.to_py(py)
        }

        fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
            visit.call(&self.registry)
        }

        fn __repr__(&self, py: Python<'_>) -> String {
            format!(
                "KeyedLimiter(key={})",
                self.key_of(py)
                    .and_then(|key| key.repr())
                    .map_or_else(|_| "?".into(), |r| r.to_string())
            )
        }
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
        r.with_bucket(loc, key, h(key), now, |limits, tat| {
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

    #[test]
    fn full_registry_evicts_idle_keys_only() {
        let r = registry(2, SEC);
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
        assert!(r.get("c", h("c"), 2 * SEC).is_ok());
        assert_eq!(r.len(), 1);
        assert!(r.contains("c", h("c")) && !r.contains("a", h("a")));
    }

    #[test]
    fn stale_handles_find_their_key_again() {
        let r = registry(1, 0);
        let a = r.get("a", h("a"), 0).unwrap();
        let b = r.get("b", h("b"), 0).unwrap(); // evicts "a", reuses its slot
        assert_eq!(a.slot, b.slot);
        assert_ne!(a.generation, b.generation);
        let ((), moved) = r.with_bucket(a, "a", h("a"), 0, |_, _| ()).unwrap();
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
