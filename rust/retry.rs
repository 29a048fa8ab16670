//! The retry success path and the retry budget.
//!
//! A call that succeeds at once never leaves Rust: `RetryCore.execute(f, ...)`
//! and a `RetryingCall` (what `@with_retry` returns for a sync function) count
//! the call, call `f`, and return its result. Only when `f` raises do they hand
//! the exception to the Python method `_retry` of the public subclass, which
//! classifies it, sleeps and tries again.
//!
//! `BudgetCore` is retry throttling as in gRPC and Finagle: across every retry
//! that shares it, retries in the last `ttl` seconds may not exceed
//! `ratio * calls + min_retries_per_second * ttl` over the same window, so an
//! outage cannot multiply traffic.

use std::sync::{Mutex, PoisonError};

/// The window is kept as this many slots of `ttl / SLOTS` each.
const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// `now_ns / slot_ns` of the period this slot counts.
    index: u64,
    calls: u64,
    retries: u64,
}

/// Why a budget configuration is invalid: `(field, message)`.
pub type Invalid = (&'static str, String);

/// Calls and retries over a sliding window of `ttl`, and the rule that bounds retries.
#[derive(Debug)]
pub struct BudgetCore {
    ratio: f64,
    min_retries_per_second: f64,
    ttl: f64,
    floor: f64,
    slot_ns: u64,
    slots: Mutex<[Slot; SLOTS]>,
}

impl BudgetCore {
    /// Validates the configuration; the error names the field.
    pub fn new(ratio: f64, min_retries_per_second: f64, ttl: f64) -> Result<Self, Invalid> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err((
                "ratio",
                format!("ratio must be a finite number >= 0, got {ratio:?}"),
            ));
        }
        if !min_retries_per_second.is_finite() || min_retries_per_second < 0.0 {
            return Err((
                "min_retries_per_second",
                format!(
                    "min_retries_per_second must be a finite number >= 0, got {min_retries_per_second:?}"
                ),
            ));
        }
        if !ttl.is_finite() || ttl <= 0.0 {
            return Err((
                "ttl",
                format!("ttl must be a finite number > 0, got {ttl:?}"),
            ));
        }
        Ok(Self {
            ratio,
            min_retries_per_second,
            ttl,
            floor: min_retries_per_second * ttl,
            slot_ns: (crate::clock::secs_to_ns(ttl) / SLOTS as u64).max(1),
            slots: Mutex::new([Slot::default(); SLOTS]),
        })
    }

    fn with_window<R>(&self, now_ns: u64, f: impl FnOnce(&mut Slot, u64, u64) -> R) -> R {
        let index = now_ns / self.slot_ns;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut calls, mut retries) = (0, 0);
        for slot in slots.iter() {
            if index.wrapping_sub(slot.index) < SLOTS as u64 {
                calls += slot.calls;
                retries += slot.retries;
            }
        }
        let current = &mut slots[(index % SLOTS as u64) as usize];
        if current.index != index {
            *current = Slot {
                index,
                ..Slot::default()
            };
        }
        f(current, calls, retries)
    }

    /// Counts one call (a first attempt).
    pub fn record_call(&self, now_ns: u64) {
        self.with_window(now_ns, |slot, _, _| slot.calls += 1);
    }

    /// Takes one retry from the budget if it allows one; `false` when exhausted.
    pub fn try_retry(&self, now_ns: u64) -> bool {
        let (ratio, floor) = (self.ratio, self.floor);
        self.with_window(now_ns, |slot, calls, retries| {
            let allowed = (retries + 1) as f64 <= ratio * calls as f64 + floor;
            if allowed {
                slot.retries += 1;
            }
            allowed
        })
    }

    /// Retries the budget would still allow now (may be fractional).
    /// The configured ratio, floor rate and window (seconds).
    #[must_use]
    pub fn parameters(&self) -> (f64, f64, f64) {
        (self.ratio, self.min_retries_per_second, self.ttl)
    }

    /// Gives back a retry `try_retry` took for a retry that then did not
    /// happen (a hook raised): from the newest slot of the window that has one.
    pub fn return_retry(&self, now_ns: u64) {
        let index = now_ns / self.slot_ns;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let newest = slots
            .iter_mut()
            .filter(|slot| index.wrapping_sub(slot.index) < SLOTS as u64 && slot.retries > 0)
            .max_by_key(|slot| slot.index);
        if let Some(slot) = newest {
            slot.retries -= 1;
        }
    }

    pub fn available(&self, now_ns: u64) -> f64 {
        let (ratio, floor) = (self.ratio, self.floor);
        self.with_window(now_ns, |_, calls, retries| {
            (ratio * calls as f64 + floor - retries as f64).max(0.0)
        })
    }
}

#[cfg(feature = "python")]
pub use binding::{RetryBudget, RetryCore, RetryingCall};

