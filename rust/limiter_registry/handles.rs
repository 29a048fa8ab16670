//! `KeyedLimiter`, the handle `RateLimiterRegistry.get_limiter` gives out
//! (behind the `python` feature): the `TokenBucket` API on one key's bucket in
//! the registry's table, found again through its cached location.

use super::binding::{full_error, tokens_arg, RateLimiterRegistry};
use super::table::{Decisions, Location};
use crate::binding_errors::repr_or_placeholder;
use crate::clock::ns_to_secs;
use crate::token_bucket::{
    cancel_error, invalid_value_error, number_arg, rate_limit_exceeded, ticket_of, timeout_arg,
    tokens_error, InvalidValue, Limits, Reservation,
};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyList, PyString};
use pyo3::PyTraverseError;
use std::sync::atomic::{AtomicU64, Ordering};

static ACQUIRE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ACQUIRE_ASYNC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The blocking and async waits are Python (they sleep); they live in a leaf module.
fn waiting_helper<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("shared.resilience._waiting")?
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
    pub(super) fn new(
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
    pub(super) fn repoint(
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
        op: impl FnOnce(&Limits, &mut u64, u64, &mut Decisions) -> Result<R, InvalidValue>,
    ) -> PyResult<R> {
        let registry = self.registry.get();
        let now = registry.clock.now_ns(py)?;
        let hash = self.hash.load(Ordering::Relaxed);
        let cached = Location::unpack(self.location.load(Ordering::Relaxed));
        let op = |limits: &Limits, tat: &mut u64, decisions: &mut Decisions| {
            op(limits, tat, now, decisions)
        };
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

#[pymethods]
impl KeyedLimiter {
    /// Takes `tokens` if they are there now; never waits.
    #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
    fn try_acquire(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let tokens = tokens_arg(tokens)?;
        self.with_bucket(py, |limits, tat, now, decisions| {
            let cost = limits.cost_ns(tokens)?;
            Ok(decisions.count(
                limits
                    .grant(*tat, now, cost)
                    .map(|next| *tat = next)
                    .is_some(),
            ))
        })
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
        let outcome = self.with_bucket(py, |limits, tat, now, decisions| {
            let cost = limits.cost_ns(tokens)?;
            let outcome = limits
                .reserve(*tat, now, cost, max_wait)
                .map(|(next, wait_ns)| {
                    *tat = next;
                    (wait_ns, next, cost)
                });
            decisions.count(outcome.is_ok());
            if let Ok((wait_ns, _, _)) = outcome {
                decisions.waited(wait_ns);
            }
            Ok(outcome)
        })?;
        match outcome {
            Ok((wait_ns, tat, cost)) => Ok((
                ns_to_secs(wait_ns),
                Reservation::new(self.owner(), tat, cost, tokens),
            )),
            Err(too_long) => Err(rate_limit_exceeded(py, ns_to_secs(too_long.wait_ns), None)),
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
        let cost = self.with_bucket(py, |limits, _, _, _| limits.cost_ns(tokens))?;
        let tat = cancel_error(py, reservation, self.owner(), cost, tokens)?;
        self.with_bucket(py, |limits, current, _, _| {
            Ok(Limits::cancel(*current, tat, limits.cost_ns(tokens)?)
                .map(|previous| *current = previous)
                .is_some())
        })
    }

    /// Seconds until `tokens` are available (0.0 if they are now).
    #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
    fn retry_after(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
        let tokens = tokens_arg(tokens)?;
        self.with_bucket(py, |limits, tat, now, _| {
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
        self.with_bucket(py, |limits, tat, now, _| Ok(limits.available(*tat, now)))
    }

    /// The key's bucket back to its configured initial tokens.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.with_bucket(py, |limits, tat, now, _| {
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
        waiting_helper(slf.py(), &ACQUIRE_ASYNC, "_acquire_async")?.call1((slf, tokens, timeout))
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

    /// Handles of one key of one registry are equal (they share one bucket).
    fn __richcmp__(
        &self,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
        py: Python<'_>,
    ) -> PyResult<Py<PyAny>> {
        let Ok(other) = other.cast::<KeyedLimiter>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let same = self.registry.is(&other.registry)
            && self.hash.load(Ordering::Relaxed) == other.hash.load(Ordering::Relaxed)
            && self.key_of(py)?.to_str()? == other.key_of(py)?.to_str()?;
        match op {
            CompareOp::Eq => Ok(same.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!same).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    fn __hash__(&self) -> u64 {
        let registry = self.registry.as_ptr() as u64;
        (self.hash.load(Ordering::Relaxed) ^ registry.rotate_left(29))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 1
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "KeyedLimiter(key={})",
            self.key_of(py)
                .map_or_else(|_| "?".to_owned(), |key| repr_or_placeholder(&key))
        )
    }
}
