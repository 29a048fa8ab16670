//! The Python class `RateLimiterRegistry` (behind the `python` feature): argument
//! checks, the handle cache and the spare handle that `get_limiter` re-points,
//! over the table's `Registry`. Its handles (`KeyedLimiter`) live in `handles`.

use super::handles::KeyedLimiter;
use super::table::{Decisions, Full, Location, OnFull, Registry};
use crate::binding_errors::{validation, wrong_type};
use crate::clock::{ns_to_secs, secs_to_ns, Clock};
use crate::token_bucket::{
    invalid_value_error, number_arg, rate_limit_exceeded, read_limits, tokens_error,
};
use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::PyTraverseError;

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

pub(super) fn full_error(py: Python<'_>, full: Full) -> PyErr {
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
    pub(super) core: Registry<Py<PyAny>, Handles>,
    pub(super) clock: Clock,
    idle_ttl: f64,
    /// Whether the spare handle may be re-pointed: only where a reference
    /// count of 1 proves that nobody else holds it (a build with the GIL).
    reuse_spare: bool,
}

/// The result of a decision: a `bool`, or the error of a bad `tokens`.
fn decided(
    py: Python<'_>,
    result: Result<bool, crate::token_bucket::InvalidValue>,
) -> PyResult<bool> {
    result.map_err(|error| match error.tokens {
        Some((tokens, burst)) => tokens_error(py, tokens, burst),
        None => invalid_value_error(error),
    })
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
/// Inlined: returned through memory, the pair cost a store-forwarding stall.
#[inline]
fn key_parts<'a>(key: &'a Bound<'_, PyString>) -> PyResult<(&'a str, u64)> {
    match key.to_str() {
        Ok(text) => Ok((text, key.hash()? as u64)),
        Err(_) => Err(invalid_key(key)),
    }
}

#[cold]
#[inline(never)]
fn invalid_key(key: &Bound<'_, PyString>) -> PyErr {
    let checked = validation(key.py(), "key").and_then(|rule| rule.call1((key,)));
    match checked {
        Err(error) => error,
        Ok(_) => PyValueError::new_err("key must be valid text"),
    }
}

/// The key as a `str`, or a `TypeError` that names the parameter (`PyO3`
/// names it only in a note, which Python 3.9 and 3.10 do not have).
fn key_str(key: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyString>> {
    key.cast_into::<PyString>()
        .map_err(|err| wrong_type("key", "a str", &err.into_inner()))
}

/// A `tokens` argument as a number (absent: one token); the range is checked
/// against the key's own burst under the lock.
#[inline]
pub(super) fn tokens_arg(tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
    tokens.map_or(Ok(1.0), |tokens| number_arg(tokens, "tokens"))
}

#[pymethods]
impl RateLimiterRegistry {
    /// `max_keys` and `idle_ttl` are checked by `shared._validation`, the
    /// rules both backends share (construction is no hot path).
    #[new]
    #[pyo3(
        signature = (default_config, *, max_keys = None, idle_ttl = None, clock = None, on_full = None),
        text_signature = "(default_config, *, max_keys=1000000, idle_ttl=60.0, clock=None, on_full='evict')"
    )]
    fn new(
        default_config: &Bound<'_, PyAny>,
        max_keys: Option<&Bound<'_, PyAny>>,
        idle_ttl: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        on_full: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = default_config.py();
        let limits = read_limits(default_config)?;
        let max_keys: usize = match max_keys {
            Some(value) if !value.is_none() => validation(py, "int_in_range")?
                .call1(("max_keys", value, 1, u32::MAX - 1))?
                .extract()?,
            _ => 1_000_000,
        };
        let idle_ttl: f64 = match idle_ttl {
            Some(value) if !value.is_none() => validation(py, "non_negative_finite")?
                .call1(("idle_ttl", value))?
                .extract()?,
            _ => 60.0,
        };
        let on_full = match on_full {
            Some(value) if !value.is_none() => {
                let policy: String = validation(py, "on_full")?.call1((value,))?.extract()?;
                if policy == "reject" {
                    OnFull::Reject
                } else {
                    OnFull::Evict
                }
            }
            _ => OnFull::Evict,
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
            )
            .on_full(on_full),
            clock: Clock::from_py(clock)?,
            idle_ttl,
            reuse_spare: gil_enabled(default_config.py())?,
        })
    }

    /// Takes `tokens` from `key`'s bucket if they are there now: one
    /// lookup and one decision, as `get_limiter(key).try_acquire(tokens)`.
    #[pyo3(signature = (key, tokens = None), text_signature = "($self, /, key, tokens=1.0)")]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: Bound<'_, PyAny>,
        tokens: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let tokens = tokens_arg(tokens)?;
        let key = key_str(key)?;
        let (text, hash) = key_parts(&key)?;
        let now = self.clock.now_ns(py)?;
        let result = self
            .core
            .with_key(text, hash, now, |limits, tat, decisions| {
                let cost = limits.cost_ns(tokens)?;
                Ok(decisions.count(
                    limits
                        .grant(*tat, now, cost)
                        .map(|next| *tat = next)
                        .is_some(),
                ))
            })
            .map_err(|full| full_error(py, full))?;
        decided(py, result)
    }

    /// `(granted, rejected)`: decisions over all keys since creation
    /// (`try_acquire`, and reservations granted or refused), counted
    /// under the table's lock as they are made.
    fn decision_counts(&self) -> (u64, u64) {
        let Decisions {
            granted, rejected, ..
        } = self.core.decisions();
        (granted, rejected)
    }

    /// What a full registry does with a new key: `"evict"` or `"reject"`.
    #[getter]
    fn on_full(&self) -> &'static str {
        match self.core.full_policy() {
            OnFull::Evict => "evict",
            OnFull::Reject => "reject",
        }
    }

    /// The keys of the default configuration, least recently used first
    /// (the order in which a full registry evicts them).
    fn _eviction_order(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.core.eviction_order(|key| keys.push(key.to_owned()));
        keys
    }

    /// Bytes of native memory the table reserves (slots and index).
    fn _table_bytes(&self) -> usize {
        self.core.table_bytes()
    }

    /// Monotonic decision counters of all keys together, for metrics (as
    /// `TokenBucket.counters`; never cleared by `reset_all()`):
    /// `{"granted", "rejected", "waited_ns"}`.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let Decisions {
            granted,
            rejected,
            waited_ns,
        } = self.core.decisions();
        let dict = pyo3::types::PyDict::new(py);
        dict.set_item("granted", granted)?;
        dict.set_item("rejected", rejected)?;
        dict.set_item("waited_ns", waited_ns)?;
        Ok(dict)
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
                                    let replaced =
                                        std::mem::replace(&mut handles.hot[index], (packed, None));
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
