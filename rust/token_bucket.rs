//! Token bucket as GCRA (generic cell rate algorithm) on one atomic word.
//!
//! A bucket of capacity `burst` refilled continuously at `rate` tokens per
//! second is the same thing as a theoretical arrival time (TAT): the instant at
//! which the bucket would be full again. In integer nanoseconds:
//!
//! - one token costs `interval = ceil(1e9 / rate)` ns; `tokens` cost
//!   `ceil(tokens * interval)` ns (rounded up, so the granted rate never
//!   exceeds the configured one);
//! - the bucket holds at most `tolerance = cost(burst)` ns of credit;
//! - granting `tokens` at `now` moves `tat` to `max(tat, now) + cost`, allowed
//!   when that is at most `now + tolerance`;
//! - `available = (now + tolerance - max(tat, now)) / interval` tokens.
//!
//! The pure-Python twin (`shared/_pure/token_bucket.py`) does the same integer
//! arithmetic with the same rounding, so both backends agree exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Longest span the arithmetic represents (2^62 ns, about 146 years); larger
/// costs saturate here so `now + span` never overflows.
pub const MAX_SPAN_NS: u64 = 1 << 62;

/// The longest refill time a configuration may ask for (1e9 s, about 31.7
/// years; `MAX_SECONDS` of the Python validation): one token of the slowest
/// rate, or a full bucket. Anything longer would not fit the nanosecond
/// arithmetic without being rounded.
pub const MAX_REFILL_SECS: f64 = 1e9;
/// The fastest rate: one token per nanosecond.
pub const MAX_RATE: f64 = 1e9;

/// Nanoseconds for a non-negative real amount, rounded up and saturated at [`MAX_SPAN_NS`].
#[inline]
#[must_use]
pub fn ceil_ns(value: f64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else if value >= MAX_SPAN_NS as f64 {
        MAX_SPAN_NS
    } else {
        value.ceil() as u64
    }
}

/// Which field of a configuration (or argument) is invalid, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidValue {
    pub field: &'static str,
    pub message: String,
    /// For `tokens` out of range: the value and the burst (the binding words
    /// that error as the shared validation does).
    pub tokens: Option<(f64, f64)>,
}

impl InvalidValue {
    fn new(field: &'static str, message: String) -> Self {
        Self {
            field,
            message,
            tokens: None,
        }
    }
}

/// The fixed parameters of a bucket, in integer nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub rate: f64,
    pub burst: f64,
    pub initial: f64,
    /// Cost of one token in ns.
    pub interval_ns: u64,
    /// Credit of a full bucket in ns (`cost(burst)`).
    pub tolerance_ns: u64,
    /// Credit of a new bucket in ns (`cost(initial)`).
    pub initial_credit_ns: u64,
}

