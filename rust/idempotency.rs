//! The bounded TTL LRU behind `InMemoryIdempotencyStore`.
//!
//! Each key holds one entry: in progress (an owner id and a lease), completed
//! (a result and an expiry) or failed (an error and an expiry). Times are
//! integer nanoseconds; the core never reads a clock (`now` is an argument),
//! so `cargo test` drives it deterministically.
//!
//! The table is bounded by `capacity`. A new key in a full table first purges
//! expired entries (only once something can have expired: `earliest` is a
//! lower bound of every expiry), then evicts the least recently used
//! *completed* entry. In-progress and failed entries are never evicted: when
//! the table holds nothing else, a new key is refused (`Full`) with the time
//! until the first of them can expire.
//!
//! Concurrency: one `std::sync::Mutex` guards the table. Every critical
//! section is a hash lookup and a few integer operations; no Python code runs
//! under it (values removed under the lock are handed back to the caller, who
//! drops them after unlocking, because dropping a Python object may run a
//! finaliser).
//!
//! The pure-Python twin (`python/shared/_pure/idempotency.py`) follows the same
//! steps; the parity tests compare them on one clock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// What `claim` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Claimed = 0,
    InProgress = 1,
    Completed = 2,
    Failed = 3,
    Mismatch = 4,
    Full = 5,
}

const NIL: u32 = u32::MAX;
const NEVER: u64 = u64::MAX;

/// FNV-1a: keys are short ids, and the table is not exposed to untrusted
/// choice of many colliding keys any more than a Python dict is.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

type Index = HashMap<Box<str>, u32, BuildHasherDefault<Fnv>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InProgress,
    Completed,
    Failed,
}

struct Slot<V> {
    key: Box<str>,
    state: State,
    fingerprint: Box<str>,
    owner: u64,
    value: Option<V>,
    expires: u64,
    /// The LRU list of completed entries: `prev` is more recent, `next` older.
    prev: u32,
    next: u32,
}

/// The outcome of `claim`: the code, and for `InProgress`/`Full` the
/// nanoseconds to wait, for `Completed`/`Failed` the stored value.
pub enum Claimed<'a, V> {
    Code(Code),
    Wait(Code, u64),
    Value(Code, &'a V),
}

/// The table (guarded by the binding's mutex).
pub struct Table<V> {
    index: Index,
    slots: Vec<Option<Slot<V>>>,
    vacant: Vec<u32>,
    /// Most recently used completed entry.
    head: u32,
    /// Least recently used completed entry (evicted first).
    tail: u32,
    /// No entry expires before this instant (exact right after a purge).
    earliest: u64,
    capacity: usize,
    evictions: u64,
    /// Values removed by the last operation, for the caller to drop.
    pub removed: Vec<V>,
}