#[cfg(feature = "python")]
mod binding {
    use super::BudgetCore;
    use crate::clock::Clock;
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::{PyDict, PyTuple};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A retry budget shared by many retries (`shared._pure.retry.RetryBudget` is its twin).
    #[pyclass(subclass, frozen, module = "shared._native")]
    pub struct RetryBudget {
        core: BudgetCore,
        clock: Clock,
    }

    #[pymethods]
    impl RetryBudget {
        /// The values are checked by `shared._validation`, the rules both
        /// backends share (construction is no hot path).
        #[new]
        #[pyo3(
            signature = (ratio=None, min_retries_per_second=None, ttl=None, *, clock=None),
            text_signature = "(ratio=0.2, min_retries_per_second=10.0, ttl=10.0, *, clock=None)"
        )]
        fn new(
            py: Python<'_>,
            ratio: Option<&Bound<'_, PyAny>>,
            min_retries_per_second: Option<&Bound<'_, PyAny>>,
            ttl: Option<&Bound<'_, PyAny>>,
            clock: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<Self> {
            let validation = py.import("shared._validation")?;
            let check = |check: &str,
                         name: &str,
                         value: Option<&Bound<'_, PyAny>>,
                         default: f64|
             -> PyResult<f64> {
                match value {
                    None => Ok(default),
                    Some(value) if value.is_none() => Ok(default),
                    Some(value) => validation.getattr(check)?.call1((name, value))?.extract(),
                }
            };
            let ratio = check("non_negative_finite", "ratio", ratio, 0.2)?;
            let per_second = check(
                "non_negative_finite",
                "min_retries_per_second",
                min_retries_per_second,
                10.0,
            )?;
            let ttl = check("positive_finite", "ttl", ttl, 10.0)?;
            Ok(Self {
                core: BudgetCore::new(ratio, per_second, ttl)
                    .map_err(|(_, message)| PyValueError::new_err(message))?,
                clock: Clock::from_py(clock)?,
            })
        }

        /// Gives back a retry taken by `try_retry` that did not happen.
        fn return_retry(&self, py: Python<'_>) -> PyResult<()> {
            self.core.return_retry(self.clock.now_ns(py)?);
            Ok(())
        }

        #[getter]
        fn ratio(&self) -> f64 {
            self.core.parameters().0
        }

        #[getter]
        fn min_retries_per_second(&self) -> f64 {
            self.core.parameters().1
        }

        #[getter]
        fn ttl(&self) -> f64 {
            self.core.parameters().2
        }

        /// Counts one call (a first attempt) toward the budget.
        fn record_call(&self, py: Python<'_>) -> PyResult<()> {
            self.core.record_call(self.clock.now_ns(py)?);
            Ok(())
        }

        /// Takes one retry if the budget allows it; False when it is exhausted.
        fn try_retry(&self, py: Python<'_>) -> PyResult<bool> {
            Ok(self.core.try_retry(self.clock.now_ns(py)?))
        }

        /// Retries the budget would allow now.
        fn available(&self, py: Python<'_>) -> PyResult<f64> {
            Ok(self.core.available(self.clock.now_ns(py)?))
        }
    }

    /// `counters()` keys of the give-ups, by `record_give_up` reason.
    const GIVE_UP_REASONS: [&str; 3] = [
        "give_ups_max_attempts",
        "give_ups_deadline",
        "give_ups_budget",
    ];

    /// Counters and the success path of one `Retry` (`shared._pure.retry.RetryCore` is its twin).
    ///
    /// The public `shared.resilience.Retry` subclasses it and supplies
    /// `_retry(func, args, kwargs, exception, start_ns)`, called when `func` raises.
    #[pyclass(subclass, frozen, module = "shared._native")]
    pub struct RetryCore {
        /// Calls whose first attempt succeeded (counted on the success path, after the call).
        first_ok: AtomicU64,
        /// Calls whose first attempt raised (counted on the way to the Python layer).
        first_err: AtomicU64,
        /// Calls that succeeded after at least one retry.
        retried_ok: AtomicU64,
        /// Calls that failed with no retry (not retryable, or `max_attempts=1`).
        failed_first: AtomicU64,
        /// Calls that failed after at least one retry.
        failed_retried: AtomicU64,
        retries: AtomicU64,
        /// Give-ups by reason: `GIVE_UP_REASONS` order.
        give_ups: [AtomicU64; 3],
        budget: Option<Py<RetryBudget>>,
        clock: Clock,
        track_start: bool,
    }

    impl RetryCore {
        /// Starts a call (the budget counts it); returns its start time when a
        /// deadline needs it, else 0. The call is counted when its first attempt ends.
        #[inline]
        fn begin(&self, py: Python<'_>) -> PyResult<u64> {
            if let Some(budget) = &self.budget {
                budget.get().record_call(py)?;
            }
            if self.track_start {
                self.clock.now_ns(py)
            } else {
                Ok(0)
            }
        }
    }

    /// Calls `func`; on an exception, lets the Python layer retry.
    #[inline]
    fn run<'py>(
        retry: &Bound<'py, RetryCore>,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = retry.py();
        let start_ns = retry.get().begin(py)?;
        match func.call(args, kwargs) {
            Ok(result) => {
                retry.get().first_ok.fetch_add(1, Ordering::Relaxed);
                Ok(result)
            }
            Err(err) => {
                retry.get().first_err.fetch_add(1, Ordering::Relaxed);
                retry.call_method1(
                    pyo3::intern!(py, "_retry"),
                    (func, args, kwargs, err.into_value(py), start_ns),
                )
            }
        }
    }

    #[pymethods]
    impl RetryCore {
        /// What a subclass overrides (`shared.resilience.Retry` does); a bare
        /// core cannot retry, and says so, chained to the call's own error.
        #[pyo3(signature = (func, args, kwargs, exception, start_ns, /))]
        fn _retry(
            slf: &Bound<'_, Self>,
            func: &Bound<'_, PyAny>,
            args: &Bound<'_, PyAny>,
            kwargs: &Bound<'_, PyAny>,
            exception: &Bound<'_, PyAny>,
            start_ns: &Bound<'_, PyAny>,
        ) -> PyResult<Py<PyAny>> {
            let _ = (func, args, kwargs, start_ns);
            let py = slf.py();
            let error = PyTypeError::new_err(format!(
                "{} does not retry by itself: execute() needs a subclass that defines \
                 _retry(func, args, kwargs, exception, start_ns) (use shared.resilience.Retry)",
                slf.get_type().name()?
            ));
            error.set_cause(py, Some(PyErr::from_value(exception.clone())));
            Err(error)
        }

        #[new]
        #[pyo3(signature = (*, budget=None, clock=None, track_start=false))]
        fn new(
            budget: Option<Py<RetryBudget>>,
            clock: Option<&Bound<'_, PyAny>>,
            track_start: bool,
        ) -> PyResult<Self> {
            Ok(Self {
                first_ok: AtomicU64::new(0),
                first_err: AtomicU64::new(0),
                retried_ok: AtomicU64::new(0),
                failed_first: AtomicU64::new(0),
                failed_retried: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                give_ups: Default::default(),
                budget,
                clock: Clock::from_py(clock)?,
                track_start,
            })
        }

        /// Calls `func(*args, **kwargs)`, retrying as the subclass decides.
        #[pyo3(signature = (func, /, *args, **kwargs))]
        fn execute<'py>(
            slf: &Bound<'py, Self>,
            func: &Bound<'py, PyAny>,
            args: &Bound<'py, PyTuple>,
            kwargs: Option<&Bound<'py, PyDict>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            run(slf, func, args, kwargs)
        }

        /// Starts a call outside `execute` (async); returns its start time or 0.
        /// The caller reports the first attempt's outcome (`record_success`,
        /// `record_first_failure`).
        fn begin_call(&self, py: Python<'_>) -> PyResult<u64> {
            self.begin(py)
        }

        /// The time on this retry's clock, in nanoseconds.
        fn now_ns(&self, py: Python<'_>) -> PyResult<u64> {
            self.clock.now_ns(py)
        }

        /// Counts one retry (a sleep before another attempt).
        fn record_retry(&self) {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }

        /// Counts one call that gave up (a stop condition ended it with an error):
        /// `reason` 0 for `max_attempts`, 1 for the deadline, 2 for the budget.
        #[pyo3(signature = (reason = 0))]
        fn record_give_up(&self, reason: usize) -> PyResult<()> {
            let counter = self.give_ups.get(reason).ok_or_else(|| {
                PyValueError::new_err(format!("reason must be 0, 1 or 2, got {reason}"))
            })?;
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        /// Counts a call whose first attempt raised (outside `execute`: async).
        fn record_first_failure(&self) {
            self.first_err.fetch_add(1, Ordering::Relaxed);
        }

        /// Counts a call that succeeded, after retries or not (`execute` counts its own
        /// first-attempt successes).
        fn record_success(&self, retried: bool) {
            let counter = if retried {
                &self.retried_ok
            } else {
                &self.first_ok
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }

        /// Counts a call that failed, after retries or not.
        fn record_failure(&self, retried: bool) {
            let counter = if retried {
                &self.failed_retried
            } else {
                &self.failed_first
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }

        /// Calls whose first attempt has ended (a call is counted once its
        /// first attempt returns or raises).
        #[getter]
        fn calls(&self) -> u64 {
            self.first_ok.load(Ordering::Relaxed) + self.first_err.load(Ordering::Relaxed)
        }

        /// Retries made (sleeps before another attempt).
        #[getter]
        fn retries(&self) -> u64 {
            self.retries.load(Ordering::Relaxed)
        }

        /// Calls that gave up on attempts, deadline or budget.
        #[getter]
        fn give_ups(&self) -> u64 {
            self.give_ups
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        }

        /// Monotonic counters for metrics, by outcome (see `shared._pure.retry.RetryCore`).
        fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let dict = PyDict::new(py);
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            dict.set_item("calls", self.calls())?;
            dict.set_item("succeeded_without_retry", load(&self.first_ok))?;
            dict.set_item("succeeded_with_retry", load(&self.retried_ok))?;
            dict.set_item("failed_without_retry", load(&self.failed_first))?;
            dict.set_item("failed_with_retry", load(&self.failed_retried))?;
            dict.set_item("retries", load(&self.retries))?;
            for (name, counter) in GIVE_UP_REASONS.iter().zip(&self.give_ups) {
                dict.set_item(*name, load(counter))?;
            }
            Ok(dict)
        }

        /// The shared budget, or None.
        #[getter]
        fn budget(&self, py: Python<'_>) -> Option<Py<RetryBudget>> {
            self.budget.as_ref().map(|b| b.clone_ref(py))
        }

        /// The clock handed in, or None for the native monotonic clock.
        #[getter]
        fn clock(&self, py: Python<'_>) -> Py<PyAny> {
            self.clock.to_py(py)
        }
    }

    /// A function bound to a retry: calling it is `retry.execute(func, ...)` in one native call.
    #[pyclass(subclass, frozen, module = "shared._native")]
    pub struct RetryingCall {
        retry: Py<RetryCore>,
        func: Py<PyAny>,
    }

    #[pymethods]
    impl RetryingCall {
        #[new]
        fn new(retry: Py<RetryCore>, func: Py<PyAny>) -> Self {
            Self { retry, func }
        }

        #[pyo3(signature = (*args, **kwargs))]
        fn __call__<'py>(
            &self,
            py: Python<'py>,
            args: &Bound<'py, PyTuple>,
            kwargs: Option<&Bound<'py, PyDict>>,
        ) -> PyResult<Bound<'py, PyAny>> {
            run(self.retry.bind(py), self.func.bind(py), args, kwargs)
        }

        /// The retry that runs this function.
        #[getter]
        fn retry(&self, py: Python<'_>) -> Py<RetryCore> {
            self.retry.clone_ref(py)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_returned_retry_can_be_taken_again() {
        let budget = BudgetCore::new(0.0, 0.1, 10.0).unwrap();
        assert!(budget.try_retry(0));
        assert!(!budget.try_retry(SECOND));
        budget.return_retry(2 * SECOND);
        assert!(budget.try_retry(3 * SECOND));
        budget.return_retry(3 * SECOND);
        budget.return_retry(3 * SECOND); // nothing left to give back: no credit made up
        assert!(budget.try_retry(3 * SECOND));
        assert!(!budget.try_retry(3 * SECOND));
        assert_eq!(budget.parameters(), (0.0, 0.1, 10.0));
    }

    #[test]
    fn retries_are_bounded_by_ratio_and_floor() {
        let budget = BudgetCore::new(0.1, 1.0, 10.0).unwrap();
        for _ in 0..1000 {
            budget.record_call(0);
        }
        let allowed = (0..1000).filter(|_| budget.try_retry(0)).count();
        // 0.1 * 1000 + 1/s * 10 s
        assert_eq!(allowed, 110);
        assert!(budget.available(0).abs() < 1e-9);
    }

    #[test]
    fn old_calls_and_retries_leave_the_window() {
        let budget = BudgetCore::new(0.5, 0.0, 10.0).unwrap();
        for _ in 0..10 {
            budget.record_call(0);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(0)).count(), 5);
        // Nine seconds later both still count; after ten they have expired.
        assert!(!budget.try_retry(9 * SECOND));
        budget.record_call(11 * SECOND);
        budget.record_call(11 * SECOND);
        assert!(budget.try_retry(11 * SECOND));
        assert!(!budget.try_retry(11 * SECOND));
    }

    #[test]
    fn floor_allows_retries_without_calls() {
        let budget = BudgetCore::new(0.0, 2.0, 1.0).unwrap();
        assert!(budget.try_retry(0));
        assert!(budget.try_retry(0));
        assert!(!budget.try_retry(0));
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(BudgetCore::new(-0.1, 1.0, 1.0).unwrap_err().0, "ratio");
        assert_eq!(
            BudgetCore::new(0.1, f64::NAN, 1.0).unwrap_err().0,
            "min_retries_per_second"
        );
        assert_eq!(BudgetCore::new(0.1, 1.0, 0.0).unwrap_err().0, "ttl");
    }
}