impl Limits {
    /// Validates a configuration: `rate` in [1 / `MAX_REFILL_SECS`, `MAX_RATE`]
    /// (a token interval of 1 ns to 1e9 s: it fits the arithmetic unrounded
    /// but for the last nanosecond), `burst` finite >= 1 with `burst / rate`
    /// at most `MAX_REFILL_SECS`, `0 <= initial <= burst`. Errors name the
    /// configuration field.
    pub fn new(rate: f64, burst: f64, initial: f64) -> Result<Self, InvalidValue> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(InvalidValue::new(
                "tokens_per_second",
                format!("tokens_per_second must be a finite number > 0, got {rate}"),
            ));
        }
        if !(1.0 / MAX_REFILL_SECS..=MAX_RATE).contains(&rate) {
            return Err(InvalidValue::new(
                "tokens_per_second",
                format!(
                    "tokens_per_second must be in [1e-09, 1e+09] (one token per 31.7 years \
                     to one per nanosecond), got {rate}"
                ),
            ));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(InvalidValue::new(
                "burst_size",
                format!("burst_size must be a finite number >= 1, got {burst}"),
            ));
        }
        if burst / rate > MAX_REFILL_SECS {
            return Err(InvalidValue::new(
                "burst_size",
                format!(
                    "burst_size / tokens_per_second (the refill time of a full bucket) \
                     must be <= 1e+09 s, got {burst}"
                ),
            ));
        }
        if !(initial.is_finite() && (0.0..=burst).contains(&initial)) {
            return Err(InvalidValue::new(
                "initial_tokens",
                format!("initial_tokens must be a finite number in [0, burst_size], got {initial}"),
            ));
        }
        let interval_ns = ceil_ns(1e9 / rate).max(1);
        let tolerance_ns = ceil_ns(burst * interval_ns as f64);
        let initial_credit_ns = ceil_ns(initial * interval_ns as f64).min(tolerance_ns);
        Ok(Self {
            rate,
            burst,
            initial,
            interval_ns,
            tolerance_ns,
            initial_credit_ns,
        })
    }

    /// The cost in ns of `tokens`, which must be finite, > 0 and <= burst.
    #[inline]
    pub fn cost_ns(&self, tokens: f64) -> Result<u64, InvalidValue> {
        // Exactly one token (the default) needs no multiplication.
        #[allow(clippy::float_cmp)]
        if tokens == 1.0 {
            return Ok(self.interval_ns);
        }
        if !(tokens.is_finite() && tokens > 0.0 && tokens <= self.burst) {
            return Err(InvalidValue {
                tokens: Some((tokens, self.burst)),
                ..InvalidValue::new(
                    "tokens",
                    format!(
                        "tokens must be a finite number > 0 and <= burst_size ({}), got {tokens}",
                        self.burst
                    ),
                )
            });
        }
        Ok(ceil_ns(tokens * self.interval_ns as f64).min(self.tolerance_ns))
    }

    /// The TAT of a bucket created (or reset) at `now`.
    #[inline]
    #[must_use]
    pub fn initial_tat(&self, now: u64) -> u64 {
        now.saturating_add(self.tolerance_ns - self.initial_credit_ns)
    }

    /// The TAT after granting `cost` at `now`, or `None` when the tokens are not there.
    #[inline]
    #[must_use]
    pub fn grant(&self, tat: u64, now: u64, cost: u64) -> Option<u64> {
        let next = tat.max(now).saturating_add(cost);
        (next <= now.saturating_add(self.tolerance_ns)).then_some(next)
    }

    /// Nanoseconds from `now` until `cost` can be granted (0 when it can be now).
    #[inline]
    #[must_use]
    pub fn wait_ns(&self, tat: u64, now: u64, cost: u64) -> u64 {
        tat.max(now)
            .saturating_add(cost)
            .saturating_sub(now.saturating_add(self.tolerance_ns))
    }

    /// The TAT after reserving `cost` at `now`, and the wait until it is granted;
    /// `TooLong` (nothing reserved) when that wait exceeds `max_wait_ns`.
    #[inline]
    pub fn reserve(
        &self,
        tat: u64,
        now: u64,
        cost: u64,
        max_wait_ns: Option<u64>,
    ) -> Result<(u64, u64), TooLong> {
        let wait_ns = self.wait_ns(tat, now, cost);
        if max_wait_ns.is_some_and(|max| wait_ns > max) {
            return Err(TooLong { wait_ns });
        }
        Ok((tat.max(now).saturating_add(cost), wait_ns))
    }

    /// The TAT after withdrawing the reservation that left it at `reserved`
    /// (costing `cost`), or `None` when anything was granted or reserved since:
    /// then the tokens stay consumed, which never grants more than the limit.
    #[inline]
    #[must_use]
    pub fn cancel(tat: u64, reserved: u64, cost: u64) -> Option<u64> {
        (tat == reserved).then(|| reserved.saturating_sub(cost))
    }

    /// Tokens in the bucket at `now` (0 while reservations are outstanding).
    #[inline]
    #[must_use]
    pub fn available(&self, tat: u64, now: u64) -> f64 {
        let credit = now
            .saturating_add(self.tolerance_ns)
            .saturating_sub(tat.max(now));
        credit as f64 / self.interval_ns as f64
    }

    /// Whether a bucket is full at `now` and has been for at least `idle_ns`
    /// (forgetting it loses nothing: a new bucket is at most as full).
    #[inline]
    #[must_use]
    pub fn idle(tat: u64, now: u64, idle_ns: u64) -> bool {
        tat.saturating_add(idle_ns) <= now
    }
}

/// The outcome of a reservation that would wait longer than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub wait_ns: u64,
}