impl<V> Table<V> {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            index: Index::default(),
            slots: Vec::new(),
            vacant: Vec::new(),
            head: NIL,
            tail: NIL,
            earliest: NEVER,
            capacity,
            evictions: 0,
            removed: Vec::new(),
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn slot(&self, i: u32) -> &Slot<V> {
        self.slots[i as usize]
            .as_ref()
            .expect("an indexed slot is occupied")
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot<V> {
        self.slots[i as usize]
            .as_mut()
            .expect("an indexed slot is occupied")
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let slot = self.slot(i);
            (slot.prev, slot.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
        let slot = self.slot_mut(i);
        slot.prev = NIL;
        slot.next = NIL;
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        {
            let slot = self.slot_mut(i);
            slot.prev = NIL;
            slot.next = head;
        }
        if head == NIL {
            self.tail = i;
        } else {
            self.slot_mut(head).prev = i;
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Removes slot `i` (indexed), keeping its value in `removed`.
    fn remove_slot(&mut self, i: u32) {
        if self.slot(i).state == State::Completed {
            self.unlink(i);
        }
        let slot = self.slots[i as usize].take().expect("occupied");
        self.index.remove(&slot.key);
        self.vacant.push(i);
        if let Some(value) = slot.value {
            self.removed.push(value);
        }
    }

    /// The live entry of `key`; an expired one is removed on the way.
    fn live(&mut self, key: &str, now: u64) -> Option<u32> {
        let i = *self.index.get(key)?;
        if self.slot(i).expires <= now {
            self.remove_slot(i);
            return None;
        }
        Some(i)
    }

    /// The entry of `key` if `owner` holds a live lease on it.
    fn held(&mut self, key: &str, owner: u64, now: u64) -> Option<u32> {
        let i = *self.index.get(key)?;
        let slot = self.slot(i);
        if slot.state != State::InProgress || slot.owner != owner {
            return None;
        }
        if slot.expires <= now {
            self.remove_slot(i);
            return None;
        }
        Some(i)
    }

    fn note_expiry(&mut self, expires: u64) {
        self.earliest = self.earliest.min(expires);
    }

    /// Frees one place for a new key: `None`, or nanoseconds until one can be freed.
    fn make_room(&mut self, now: u64) -> Option<u64> {
        if self.index.len() < self.capacity {
            return None;
        }
        if now >= self.earliest {
            let mut earliest = NEVER;
            for i in 0..self.slots.len() as u32 {
                let Some(expires) = self.slots[i as usize].as_ref().map(|slot| slot.expires) else {
                    continue;
                };
                if expires <= now {
                    self.remove_slot(i);
                } else {
                    earliest = earliest.min(expires);
                }
            }
            self.earliest = earliest;
            if self.index.len() < self.capacity {
                return None;
            }
        }
        if self.tail != NIL {
            self.remove_slot(self.tail);
            self.evictions += 1;
            return None;
        }
        Some(self.earliest.saturating_sub(now))
    }

    fn insert(&mut self, key: &str, slot: Slot<V>) {
        let state = slot.state;
        let expires = slot.expires;
        let i = if let Some(i) = self.vacant.pop() {
            self.slots[i as usize] = Some(slot);
            i
        } else {
            self.slots.push(Some(slot));
            (self.slots.len() - 1) as u32
        };
        self.index.insert(key.into(), i);
        if state == State::Completed {
            self.push_front(i);
        }
        self.note_expiry(expires);
    }

    /// Claims `key` for `owner` until `now + lease_ns`, or says why not.
    pub fn claim(
        &mut self,
        key: &str,
        fingerprint: &str,
        lease_ns: u64,
        owner: u64,
        now: u64,
    ) -> Claimed<'_, V> {
        if let Some(i) = self.live(key, now) {
            let slot = self.slot(i);
            if !fingerprint.is_empty()
                && !slot.fingerprint.is_empty()
                && *slot.fingerprint != *fingerprint
            {
                return Claimed::Code(Code::Mismatch);
            }
            let (state, expires) = (slot.state, slot.expires);
            return match state {
                State::InProgress => Claimed::Wait(Code::InProgress, expires - now),
                State::Failed => Claimed::Value(Code::Failed, self.value_of(i)),
                State::Completed => {
                    self.touch(i);
                    Claimed::Value(Code::Completed, self.value_of(i))
                }
            };
        }
        if let Some(wait) = self.make_room(now) {
            return Claimed::Wait(Code::Full, wait);
        }
        self.insert(
            key,
            Slot {
                key: key.into(),
                state: State::InProgress,
                fingerprint: fingerprint.into(),
                owner,
                value: None,
                expires: now.saturating_add(lease_ns),
                prev: NIL,
                next: NIL,
            },
        );
        Claimed::Code(Code::Claimed)
    }

    fn value_of(&self, i: u32) -> &V {
        self.slot(i)
            .value
            .as_ref()
            .expect("a settled entry has a value")
    }

    /// Stores `value` as completed (or failed) for `ttl_ns` if `owner` holds `key`.
    /// On `false`, `value` is handed back through `removed`.
    pub fn settle(
        &mut self,
        key: &str,
        owner: u64,
        value: V,
        ttl_ns: u64,
        failed: bool,
        now: u64,
    ) -> bool {
        let Some(i) = self.held(key, owner, now) else {
            self.removed.push(value);
            return false;
        };
        let expires = now.saturating_add(ttl_ns);
        let slot = self.slot_mut(i);
        slot.value = Some(value);
        slot.expires = expires;
        if failed {
            slot.state = State::Failed;
        } else {
            slot.state = State::Completed;
            self.push_front(i);
        }
        self.note_expiry(expires);
        true
    }

    /// Frees `key` if `owner` holds it.
    pub fn release(&mut self, key: &str, owner: u64, now: u64) -> bool {
        match self.held(key, owner, now) {
            Some(i) => {
                self.remove_slot(i);
                true
            }
            None => false,
        }
    }

    /// Renews `owner`'s lease on `key` until `now + lease_ns`.
    pub fn extend(&mut self, key: &str, owner: u64, lease_ns: u64, now: u64) -> bool {
        match self.held(key, owner, now) {
            Some(i) => {
                let expires = now.saturating_add(lease_ns);
                self.slot_mut(i).expires = expires;
                self.note_expiry(expires);
                true
            }
            None => false,
        }
    }

    /// Forgets `key` whatever its state; true if a live entry was removed.
    pub fn delete(&mut self, key: &str, now: u64) -> bool {
        match self.live(key, now) {
            Some(i) => {
                self.remove_slot(i);
                true
            }
            None => false,
        }
    }

    /// The completed result of `key`.
    pub fn get(&mut self, key: &str, now: u64) -> Option<&V> {
        let i = self.live(key, now)?;
        if self.slot(i).state != State::Completed {
            return None;
        }
        self.touch(i);
        Some(self.value_of(i))
    }

    /// Stores `value` as `key`'s completed result whatever was there; false
    /// (and `value` handed back through `removed`) only when the table is full
    /// of in-progress and failed entries.
    pub fn set(&mut self, key: &str, value: V, ttl_ns: u64, now: u64) -> bool {
        if let Some(i) = self.live(key, now) {
            self.remove_slot(i);
        } else if self.make_room(now).is_some() {
            self.removed.push(value);
            return false;
        }
        self.insert(
            key,
            Slot {
                key: key.into(),
                state: State::Completed,
                fingerprint: "".into(),
                owner: 0,
                value: Some(value),
                expires: now.saturating_add(ttl_ns),
                prev: NIL,
                next: NIL,
            },
        );
        true
    }

    /// Whether a completed result of `key` is stored.
    pub fn exists(&mut self, key: &str, now: u64) -> bool {
        self.live(key, now)
            .is_some_and(|i| self.slot(i).state == State::Completed)
    }

    /// The state code of `key`'s live entry.
    pub fn state(&mut self, key: &str, now: u64) -> Option<Code> {
        self.live(key, now).map(|i| match self.slot(i).state {
            State::InProgress => Code::InProgress,
            State::Completed => Code::Completed,
            State::Failed => Code::Failed,
        })
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        for slot in self.slots.drain(..).flatten() {
            if let Some(value) = slot.value {
                self.removed.push(value);
            }
        }
        self.index.clear();
        self.vacant.clear();
        self.head = NIL;
        self.tail = NIL;
        self.earliest = NEVER;
    }

    /// Every stored value (for the garbage collector's traversal).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|slot| slot.value.as_ref())
            .chain(self.removed.iter())
    }
}

#[cfg(feature = "python")]
pub use binding::IdempotencyLru;

#[cfg(feature = "python")]
mod binding {
    use super::{Claimed, Table};
    use crate::binding_errors::{out_of_range, repr_or_placeholder, validation, wrong_type};
    use crate::clock::{ns_to_secs, Clock};
    use pyo3::exceptions::PyValueError;
    use pyo3::gc::PyVisit;
    use pyo3::prelude::*;
    use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
    use pyo3::PyTraverseError;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The longest duration accepted (`shared._validation.MAX_SECONDS`).
    const MAX_SECONDS: f64 = 1e9;

    /// A str that is valid text, with the twin's errors.
    fn text<'a>(name: &str, value: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
        let Ok(string) = value.cast::<PyString>() else {
            return Err(wrong_type(name, "a str", value));
        };
        match string.to_str() {
            Ok(text) => Ok(text),
            Err(_) => Err(PyValueError::new_err(format!(
                "{name} must be valid text (no lone surrogates), got {}",
                value.repr()?
            ))),
        }
    }

    /// A duration in (0, `MAX_SECONDS`] seconds, in nanoseconds; errors from
    /// `shared._validation.positive_finite` (the twin's).
    fn duration_ns(name: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
        if let Ok(float) = value.cast_exact::<PyFloat>() {
            let seconds = float.value();
            if seconds > 0.0 && seconds <= MAX_SECONDS {
                return Ok((seconds * 1e9) as u64);
            }
        }
        let seconds: f64 = validation(value.py(), "positive_finite")?
            .call1((name, value))?
            .extract()?;
        Ok((seconds * 1e9) as u64)
    }

    fn owner_id(value: &Bound<'_, PyAny>) -> PyResult<u64> {
        if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
            return Err(wrong_type("owner", "an int", value));
        }
        value
            .extract::<u64>()
            .map_err(|_| out_of_range("owner", "an int in [0, 2**64)", repr_or_placeholder(value)))
    }

