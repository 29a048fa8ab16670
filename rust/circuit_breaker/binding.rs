//! `CircuitBreakerCore`, the Python class over the machine (behind the
//! `python` feature). Its child `ffi` holds the C-API fast paths (the
//! vectorcall `call`, context variables, chained raises) and imports nothing
//! from here: the class reaches it through the `ffi::FastCall` trait.

// The one module of the breaker allowed `unsafe` code (see its documentation).
#[allow(unsafe_code)]
mod ffi;

use super::machine::lock;
use super::machine::{Admission, Breaker, Outcome, Permit, Settings, Transition};
use super::window::WindowSettings;
use super::word::{State, MAX_COUNT};
use crate::binding_errors::{out_of_range, repr_or_placeholder};
use crate::clock::{ns_to_secs, secs_to_ns, Clock};
use ffi::{context_get, context_set, fresh_error, raise_chained, FastCall};
use pyo3::exceptions::{
    PyBaseException, PyException, PyGeneratorExit, PyKeyboardInterrupt, PyRuntimeError,
    PySystemExit, PyValueError,
};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{IntoPyDict, PyDict, PyString, PyTuple, PyType};
use pyo3::{intern, PyTraverseError};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

static OPEN_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CANCELLED_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// The `with` blocks in progress in the current context (thread or task):
/// a flat tuple `(breaker, lease, breaker, lease, ...)`, innermost last.
static WITH_LEASES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn with_leases(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    WITH_LEASES
        .get_or_try_init(py, || {
            py.import("contextvars")?
                .getattr("ContextVar")?
                .call(
                    ("shared_circuit_breaker_leases",),
                    Some(&[("default", PyTuple::empty(py))].into_py_dict(py)?),
                )
                .map(Bound::unbind)
        })
        .map(|var| var.bind(py))
}

/// The core of `shared.resilience.CircuitBreaker`.
///
/// `call` runs the protected function itself and classifies its exception,
/// so a closed call costs one native call. The public class subclasses this
/// and adds `call_async`, `protect` and the context managers.
#[pyclass(subclass, frozen, weakref, module = "shared._native")]
pub struct CircuitBreakerCore {
    core: Breaker,
    name: Py<PyString>,
    timeout: f64,
    probe_timeout: f64,
    clock: Clock,
    /// `KeyboardInterrupt`, `SystemExit`, `GeneratorExit`, `CancelledError`
    /// and `ignore_exceptions`.
    neutral: Py<PyTuple>,
    expected: Py<PyTuple>,
    ignored: Py<PyTuple>,
    is_failure_result: Option<Py<PyAny>>,
    on_state_change: Option<Py<PyAny>>,
    /// Permits of the `with` blocks in progress, by lease number. The
    /// context holds the lease numbers (`WITH_LEASES`); this map holds the
    /// permits, so a block that exits in another context than it entered
    /// still finds one (see `__exit__`).
    leases: Mutex<Vec<(u64, Permit)>>,
    next_lease: AtomicU64,
}

fn count_setting(name: &str, value: i64) -> PyResult<u32> {
    match u32::try_from(value) {
        Ok(count) if (1..=MAX_COUNT).contains(&count) => Ok(count),
        _ => Err(out_of_range(
            name,
            &format!("between 1 and {MAX_COUNT}"),
            value,
        )),
    }
}

fn seconds_setting(name: &str, value: f64) -> PyResult<u64> {
    if !value.is_finite() || value <= 0.0 {
        return Err(out_of_range(name, "a finite number > 0", value));
    }
    Ok(secs_to_ns(value).max(1))
}

fn rate_setting(name: &str, value: f64) -> PyResult<f64> {
    if !(value > 0.0 && value <= 1.0) {
        return Err(out_of_range(name, "in (0, 1]", value));
    }
    Ok(value)
}