/// One bucket: its limits and its TAT in one atomic word. Lock-free.
#[derive(Debug)]
pub struct Bucket {
    pub limits: Limits,
    tat: AtomicU64,
}

impl Bucket {
    #[must_use]
    pub fn new(limits: Limits, now: u64) -> Self {
        Self {
            limits,
            tat: AtomicU64::new(limits.initial_tat(now)),
        }
    }

    /// Grants `cost` at `now` if the tokens are there. A denial writes nothing.
    #[inline]
    pub fn try_acquire(&self, now: u64, cost: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let Some(next) = self.limits.grant(tat, now, cost) else {
                return false;
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }

    /// Reserves `cost` now and returns how long to wait for it, unless the
    /// wait exceeds `max_wait_ns`: then nothing is reserved.
    /// Returns `(wait_ns, ticket)`; the ticket withdraws the reservation with [`Bucket::cancel`].
    pub fn reserve(
        &self,
        now: u64,
        cost: u64,
        max_wait_ns: Option<u64>,
    ) -> Result<(u64, u64), TooLong> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (next, wait_ns) = self.limits.reserve(tat, now, cost, max_wait_ns)?;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok((wait_ns, next)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Withdraws the reservation `ticket` of `cost` if nothing happened since; whether it did.
    pub fn cancel(&self, ticket: u64, cost: u64) -> bool {
        let tat = self.tat.load(Ordering::Acquire);
        Limits::cancel(tat, ticket, cost).is_some_and(|previous| {
            self.tat
                .compare_exchange(tat, previous, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    #[inline]
    #[must_use]
    pub fn wait_ns(&self, now: u64, cost: u64) -> u64 {
        self.limits
            .wait_ns(self.tat.load(Ordering::Acquire), now, cost)
    }

    #[inline]
    #[must_use]
    pub fn available(&self, now: u64) -> f64 {
        self.limits.available(self.tat.load(Ordering::Acquire), now)
    }

    /// Back to the state of a bucket created at `now`.
    pub fn reset(&self, now: u64) {
        self.tat
            .store(self.limits.initial_tat(now), Ordering::Release);
    }
}

#[cfg(feature = "python")]
pub use binding::{
    cancel_error, checked_timeout, invalid_value_error, number_arg, rate_limit_exceeded,
    read_limits, ticket_of, timeout_arg, tokens_error, Decisions, Reservation, TokenBucket,
};

#[cfg(feature = "python")]
mod binding {
    use super::{Bucket, InvalidValue, Limits};
    use crate::binding_errors::validation;
    use crate::clock::{ns_to_secs, secs_to_ns, Clock};
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyDict, PyFloat, PyInt, PyType};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// A number argument: a float or an int as f64 at once; anything else
    /// (a bool, a str, an int too large for a float) gets the shared error.
    #[inline]
    pub fn number_arg(value: &Bound<'_, PyAny>, name: &str) -> PyResult<f64> {
        if let Ok(float) = value.cast_exact::<PyFloat>() {
            return Ok(float.value());
        }
        if value.is_exact_instance_of::<PyInt>() {
            if let Ok(number) = value.extract::<f64>() {
                return Ok(number);
            }
        }
        validation(value.py(), "number")?
            .call1((name, value))?
            .extract()
    }

    /// The error for `tokens` out of range (0, burst], as the shared rule words it.
    #[cold]
    #[must_use]
    pub fn tokens_error(py: Python<'_>, tokens: f64, burst: f64) -> PyErr {
        match validation(py, "tokens").and_then(|check| check.call1((tokens, burst))) {
            Err(err) => err,
            Ok(_) => PyValueError::new_err(format!("tokens out of range: {tokens}")),
        }
    }

    /// A `timeout` argument: None, or a number >= 0 (+inf waits for ever).
    #[inline]
    pub fn timeout_arg(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
        let Some(value) = timeout else {
            return Ok(None);
        };
        if value.is_none() {
            return Ok(None);
        }
        let seconds = number_arg(value, "timeout")?;
        if seconds.is_nan() || seconds < 0.0 {
            validation(value.py(), "timeout")?.call1((seconds,))?;
        }
        checked_timeout(seconds).map(Some)
    }

    /// A reservation: what `reserve` took (`cost` ns of the bucket whose TAT it
    /// left at `tat`), from which limiter, and whether it was cancelled.
    #[pyclass(frozen, module = "shared._native")]
    pub struct Reservation {
        owner: usize,
        tat: u64,
        cost: u64,
        tokens: f64,
        cancelled: AtomicBool,
    }

    impl Reservation {
        #[must_use]
        pub fn new(owner: usize, tat: u64, cost: u64, tokens: f64) -> Self {
            Self {
                owner,
                tat,
                cost,
                tokens,
                cancelled: AtomicBool::new(false),
            }
        }
    }

    #[pymethods]
    impl Reservation {
        /// The tokens reserved.
        #[getter]
        fn tokens(&self) -> f64 {
            self.tokens
        }

        fn __repr__(&self) -> String {
            format!("Reservation(tokens={:?})", self.tokens)
        }
    }

    /// The reservation a `ticket` argument names, or the shared `TypeError`.
    pub fn ticket_of<'a, 'py>(
        ticket: &'a Bound<'py, PyAny>,
    ) -> PyResult<&'a Bound<'py, Reservation>> {
        ticket.cast::<Reservation>().map_err(|_| {
            match validation(ticket.py(), "ticket_type_error").and_then(|f| f.call1((ticket,))) {
                Ok(error) => PyErr::from_value(error),
                Err(err) => err,
            }
        })
    }

    /// Checks a cancellation: the ticket of `owner`, for the `cost` it took,
    /// not cancelled before (marked cancelled now). Returns the TAT it left.
    pub fn cancel_error(
        py: Python<'_>,
        reservation: &Reservation,
        owner: usize,
        cost: u64,
        tokens: f64,
    ) -> PyResult<u64> {
        let message = |name: &str| -> PyErr {
            match validation(py, name).and_then(|m| m.extract::<String>()) {
                Ok(message) => PyValueError::new_err(message),
                Err(err) => err,
            }
        };
        if reservation.owner != owner {
            return Err(message("NOT_THIS_LIMITER"));
        }
        if reservation.cost != cost {
            return Err(
                match validation(py, "reserved_tokens_mismatch")
                    .and_then(|f| f.call1((reservation.tokens, tokens)))
                {
                    Ok(error) => PyErr::from_value(error),
                    Err(err) => err,
                },
            );
        }
        if reservation.cancelled.swap(true, Ordering::AcqRel) {
            return Err(message("ALREADY_CANCELLED"));
        }
        Ok(reservation.tat)
    }

    #[must_use]
    pub fn invalid_value_error(error: InvalidValue) -> PyErr {
        PyValueError::new_err(error.message)
    }

    static RATE_LIMIT_EXCEEDED: PyOnceLock<Py<PyType>> = PyOnceLock::new();

    /// `shared.resilience.exceptions.RateLimitExceeded(retry_after)`.
    pub fn rate_limit_exceeded(py: Python<'_>, retry_after: f64, message: Option<&str>) -> PyErr {
        match RATE_LIMIT_EXCEEDED.import(py, "shared.resilience.exceptions", "RateLimitExceeded") {
            Ok(cls) => match cls.call1((retry_after, message)) {
                Ok(exc) => PyErr::from_value(exc),
                Err(err) => err,
            },
            Err(err) => err,
        }
    }

    fn read_field<'py>(config: &Bound<'py, PyAny>, field: &str) -> PyResult<Bound<'py, PyAny>> {
        config.getattr(field).map_err(|_| {
            PyTypeError::new_err(format!(
                "config must have a {field} attribute (a shared.resilience.RateLimitConfig)"
            ))
        })
    }

    /// The limits of a `RateLimitConfig` (or any object with its three
    /// attributes). Three floats that pass are taken at once; anything else is
    /// judged by `shared._validation.bucket_limits`, the rule both backends share.
    pub fn read_limits(config: &Bound<'_, PyAny>) -> PyResult<Limits> {
        let fields = [
            read_field(config, "tokens_per_second")?,
            read_field(config, "burst_size")?,
            read_field(config, "initial_tokens")?,
        ];
        let floats: Vec<f64> = fields
            .iter()
            .filter_map(|f| f.cast_exact::<PyFloat>().ok().map(PyFloatMethods::value))
            .collect();
        if let [rate, burst, initial] = floats[..] {
            if let Ok(limits) = Limits::new(rate, burst, initial) {
                return Ok(limits);
            }
        }
        let (rate, burst, initial): (f64, f64, f64) = validation(config.py(), "bucket_limits")?
            .call1((&fields[0], &fields[1], &fields[2]))?
            .extract()?;
        Limits::new(rate, burst, initial).map_err(invalid_value_error)
    }

    /// Decisions of a limiter, for metrics (read at scrape time, never cleared).
    #[derive(Default)]
    pub struct Decisions {
        granted: AtomicU64,
        rejected: AtomicU64,
        /// Nanoseconds of waiting handed out by granted reservations.
        waited_ns: AtomicU64,
    }

    impl Decisions {
        /// Counts one `try_acquire`; returns its answer.
        #[inline]
        pub fn decided(&self, granted: bool) -> bool {
            let counter = if granted {
                &self.granted
            } else {
                &self.rejected
            };
            counter.fetch_add(1, Ordering::Relaxed);
            granted
        }

        /// Counts one reservation granted with `wait_ns` to wait.
        #[inline]
        pub fn reserved(&self, wait_ns: u64) {
            self.granted.fetch_add(1, Ordering::Relaxed);
            if wait_ns > 0 {
                self.waited_ns.fetch_add(wait_ns, Ordering::Relaxed);
            }
        }

        /// Counts one refused reservation (its wait exceeded the timeout).
        #[inline]
        pub fn refused(&self) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }

        /// `{"granted", "rejected", "waited_ns"}`.
        pub fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            let dict = PyDict::new(py);
            dict.set_item("granted", self.granted.load(Ordering::Relaxed))?;
            dict.set_item("rejected", self.rejected.load(Ordering::Relaxed))?;
            dict.set_item("waited_ns", self.waited_ns.load(Ordering::Relaxed))?;
            Ok(dict)
        }
    }

    /// The core of `shared.resilience.TokenBucket`: every method is one native call.
    #[pyclass(subclass, frozen, module = "shared._native")]
    pub struct TokenBucket {
        bucket: Bucket,
        clock: Clock,
        config: Py<PyAny>,
        decisions: Decisions,
    }

    impl TokenBucket {
        /// The cost of a `tokens` argument (absent: one token, the fast path).
        #[inline]
        fn cost(&self, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<(u64, f64)> {
            let limits = &self.bucket.limits;
            let Some(tokens) = tokens else {
                return Ok((limits.interval_ns, 1.0));
            };
            let value = number_arg(tokens, "tokens")?;
            match limits.cost_ns(value) {
                Ok(cost) => Ok((cost, value)),
                Err(_) => Err(tokens_error(tokens.py(), value, limits.burst)),
            }
        }

        fn owner(&self) -> usize {
            std::ptr::from_ref(self) as usize
        }
    }

    #[pymethods]
    impl TokenBucket {
        #[new]
        #[pyo3(signature = (config, *, clock = None))]
        fn new(config: &Bound<'_, PyAny>, clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
            let limits = read_limits(config)?;
            let clock = Clock::from_py(clock)?;
            let now = clock.now_ns(config.py())?;
            Ok(Self {
                bucket: Bucket::new(limits, now),
                clock,
                config: config.clone().unbind(),
                decisions: Decisions::default(),
            })
        }

        /// Takes `tokens` if they are there now; never waits.
        #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
        fn try_acquire(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
            // Test-only: about 15% more work per call, so the bench gate can show it fails.
            #[cfg(feature = "gate-selftest-slow-try-acquire")]
            for step in 0..68_u32 {
                std::hint::black_box(step);
            }
            let (cost, _) = self.cost(tokens)?;
            Ok(self
                .decisions
                .decided(self.bucket.try_acquire(self.clock.now_ns(py)?, cost)))
        }

        /// Reserves `tokens`: `(seconds to wait for them, ticket)` (0.0: granted
        /// now). Raises `RateLimitExceeded` and reserves nothing when the wait would
        /// exceed `timeout` seconds. The ticket cancels the reservation, once.
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
            let (cost, value) = self.cost(tokens)?;
            let max_wait = timeout_arg(timeout)?;
            match self.bucket.reserve(self.clock.now_ns(py)?, cost, max_wait) {
                Ok((wait_ns, tat)) => {
                    self.decisions.reserved(wait_ns);
                    Ok((
                        ns_to_secs(wait_ns),
                        Reservation::new(self.owner(), tat, cost, value),
                    ))
                }
                Err(too_long) => {
                    self.decisions.refused();
                    Err(rate_limit_exceeded(py, ns_to_secs(too_long.wait_ns), None))
                }
            }
        }

        /// Withdraws the reservation `ticket` of `tokens` if nothing was granted
        /// or reserved since; whether it was (otherwise its tokens stay consumed).
        /// A ticket of another limiter, other tokens than reserved, or a second
        /// cancellation raise `ValueError`.
        #[pyo3(signature = (tokens, ticket))]
        fn cancel_reservation(
            &self,
            py: Python<'_>,
            tokens: &Bound<'_, PyAny>,
            ticket: &Bound<'_, PyAny>,
        ) -> PyResult<bool> {
            let reservation = ticket_of(ticket)?;
            let (cost, value) = self.cost(Some(tokens))?;
            let tat = cancel_error(py, reservation.get(), self.owner(), cost, value)?;
            Ok(self.bucket.cancel(tat, cost))
        }

        /// Seconds until `tokens` are available (0.0 if they are now).
        #[pyo3(signature = (tokens = None), text_signature = "($self, /, tokens=1.0)")]
        fn retry_after(&self, py: Python<'_>, tokens: Option<&Bound<'_, PyAny>>) -> PyResult<f64> {
            let (cost, _) = self.cost(tokens)?;
            Ok(ns_to_secs(
                self.bucket.wait_ns(self.clock.now_ns(py)?, cost),
            ))
        }

        /// Tokens in the bucket now.
        #[getter]
        fn available_tokens(&self, py: Python<'_>) -> PyResult<f64> {
            Ok(self.bucket.available(self.clock.now_ns(py)?))
        }

        /// Back to the configured initial tokens.
        fn reset(&self, py: Python<'_>) -> PyResult<()> {
            self.bucket.reset(self.clock.now_ns(py)?);
            Ok(())
        }

        /// Monotonic decision counters for metrics (never cleared by `reset()`):
        /// `granted` and `rejected` decisions of `try_acquire` and `reserve`
        /// (so of `acquire`), and `waited_ns` handed out by granted reservations.
        fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
            self.decisions.to_dict(py)
        }

        #[getter]
        fn config(&self, py: Python<'_>) -> Py<PyAny> {
            self.config.clone_ref(py)
        }

        #[getter]
        fn clock(&self, py: Python<'_>) -> Py<PyAny> {
            self.clock.to_py(py)
        }
    }