    /// The core of `shared.resilience.InMemoryIdempotencyStore`.
    #[pyclass(frozen, module = "shared._native")]
    pub struct IdempotencyLru {
        table: Mutex<Table<Py<PyAny>>>,
        clock: Clock,
        capacity: usize,
    }

    /// Drops the values an operation removed, after the lock is released.
    struct Unlocked<'a>(MutexGuard<'a, Table<Py<PyAny>>>);

    impl IdempotencyLru {
        fn lock(&self) -> Unlocked<'_> {
            Unlocked(self.table.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    impl std::ops::Deref for Unlocked<'_> {
        type Target = Table<Py<PyAny>>;
        fn deref(&self) -> &Table<Py<PyAny>> {
            &self.0
        }
    }

    impl std::ops::DerefMut for Unlocked<'_> {
        fn deref_mut(&mut self) -> &mut Table<Py<PyAny>> {
            &mut self.0
        }
    }

    impl Unlocked<'_> {
        /// Releases the lock, then drops what was removed (finalisers may run).
        fn finish(mut self) {
            let removed = std::mem::take(&mut self.0.removed);
            drop(self);
            drop(removed);
        }
    }

    #[pymethods]
    impl IdempotencyLru {
        #[new]
        #[pyo3(signature = (capacity = None, *, clock = None), text_signature = "(capacity=10000, *, clock=None)")]
        fn new(
            py: Python<'_>,
            capacity: Option<&Bound<'_, PyAny>>,
            clock: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<Self> {
            let capacity: usize = match capacity {
                Some(value) => validation(py, "int_in_range")?
                    .call1(("capacity", value, 1, u32::MAX - 1))?
                    .extract()?,
                None => 10_000,
            };
            Ok(Self {
                table: Mutex::new(Table::new(capacity)),
                clock: Clock::from_py(clock)?,
                capacity,
            })
        }

        /// Claims `key` for `owner` for `lease` seconds: `(code, payload)`.
        fn claim(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            fingerprint: &Bound<'_, PyAny>,
            lease: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
        ) -> PyResult<(u8, Py<PyAny>)> {
            let key = text("key", key)?;
            let fingerprint = text("fingerprint", fingerprint)?;
            let lease_ns = duration_ns("lease", lease)?;
            let owner = owner_id(owner)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let answer = match table.claim(key, fingerprint, lease_ns, owner, now) {
                Claimed::Code(code) => (code as u8, py.None()),
                Claimed::Wait(code, ns) => (
                    code as u8,
                    PyFloat::new(py, ns_to_secs(ns)).into_any().unbind(),
                ),
                Claimed::Value(code, value) => (code as u8, value.clone_ref(py)),
            };
            table.finish();
            Ok(answer)
        }

        /// Stores `result` for `ttl` seconds if `owner` holds `key`.
        fn complete(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
            result: &Bound<'_, PyAny>,
            ttl: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            self.settle(py, key, owner, result, ttl, false)
        }

        /// Records `key` as failed with `error` for `ttl` seconds if `owner` holds it.
        fn fail(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
            error: &Bound<'_, PyAny>,
            ttl: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            self.settle(py, key, owner, error, ttl, true)
        }

        /// Frees `key` if `owner` holds it.
        fn release(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let key = text("key", key)?;
            let owner = owner_id(owner)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let done = table.release(key, owner, now);
            table.finish();
            Ok(done)
        }

        /// Renews `owner`'s lease on `key` to `lease` seconds from now.
        fn extend(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
            lease: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let key = text("key", key)?;
            let owner = owner_id(owner)?;
            let lease_ns = duration_ns("lease", lease)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let done = table.extend(key, owner, lease_ns, now);
            table.finish();
            Ok(done)
        }

        /// Forgets `key` whatever its state; true if a live entry was removed.
        fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
            let key = text("key", key)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let done = table.delete(key, now);
            table.finish();
            Ok(done)
        }

        /// The completed result of `key`, or None.
        fn get(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
            let key = text("key", key)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let value = table
                .get(key, now)
                .map_or_else(|| py.None(), |value| value.clone_ref(py));
            table.finish();
            Ok(value)
        }

        /// Stores `value` as `key`'s completed result whatever was there.
        fn set(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            value: &Bound<'_, PyAny>,
            ttl: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let key = text("key", key)?;
            let ttl_ns = duration_ns("ttl", ttl)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let done = table.set(key, value.clone().unbind(), ttl_ns, now);
            table.finish();
            Ok(done)
        }

        /// Whether a completed result of `key` is stored.
        fn exists(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
            let key = text("key", key)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let found = table.exists(key, now);
            table.finish();
            Ok(found)
        }

        /// The state code of `key`'s live entry, or None.
        fn state(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<u8>> {
            let key = text("key", key)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let state = table.state(key, now).map(|code| code as u8);
            table.finish();
            Ok(state)
        }

        /// Forgets every entry.
        fn clear(&self) {
            let mut table = self.lock();
            table.clear();
            table.finish();
        }

        fn __len__(&self) -> usize {
            self.lock().len()
        }

        #[getter]
        fn capacity(&self) -> usize {
            self.capacity
        }

        /// Completed entries evicted to make room (not counting expiries).
        #[getter]
        fn evictions(&self) -> u64 {
            self.lock().evictions()
        }

        #[getter]
        fn clock(&self, py: Python<'_>) -> Py<PyAny> {
            self.clock.to_py(py)
        }

        fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
            // A result may refer back to the store; the collector must see it.
            // `try_lock`: never block the collector (a holder runs no Python code).
            if let Ok(table) = self.table.try_lock() {
                for value in table.values() {
                    visit.call(value)?;
                }
            }
            if let Clock::Manual(clock) = &self.clock {
                visit.call(clock)?;
            }
            Ok(())
        }
    }

    impl IdempotencyLru {
        fn settle(
            &self,
            py: Python<'_>,
            key: &Bound<'_, PyAny>,
            owner: &Bound<'_, PyAny>,
            value: &Bound<'_, PyAny>,
            ttl: &Bound<'_, PyAny>,
            failed: bool,
        ) -> PyResult<bool> {
            let key = text("key", key)?;
            let owner = owner_id(owner)?;
            let ttl_ns = duration_ns("ttl", ttl)?;
            let now = self.clock.now_ns(py)?;
            let mut table = self.lock();
            let done = table.settle(key, owner, value.clone().unbind(), ttl_ns, failed, now);
            table.finish();
            Ok(done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Claimed, Code, Table};

    const S: u64 = 1_000_000_000;

    fn code<V>(answer: &Claimed<'_, V>) -> Code {
        match answer {
            Claimed::Code(code) | Claimed::Wait(code, _) | Claimed::Value(code, _) => *code,
        }
    }

    #[test]
    fn one_claim_per_key_and_only_the_owner_settles() {
        let mut t: Table<u32> = Table::new(4);
        assert_eq!(code(&t.claim("k", "f", 10 * S, 1, 0)), Code::Claimed);
        assert_eq!(code(&t.claim("k", "f", 10 * S, 2, 0)), Code::InProgress);
        assert_eq!(code(&t.claim("k", "g", 10 * S, 2, 0)), Code::Mismatch);
        assert!(!t.settle("k", 2, 7, S, false, 1));
        assert!(t.settle("k", 1, 7, 60 * S, false, 1));
        match t.claim("k", "f", 10 * S, 3, 2) {
            Claimed::Value(Code::Completed, v) => assert_eq!(*v, 7),
            _ => panic!("completed expected"),
        }
        assert_eq!(t.get("k", 2), Some(&7));
        assert_eq!(t.get("k", 61 * S), None);
    }

    #[test]
    fn an_expired_lease_frees_the_key_and_voids_the_old_owner() {
        let mut t: Table<u32> = Table::new(4);
        assert_eq!(code(&t.claim("k", "f", S, 1, 0)), Code::Claimed);
        assert_eq!(code(&t.claim("k", "f", S, 2, S)), Code::Claimed);
        assert!(!t.settle("k", 1, 5, S, false, S));
        assert!(!t.extend("k", 1, S, S));
        assert!(t.extend("k", 2, 5 * S, S));
        assert!(t.release("k", 2, 5 * S));
        assert!(t.is_empty());
    }

    #[test]
    fn eviction_takes_completed_entries_only() {
        let mut t: Table<u32> = Table::new(2);
        assert!(t.set("a", 1, 100 * S, 0));
        assert_eq!(code(&t.claim("b", "", 100 * S, 1, 0)), Code::Claimed);
        // Full: "a" (completed) is evicted, never the in-progress "b".
        assert_eq!(code(&t.claim("c", "", 100 * S, 2, 0)), Code::Claimed);
        assert_eq!(t.evictions(), 1);
        assert!(!t.exists("a", 0));
        // Full of claims: refused with the time until the first lease ends.
        match t.claim("d", "", S, 3, 10 * S) {
            Claimed::Wait(Code::Full, wait) => assert_eq!(wait, 90 * S),
            _ => panic!("full expected"),
        }
        // Once a lease ends, the purge makes room.
        assert_eq!(code(&t.claim("d", "", S, 3, 100 * S)), Code::Claimed);
    }

    #[test]
    fn lru_order_follows_use() {
        let mut t: Table<u32> = Table::new(2);
        assert!(t.set("a", 1, 100 * S, 0));
        assert!(t.set("b", 2, 100 * S, 0));
        assert_eq!(t.get("a", 1), Some(&1));
        assert!(t.set("c", 3, 100 * S, 2));
        assert!(t.exists("a", 3));
        assert!(!t.exists("b", 3));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn failed_entries_stay_until_deleted_or_expired() {
        let mut t: Table<u32> = Table::new(1);
        assert_eq!(code(&t.claim("k", "f", S, 1, 0)), Code::Claimed);
        assert!(t.settle("k", 1, 9, 10 * S, true, 0));
        assert_eq!(code(&t.claim("k", "f", S, 2, 1)), Code::Failed);
        assert!(!t.set("other", 1, S, 1));
        assert_eq!(t.removed, vec![1]);
        assert!(t.delete("k", 1));
        assert_eq!(code(&t.claim("k", "f", S, 2, 1)), Code::Claimed);
    }
}