fn exception_tuple<'py>(
    py: Python<'py>,
    value: Option<&Bound<'py, PyTuple>>,
    default: &[Bound<'py, PyType>],
) -> Bound<'py, PyTuple> {
    match value {
        Some(tuple) => tuple.clone(),
        None => PyTuple::new(py, default).expect("a tuple of types"),
    }
}

impl CircuitBreakerCore {
    fn now_fn<'a>(&'a self, py: Python<'a>) -> impl FnMut() -> PyResult<u64> + 'a {
        move || self.clock.now_ns(py)
    }

    /// Admits a call, or raises the `CircuitBreakerOpenError` that rejects it.
    fn admit(&self, breaker: &Bound<'_, Self>) -> PyResult<Permit> {
        self.try_admit(breaker)?
            .map_err(|error| raise_chained(&error))
    }

    /// Admits a call, or returns the `CircuitBreakerOpenError` that rejects
    /// it, not raised yet.
    fn try_admit<'py>(
        &self,
        breaker: &Bound<'py, Self>,
    ) -> PyResult<Result<Permit, Bound<'py, PyBaseException>>> {
        let py = breaker.py();
        match self.core.admit(&mut self.now_fn(py))? {
            Admission::Admitted { permit, transition } => {
                if let Err(err) = self.notify(breaker, transition) {
                    // The call will not run: give its probe slot back.
                    self.core
                        .record(permit, Outcome::Neutral, &mut self.now_fn(py))?;
                    return Err(err);
                }
                Ok(Ok(permit))
            }
            Admission::Rejected { retry_after_ns } => {
                self.open_error(py, ns_to_secs(retry_after_ns)).map(Err)
            }
        }
    }

    /// `CircuitBreakerOpenError(name, retry_after)`, built without
    /// running Python code (the class has no Python `__init__`).
    fn open_error<'py>(
        &self,
        py: Python<'py>,
        retry_after: f64,
    ) -> PyResult<Bound<'py, PyBaseException>> {
        let cls = OPEN_ERROR.get_or_try_init(py, || {
            py.import("shared.resilience.exceptions")?
                .getattr("CircuitBreakerOpenError")?
                .cast_into::<PyType>()
                .map(Bound::unbind)
                .map_err(PyErr::from)
        })?;
        fresh_error(cls.bind(py), self.name.bind(py), retry_after)
    }

    /// Runs one call through the breaker: `invoke` calls the protected function.
    fn call_with<'py>(
        slf: &Bound<'py, Self>,
        invoke: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let permit = this.admit(slf)?;
        match invoke() {
            Ok(value) => {
                this.record_value(slf, permit, &value)?;
                Ok(value)
            }
            Err(error) => {
                this.record_error(slf, permit, &error)?;
                Err(error)
            }
        }
    }

    fn classify(&self, py: Python<'_>, error: &PyErr) -> Outcome {
        if error.is_instance(py, self.neutral.bind(py).as_any()) {
            Outcome::Neutral
        } else if error.is_instance(py, self.expected.bind(py).as_any()) {
            Outcome::Failure
        } else {
            Outcome::Neutral
        }
    }

    /// `classify` for an exception object (what `__exit__` receives).
    fn classify_value(&self, error: &Bound<'_, PyAny>) -> PyResult<Outcome> {
        let py = error.py();
        Ok(if error.is_instance(self.neutral.bind(py).as_any())? {
            Outcome::Neutral
        } else if error.is_instance(self.expected.bind(py).as_any())? {
            Outcome::Failure
        } else {
            Outcome::Neutral
        })
    }

    /// Puts `(breaker, lease)` on top of the current context's `with` leases.
    fn push_lease(breaker: &Bound<'_, Self>, lease: u64) -> PyResult<()> {
        let py = breaker.py();
        let var = with_leases(py)?;
        let stack = context_get(var)?.cast_into::<PyTuple>()?;
        let lease = lease.into_pyobject(py)?.into_any();
        let pushed = if stack.is_empty() {
            PyTuple::new(py, [breaker.as_any().clone(), lease])?
        } else {
            let mut items: Vec<Bound<'_, PyAny>> = Vec::with_capacity(stack.len() + 2);
            items.extend(stack.iter());
            items.push(breaker.as_any().clone());
            items.push(lease);
            PyTuple::new(py, items)?
        };
        context_set(var, pushed.as_any())
    }

    /// Takes the permit of outstanding lease `lease`, if it is still outstanding.
    fn take_outstanding(&self, lease: u64) -> Option<Permit> {
        let mut leases = lock(&self.leases);
        // The innermost blocks are the newest: search from the end.
        let at = leases.iter().rposition(|&(number, _)| number == lease)?;
        Some(leases.remove(at).1)
    }

    /// The permit of the `with` block that ends: the innermost lease of this
    /// breaker in the current context that is still outstanding, else (a
    /// block entered in another task or context) the oldest outstanding one,
    /// so every exit gives back exactly one permit. Leases of this breaker
    /// passed over on the way (taken by such an exit) leave the context too.
    fn take_lease(breaker: &Bound<'_, Self>) -> PyResult<Permit> {
        let py = breaker.py();
        let this = breaker.get();
        let var = with_leases(py)?;
        let stack = context_get(var)?.cast_into::<PyTuple>()?;
        let len = stack.len() & !1;
        let mut forget: Vec<usize> = Vec::new(); // entries passed over: rare
        let mut found = None;
        let mut i = len;
        while i >= 2 {
            i -= 2;
            if !stack.get_item(i)?.is(breaker) {
                continue;
            }
            let lease: u64 = stack.get_item(i + 1)?.extract()?;
            if let Some(permit) = this.take_outstanding(lease) {
                found = Some((i, permit));
                break;
            }
            forget.push(i);
        }
        if let Some((at, _)) = found {
            if forget.is_empty() && at + 2 == len {
                context_set(var, stack.get_slice(0, at).as_any())?;
            } else {
                forget.push(at);
            }
        }
        if !forget.is_empty() {
            let kept: Vec<Bound<'_, PyAny>> = stack
                .iter()
                .enumerate()
                .filter(|(j, _)| !forget.contains(&(j & !1)))
                .map(|(_, item)| item)
                .collect();
            context_set(var, PyTuple::new(py, kept)?.as_any())?;
        }
        let permit = found.map(|(_, permit)| permit).or_else(|| {
            let mut leases = lock(&this.leases);
            // Lease numbers grow: the smallest is the oldest.
            let oldest = (0..leases.len()).min_by_key(|&at| leases[at].0)?;
            Some(leases.remove(oldest).1)
        });
        permit.ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "circuit breaker {}: __exit__ without __enter__",
                repr_or_placeholder(this.name.bind(py))
            ))
        })
    }

    fn record(&self, breaker: &Bound<'_, Self>, permit: Permit, outcome: Outcome) -> PyResult<()> {
        let transition = self
            .core
            .record(permit, outcome, &mut self.now_fn(breaker.py()))?;
        self.notify(breaker, transition)
    }

    /// Success, unless `is_failure_result` says the value is a failure.
    fn record_value(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Permit,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let outcome = match &self.is_failure_result {
            None => Outcome::Success,
            Some(predicate) => match predicate
                .bind(breaker.py())
                .call1((value,))
                .and_then(|r| r.is_truthy())
            {
                Ok(true) => Outcome::Failure,
                Ok(false) => Outcome::Success,
                Err(err) => {
                    self.record(breaker, permit, Outcome::Neutral)?;
                    return Err(err);
                }
            },
        };
        self.record(breaker, permit, outcome)
    }

    /// Records an exception that the caller re-raises. If recording fails
    /// (a listener raised), that error is returned, chained to this one.
    fn record_error(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Permit,
        error: &PyErr,
    ) -> PyResult<()> {
        let py = breaker.py();
        let outcome = self.classify(py, error);
        self.record(breaker, permit, outcome)
            .inspect_err(|failure| {
                failure.set_context(py, Some(error.clone_ref(py)));
            })
    }

    /// Calls `on_state_change(breaker, old, new)` after every lock is released.
    fn notify(&self, breaker: &Bound<'_, Self>, transition: Option<Transition>) -> PyResult<()> {
        let (Some(transition), Some(callback)) = (transition, &self.on_state_change) else {
            return Ok(());
        };
        let py = breaker.py();
        let args = (
            breaker,
            state_name(py, transition.from),
            state_name(py, transition.to),
        );
        callback.bind(py).call1(args).map(drop)
    }
}