    /// A timeout in seconds as a maximum wait in ns: finite or +inf, >= 0.
    pub fn checked_timeout(timeout: f64) -> PyResult<u64> {
        if timeout.is_nan() || timeout < 0.0 {
            return Err(PyValueError::new_err(format!(
                "timeout must be None or a number >= 0, got {timeout}"
            )));
        }
        Ok(secs_to_ns(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits(rate: f64, burst: f64, initial: f64) -> Limits {
        Limits::new(rate, burst, initial).unwrap()
    }

    #[test]
    fn the_document_example() {
        // 10 tokens/s, burst 20: consume 5, wait 1 s, the bucket is full again (capped).
        let bucket = Bucket::new(limits(10.0, 20.0, 20.0), 0);
        let cost = bucket.limits.cost_ns(1.0).unwrap();
        for _ in 0..5 {
            assert!(bucket.try_acquire(0, cost));
        }
        assert!((bucket.available(0) - 15.0).abs() < 1e-9);
        assert!((bucket.available(SEC) - 20.0).abs() < 1e-9);
        assert!((bucket.available(2 * SEC) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let bucket = Bucket::new(limits(3.0, 3.0, 3.0), SEC);
        let cost = bucket.limits.cost_ns(1.0).unwrap();
        assert!((0..3).all(|_| bucket.try_acquire(SEC, cost)));
        assert!(!bucket.try_acquire(SEC, cost));
        let wait = bucket.wait_ns(SEC, cost);
        assert_eq!(wait, bucket.limits.interval_ns);
        assert!(!bucket.try_acquire(SEC + wait - 1, cost));
        assert!(bucket.try_acquire(SEC + wait, cost));
    }

    #[test]
    fn initial_tokens_and_reset() {
        let bucket = Bucket::new(limits(10.0, 20.0, 0.0), 0);
        assert!(bucket.available(0).abs() < 1e-12);
        assert_eq!(
            bucket.wait_ns(0, bucket.limits.cost_ns(1.0).unwrap()),
            SEC / 10
        );
        bucket.reset(5 * SEC);
        assert!(bucket.available(5 * SEC).abs() < 1e-12);
    }

    #[test]
    fn reservations_queue_and_respect_the_limit() {
        let bucket = Bucket::new(limits(10.0, 1.0, 1.0), 0);
        let cost = bucket.limits.cost_ns(1.0).unwrap();
        assert_eq!(bucket.reserve(0, cost, None), Ok((0, SEC / 10)));
        assert_eq!(bucket.reserve(0, cost, None), Ok((SEC / 10, SEC / 5)));
        assert_eq!(
            bucket.reserve(0, cost, Some(SEC / 10)),
            Err(TooLong { wait_ns: SEC / 5 })
        );
        let (wait, ticket) = bucket.reserve(0, cost, Some(SEC / 5)).unwrap();
        assert_eq!(wait, SEC / 5);
        assert!(bucket.available(0).abs() < 1e-12);
        // Only the latest reservation can be withdrawn.
        assert!(!bucket.cancel(SEC / 5, cost));
        assert!(bucket.cancel(ticket, cost));
        assert_eq!(bucket.wait_ns(0, cost), SEC / 5);
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            Limits::new(0.0, 1.0, 1.0).unwrap_err().field,
            "tokens_per_second"
        );
        assert_eq!(
            Limits::new(f64::NAN, 1.0, 1.0).unwrap_err().field,
            "tokens_per_second"
        );
        assert_eq!(
            Limits::new(f64::INFINITY, 1.0, 1.0).unwrap_err().field,
            "tokens_per_second"
        );
        assert_eq!(Limits::new(1.0, 0.5, 0.5).unwrap_err().field, "burst_size");
        assert_eq!(
            Limits::new(1.0, 2.0, 3.0).unwrap_err().field,
            "initial_tokens"
        );
        let l = limits(1.0, 2.0, 2.0);
        for bad in [0.0, -1.0, 2.5, f64::NAN, f64::INFINITY] {
            assert_eq!(l.cost_ns(bad).unwrap_err().field, "tokens");
        }
    }

    #[test]
    fn granted_never_exceeds_burst_plus_rate_times_time() {
        // A deterministic pseudo-random schedule of tries and sleeps.
        let bucket = Bucket::new(limits(7.0, 5.0, 5.0), 0);
        let (mut now, mut granted, mut seed) = (0u64, 0.0f64, 12345u64);
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let tokens = 0.5 + (seed >> 60) as f64 / 4.0;
            if bucket.try_acquire(now, bucket.limits.cost_ns(tokens).unwrap()) {
                granted += tokens;
            }
            now += (seed >> 40) % (SEC / 5);
            assert!(granted <= 5.0 + 7.0 * (now as f64 / 1e9) + 1e-6);
        }
    }

    #[test]
    fn extreme_rates_fit_or_are_refused() {
        let slowest = limits(1e-9, 1.0, 1.0);
        assert_eq!(slowest.interval_ns, 1_000_000_000_000_000_000);
        let fastest = limits(1e9, 1e18, 1e18);
        assert_eq!(fastest.interval_ns, 1);
        assert_eq!(fastest.tolerance_ns, 1_000_000_000_000_000_000);
        for rate in [1e-12, 9.9e-10, 1.1e9, 1e300] {
            assert_eq!(
                Limits::new(rate, 1.0, 1.0).unwrap_err().field,
                "tokens_per_second"
            );
        }
        assert_eq!(Limits::new(1.0, 1e10, 1.0).unwrap_err().field, "burst_size");
        let bucket = Bucket::new(slowest, u64::MAX - 5);
        assert!(bucket.try_acquire(u64::MAX - 5, slowest.interval_ns));
    }
}