fn state_name(py: Python<'_>, state: State) -> &Bound<'_, PyString> {
    match state {
        State::Closed => intern!(py, "closed"),
        State::HalfOpen => intern!(py, "half_open"),
        State::Open | State::ForcedOpen => intern!(py, "open"),
    }
}

fn permit_from_int(permit: u128) -> Permit {
    Permit {
        word: permit as u64,
        start_ns: (permit >> 64) as u64,
    }
}

fn permit_to_int(permit: Permit) -> u128 {
    (u128::from(permit.start_ns) << 64) | u128::from(permit.word)
}

#[pymethods]
impl CircuitBreakerCore {
    #[new]
    #[pyo3(signature = (
        name, *, failure_threshold=5, success_threshold=2, timeout=60.0,
        expected_exceptions=None, ignore_exceptions=None, half_open_max_calls=1,
        probe_timeout=None,
        sliding_window=None, minimum_calls=100, failure_rate_threshold=0.5,
        slow_call_duration=None, slow_call_rate_threshold=1.0,
        is_failure_result=None, on_state_change=None, clock=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: Bound<'_, PyString>,
        failure_threshold: i64,
        success_threshold: i64,
        timeout: f64,
        expected_exceptions: Option<Bound<'_, PyTuple>>,
        ignore_exceptions: Option<Bound<'_, PyTuple>>,
        half_open_max_calls: i64,
        probe_timeout: Option<f64>,
        sliding_window: Option<f64>,
        minimum_calls: i64,
        failure_rate_threshold: f64,
        slow_call_duration: Option<f64>,
        slow_call_rate_threshold: f64,
        is_failure_result: Option<Py<PyAny>>,
        on_state_change: Option<Py<PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let window = match sliding_window {
            None => {
                if slow_call_duration.is_some() {
                    return Err(PyValueError::new_err(
                        "slow_call_duration needs sliding_window (slow calls are rated over a window)",
                    ));
                }
                None
            }
            Some(seconds) => Some(WindowSettings {
                window_ns: seconds_setting("sliding_window", seconds)?,
                minimum_calls: u64::try_from(minimum_calls)
                    .ok()
                    .filter(|&calls| calls >= 1)
                    .ok_or_else(|| {
                        PyValueError::new_err(format!(
                            "minimum_calls must be >= 1, got {minimum_calls}"
                        ))
                    })?,
                failure_rate_threshold: rate_setting(
                    "failure_rate_threshold",
                    failure_rate_threshold,
                )?,
                slow_call_ns: slow_call_duration
                    .map(|s| seconds_setting("slow_call_duration", s))
                    .transpose()?,
                slow_call_rate_threshold: rate_setting(
                    "slow_call_rate_threshold",
                    slow_call_rate_threshold,
                )?,
            }),
        };
        let settings = Settings {
            failure_threshold: count_setting("failure_threshold", failure_threshold)?,
            success_threshold: count_setting("success_threshold", success_threshold)?,
            half_open_max_calls: count_setting("half_open_max_calls", half_open_max_calls)?,
            open_timeout_ns: seconds_setting("timeout", timeout)?,
            probe_timeout_ns: seconds_setting("probe_timeout", probe_timeout.unwrap_or(timeout))?,
            window,
        };
        let expected = exception_tuple(
            py,
            expected_exceptions.as_ref(),
            &[py.get_type::<PyException>()],
        );
        let ignored = exception_tuple(py, ignore_exceptions.as_ref(), &[]);
        let cancelled = CANCELLED_ERROR.get_or_try_init(py, || {
            py.import("asyncio")?
                .getattr("CancelledError")
                .map(Bound::unbind)
        })?;
        let mut neutral = vec![
            py.get_type::<PyKeyboardInterrupt>().into_any(),
            py.get_type::<PySystemExit>().into_any(),
            py.get_type::<PyGeneratorExit>().into_any(),
            cancelled.bind(py).clone(),
        ];
        neutral.extend(ignored.iter());
        Ok(Self {
            core: Breaker::new(settings),
            name: name.unbind(),
            timeout,
            probe_timeout: probe_timeout.unwrap_or(timeout),
            clock: Clock::from_py(clock)?,
            neutral: PyTuple::new(py, neutral)?.unbind(),
            expected: expected.unbind(),
            ignored: ignored.unbind(),
            is_failure_result,
            on_state_change,
            leases: Mutex::new(Vec::new()),
            next_lease: AtomicU64::new(0),
        })
    }

    /// Calls `func(*args, **kwargs)` through the breaker.
    ///
    /// Outside the `abi3` build, module init replaces this method with the
    /// same one under the vectorcall convention (`ffi`).
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn call<'py>(
        slf: &Bound<'py, Self>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::call_with(slf, || {
            if args.is_empty() && kwargs.is_none() {
                func.call0()
            } else {
                func.call(args, kwargs)
            }
        })
    }

    /// Admits one call (or raises `CircuitBreakerOpenError`); returns its permit.
    fn _admit(slf: &Bound<'_, Self>) -> PyResult<u128> {
        slf.get().admit(slf).map(permit_to_int)
    }

    /// Records a success for a permit from `_admit`.
    fn _record_success(slf: &Bound<'_, Self>, permit: u128) -> PyResult<()> {
        slf.get()
            .record(slf, permit_from_int(permit), Outcome::Success)
    }

    /// Records a returned value (checked by `is_failure_result`) for a permit.
    fn _record_result(
        slf: &Bound<'_, Self>,
        permit: u128,
        result: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        slf.get().record_value(slf, permit_from_int(permit), result)
    }

    /// Records an exception raised under a permit (classified like `call` does).
    fn _record_error(
        slf: &Bound<'_, Self>,
        permit: u128,
        error: &Bound<'_, PyBaseException>,
    ) -> PyResult<()> {
        let error = PyErr::from_value(error.clone().into_any());
        slf.get().record_error(slf, permit_from_int(permit), &error)
    }

    /// Admits the `with` block's call (or raises `CircuitBreakerOpenError`).
    ///
    /// Native, like `__exit__`: no Python code runs between taking a probe
    /// slot and the `with` statement's cleanup being in place, so an
    /// asynchronous exception (a timeout, `KeyboardInterrupt`) cannot land
    /// between the two and leak the slot.
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let this = slf.get();
        let permit = this.admit(slf)?;
        let lease = this.next_lease.fetch_add(1, Relaxed);
        lock(&this.leases).push((lease, permit));
        if let Err(error) = Self::push_lease(slf, lease) {
            // The block will not run: give the permit back.
            if this.take_outstanding(lease).is_some() {
                this.record(slf, permit, Outcome::Neutral)?;
            }
            return Err(error);
        }
        Ok(slf.clone())
    }

    /// Records how the `with` block ended: success, or its exception
    /// classified like `call` does. Works in any context: a block entered
    /// in one task and left in another still gives its permit back.
    #[pyo3(signature = (exc_type, exc, traceback, /))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        traceback: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _ = (exc_type, traceback);
        let this = slf.get();
        let permit = Self::take_lease(slf)?;
        let outcome = if exc.is_none() {
            Outcome::Success
        } else {
            match this.classify_value(exc) {
                Ok(outcome) => outcome,
                Err(error) => {
                    this.record(slf, permit, Outcome::Neutral)?;
                    return Err(error);
                }
            }
        };
        this.record(slf, permit, outcome).inspect_err(|failure| {
            if !exc.is_none() {
                failure.set_context(slf.py(), Some(PyErr::from_value(exc.clone())));
            }
        })
    }

    /// Closes the breaker and clears `failure_count`, `success_count` and `last_failure_time`.
    fn reset(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.notify(slf, this.core.reset())
    }

    /// Opens the breaker and holds it open (no probes) until `reset()`.
    fn force_open(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.notify(slf, this.core.force_open())
    }

    #[getter]
    fn name(&self, py: Python<'_>) -> Py<PyString> {
        self.name.clone_ref(py)
    }

    /// `"closed"`, `"open"` or `"half_open"`.
    #[getter]
    fn _state_name<'py>(&self, py: Python<'py>) -> &Bound<'py, PyString> {
        state_name(py, self.core.state())
    }

    #[getter]
    fn is_forced_open(&self) -> bool {
        self.core.state() == State::ForcedOpen
    }

    #[getter]
    fn failure_count(&self) -> u64 {
        self.core.failure_count()
    }

    #[getter]
    fn success_count(&self) -> u64 {
        self.core.success_count()
    }

    #[getter]
    fn last_failure_time(&self) -> Option<f64> {
        self.core.last_failure_time()
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout
    }

    #[getter]
    fn probe_timeout(&self) -> f64 {
        self.probe_timeout
    }

    #[getter]
    fn expected_exceptions(&self, py: Python<'_>) -> Py<PyTuple> {
        self.expected.clone_ref(py)
    }

    #[getter]
    fn ignore_exceptions(&self, py: Python<'_>) -> Py<PyTuple> {
        self.ignored.clone_ref(py)
    }

    #[getter]
    fn clock(&self, py: Python<'_>) -> Py<PyAny> {
        self.clock.to_py(py)
    }

    /// Monotonic counters for metrics (never cleared by `reset()`).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.core.counters;
        let dict = PyDict::new(py);
        for (key, counter) in [
            ("calls_succeeded", &c.succeeded),
            ("calls_failed", &c.failed),
            ("calls_ignored", &c.ignored),
            ("calls_rejected", &c.rejected),
            ("calls_slow", &c.slow),
            ("probes_expired", &c.probes_expired),
            ("transitions_to_open", &c.to_open),
            ("transitions_to_half_open", &c.to_half_open),
            ("transitions_to_closed", &c.to_closed),
        ] {
            dict.set_item(key, counter.load(Relaxed))?;
        }
        Ok(dict)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Clock::Manual(clock) = &self.clock {
            visit.call(clock)?;
        }
        visit.call(&self.is_failure_result)?;
        visit.call(&self.on_state_change)?;
        visit.call(&self.expected)?;
        visit.call(&self.ignored)?;
        visit.call(&self.neutral)
    }
}

/// The breaker's fast `call` reaches the class through this (see `ffi`).
impl FastCall for CircuitBreakerCore {
    type Permit = Permit;

    #[inline]
    fn try_admit<'py>(
        &self,
        breaker: &Bound<'py, Self>,
    ) -> PyResult<Result<Permit, Bound<'py, PyBaseException>>> {
        Self::try_admit(self, breaker)
    }

    #[inline]
    fn record_error(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Permit,
        error: &PyErr,
    ) -> PyResult<()> {
        Self::record_error(self, breaker, permit, error)
    }

    #[inline]
    fn record_value(
        &self,
        breaker: &Bound<'_, Self>,
        permit: Permit,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::record_value(self, breaker, permit, value)
    }
}

/// Installs the C-API fast paths on `CircuitBreakerCore` (at module init).
pub fn install(module: &Bound<'_, PyModule>) -> PyResult<()> {
    ffi::install::<CircuitBreakerCore>(module)
}
