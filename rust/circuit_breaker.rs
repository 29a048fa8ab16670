//! Circuit breaker: a lock-free state machine in one atomic word.
//!
//! The word packs the state, an epoch and two small counts, so the closed
//! success path is two loads and one counter increment, with no clock read
//! and no lock. Every state change bumps the epoch; an outcome is applied only
//! if the epoch it was admitted in is still current, so a call admitted before
//! a change that finishes late cannot flip the new state.
//!
//! A short mutex is taken only for transitions into OPEN (to publish
//! `opened_at` together with the new word) and, in the opt-in sliding-window
//! mode, to update the window. No lock is ever held while user code runs: the
//! binding calls the protected function between `admit` and `record`, and
//! reads the clock before any lock is taken.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest threshold or probe count that fits a count field of the word.
pub const MAX_COUNT: u32 = (1 << COUNT_BITS) - 1;
/// Buckets of the time-based sliding window.
pub const WINDOW_BUCKETS: u64 = 10;

const COUNT_BITS: u32 = 20;
const STATE_MASK: u64 = 0b11;
const A_SHIFT: u32 = 2;
const B_SHIFT: u32 = A_SHIFT + COUNT_BITS;
const EPOCH_SHIFT: u32 = B_SHIFT + COUNT_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The state as callers see it (`ForcedOpen` is reported as `Open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
    /// Opened by `force_open()`: rejects until `reset()`, never probes.
    ForcedOpen = 3,
}

impl State {
    fn of(word: u64) -> Self {
        match word & STATE_MASK {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::ForcedOpen,
        }
    }

    /// The name users see: `closed`, `open` or `half_open`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open | Self::ForcedOpen => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

// Word layout: [epoch:22 | b:20 | a:20 | state:2]. CLOSED: a = consecutive
// failures. HALF_OPEN: a = successes, b = probes in flight. The epoch wraps;
// a call would have to outlive 4 million state changes to be confused.
fn pack(state: State, epoch: u64, a: u64, b: u64) -> u64 {
    (epoch << EPOCH_SHIFT) | (b << B_SHIFT) | (a << A_SHIFT) | state as u64
}
fn epoch(word: u64) -> u64 {
    word >> EPOCH_SHIFT
}
fn count_a(word: u64) -> u64 {
    (word >> A_SHIFT) & COUNT_MASK
}
fn count_b(word: u64) -> u64 {
    (word >> B_SHIFT) & COUNT_MASK
}
fn next_epoch(word: u64) -> u64 {
    (epoch(word) + 1) & ((1 << (64 - EPOCH_SHIFT)) - 1)
}
fn same_phase(a: u64, b: u64) -> bool {
    a & STATE_MASK == b & STATE_MASK && epoch(a) == epoch(b)
}

/// The opt-in failure-rate mode (resilience4j's time-based sliding window).
#[derive(Clone, Debug)]
pub struct WindowSettings {
    pub window_ns: u64,
    pub minimum_calls: u64,
    pub failure_rate_threshold: f64,
    pub slow_call_ns: Option<u64>,
    pub slow_call_rate_threshold: f64,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub half_open_max_calls: u32,
    pub open_timeout_ns: u64,
    /// How long a probe holds its slot: once every slot is taken and no probe
    /// was admitted for this long, the slots are free again (probe leases).
    pub probe_timeout_ns: u64,
    pub window: Option<WindowSettings>,
}

/// What a finished call counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: ignored exceptions, cancellation, exits. Gives back a probe slot.
    Neutral,
}

/// The right to run one call, tied to the phase (state + epoch) it was admitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    pub word: u64,
    /// Clock reading at admission; only read when slow calls are tracked.
    pub start_ns: u64,
}

/// A state change to report to listeners (after every lock is released).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted {
        permit: Permit,
        transition: Option<Transition>,
    },
    Rejected {
        retry_after_ns: u64,
    },
}

/// Monotonic counters for metrics; `reset()` never clears them.
#[derive(Default, Debug)]
pub struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
    pub slow: AtomicU64,
    /// Probes whose lease expired (their slots were handed to new probes).
    pub probes_expired: AtomicU64,
    pub to_open: AtomicU64,
    pub to_half_open: AtomicU64,
    pub to_closed: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u64,
    failures: u64,
    slow: u64,
}

struct Window {
    /// The word epoch the buckets belong to; another epoch starts empty.
    epoch: u64,
    buckets: [Bucket; WINDOW_BUCKETS as usize],
}

const EMPTY_BUCKET: Bucket = Bucket {
    index: u64::MAX,
    calls: 0,
    failures: 0,
    slow: 0,
};

pub struct Breaker {
    settings: Settings,
    word: AtomicU64,
    /// When the current OPEN phase began; written only under `transition_lock`.
    opened_at_ns: AtomicU64,
    /// When the newest probe was admitted (the clock only grows: a `fetch_max`).
    last_probe_at_ns: AtomicU64,
    transition_lock: Mutex<()>,
    window: Mutex<Window>,
    pub counters: Counters,
    /// Counter values at the last `reset()`: `success_count` and `failure_count` start there.
    succeeded_base: AtomicU64,
    failed_base: AtomicU64,
    /// `f64` bits of the wall-clock time of the last counted failure; 0 when none.
    last_failure_bits: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every await-free step; a panic elsewhere cannot corrupt it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wall_clock_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Breaker {
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            word: AtomicU64::new(pack(State::Closed, 0, 0, 0)),
            opened_at_ns: AtomicU64::new(0),
            last_probe_at_ns: AtomicU64::new(0),
            transition_lock: Mutex::new(()),
            window: Mutex::new(Window {
                epoch: 0,
                buckets: [EMPTY_BUCKET; WINDOW_BUCKETS as usize],
            }),
            counters: Counters::default(),
            succeeded_base: AtomicU64::new(0),
            failed_base: AtomicU64::new(0),
            last_failure_bits: AtomicU64::new(0),
        }
    }

    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    #[must_use]
    pub fn state(&self) -> State {
        State::of(self.word.load(Acquire))
    }

    /// Whether `admit` reads the clock even when closed (to time slow calls).
    #[must_use]
    pub fn times_calls(&self) -> bool {
        self.settings
            .window
            .as_ref()
            .is_some_and(|w| w.slow_call_ns.is_some())
    }

    #[must_use]
    pub fn success_count(&self) -> u64 {
        let total = self.counters.succeeded.load(Relaxed);
        total.saturating_sub(self.succeeded_base.load(Relaxed))
    }

    #[must_use]
    pub fn failure_count(&self) -> u64 {
        let total = self.counters.failed.load(Relaxed);
        total.saturating_sub(self.failed_base.load(Relaxed))
    }

    /// Wall-clock seconds (like `time.time()`) of the last counted failure.
    #[must_use]
    pub fn last_failure_time(&self) -> Option<f64> {
        match self.last_failure_bits.load(Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Admits a call or rejects it. `now` is read only when needed: when
    /// open, when a probe may start, or when slow calls are timed.
    pub fn admit<E>(&self, now: &mut impl FnMut() -> Result<u64, E>) -> Result<Admission, E> {
        loop {
            let word = self.word.load(Acquire);
            match State::of(word) {
                State::Closed => {
                    let start_ns = if self.times_calls() { now()? } else { 0 };
                    return Ok(Admission::Admitted {
                        permit: Permit { word, start_ns },
                        transition: None,
                    });
                }
                State::ForcedOpen => return Ok(self.reject(self.settings.open_timeout_ns)),
                State::HalfOpen => {
                    // Read before a slot is taken: a clock that fails cannot leak one.
                    let now_ns = now()?;
                    let full = count_b(word) >= u64::from(self.settings.half_open_max_calls);
                    if full {
                        let last = self.last_probe_at_ns.load(Acquire);
                        let expiry = last.saturating_add(self.settings.probe_timeout_ns);
                        if now_ns < expiry {
                            // The slots are leased until the newest probe's lease
                            // runs out (each probe renews them): a slot is sure to
                            // be free by then, sooner if a probe reports.
                            return Ok(self.reject(expiry - now_ns));
                        }
                    }
                    // Published before the slot is taken (a fetch_max, so a caller
                    // that loses the race below only delays the expiry): whoever
                    // sees the slots full sees when the newest probe was admitted.
                    self.last_probe_at_ns.fetch_max(now_ns, AcqRel);
                    let taken = if full {
                        // The slots are full and no probe was admitted for
                        // `probe_timeout`: every lease has expired. A new
                        // half-open phase starts, with this call its first probe;
                        // the old probes' outcomes are late and change nothing.
                        pack(State::HalfOpen, next_epoch(word), 0, 1)
                    } else {
                        word + (1 << B_SHIFT)
                    };
                    if self
                        .word
                        .compare_exchange(word, taken, AcqRel, Acquire)
                        .is_ok()
                    {
                        if full {
                            self.counters
                                .probes_expired
                                .fetch_add(count_b(word), Relaxed);
                        }
                        return Ok(Admission::Admitted {
                            permit: Permit {
                                word: taken,
                                start_ns: now_ns,
                            },
                            transition: None,
                        });
                    }
                }
                State::Open => {
                    let opened_at = self.opened_at_ns.load(Acquire);
                    if self.word.load(Acquire) != word {
                        continue; // a transition raced with the read of opened_at
                    }
                    let now_ns = now()?;
                    let probe_at = opened_at.saturating_add(self.settings.open_timeout_ns);
                    if now_ns < probe_at {
                        return Ok(self.reject(probe_at - now_ns));
                    }
                    // The first caller after the timeout becomes the first probe.
                    self.last_probe_at_ns.fetch_max(now_ns, AcqRel);
                    let probing = pack(State::HalfOpen, next_epoch(word), 0, 1);
                    if self
                        .word
                        .compare_exchange(word, probing, AcqRel, Acquire)
                        .is_ok()
                    {
                        self.counters.to_half_open.fetch_add(1, Relaxed);
                        return Ok(Admission::Admitted {
                            permit: Permit {
                                word: probing,
                                start_ns: now_ns,
                            },
                            transition: Some(Transition {
                                from: State::Open,
                                to: State::HalfOpen,
                            }),
                        });
                    }
                }
            }
        }
    }

    fn reject(&self, retry_after_ns: u64) -> Admission {
        self.counters.rejected.fetch_add(1, Relaxed);
        Admission::Rejected { retry_after_ns }
    }

    /// Records how an admitted call ended; returns the state change it caused.
    ///
    /// The clock is read once, first, and only when the outcome needs it (a
    /// failure may open the breaker; the window mode times every call). If it
    /// fails, the call is recorded as neutral, so a probe still gives its slot
    /// back, and the clock's error is returned.
    pub fn record<E>(
        &self,
        permit: Permit,
        outcome: Outcome,
        now: &mut impl FnMut() -> Result<u64, E>,
    ) -> Result<Option<Transition>, E> {
        let needs_clock = match outcome {
            Outcome::Neutral => false,
            Outcome::Failure => true,
            Outcome::Success => self.settings.window.is_some(),
        };
        if !needs_clock {
            return Ok(self.record_at(permit, outcome, 0));
        }
        match now() {
            Ok(now_ns) => Ok(self.record_at(permit, outcome, now_ns)),
            Err(error) => {
                self.record_at(permit, Outcome::Neutral, 0);
                Err(error)
            }
        }
    }

    fn record_at(&self, permit: Permit, outcome: Outcome, now_ns: u64) -> Option<Transition> {
        let timed = self.settings.window.is_some() && outcome != Outcome::Neutral;
        let slow = match &self.settings.window {
            Some(WindowSettings {
                slow_call_ns: Some(limit),
                ..
            }) if timed => now_ns.saturating_sub(permit.start_ns) >= *limit,
            _ => false,
        };
        match outcome {
            Outcome::Success => self.counters.succeeded.fetch_add(1, Relaxed),
            Outcome::Failure => {
                self.last_failure_bits
                    .store(wall_clock_secs().to_bits(), Relaxed);
                self.counters.failed.fetch_add(1, Relaxed)
            }
            Outcome::Neutral => self.counters.ignored.fetch_add(1, Relaxed),
        };
        if slow {
            self.counters.slow.fetch_add(1, Relaxed);
        }
        match State::of(permit.word) {
            State::Closed if timed => self.record_in_window(permit, outcome, slow, now_ns),
            State::Closed => self.record_closed(permit, outcome, now_ns),
            State::HalfOpen => {
                // A slow probe means the service has not recovered.
                let outcome = if slow { Outcome::Failure } else { outcome };
                self.record_probe(permit, outcome, now_ns)
            }
            State::Open | State::ForcedOpen => None,
        }
    }

    /// Count mode: `failure_threshold` consecutive failures open the breaker.
    fn record_closed(&self, permit: Permit, outcome: Outcome, now_ns: u64) -> Option<Transition> {
        let mut word = self.word.load(Relaxed);
        loop {
            if !same_phase(word, permit.word) {
                return None;
            }
            let failures = count_a(word);
            let updated = match outcome {
                Outcome::Neutral => return None,
                Outcome::Success if failures == 0 => return None,
                Outcome::Success => word & !(COUNT_MASK << A_SHIFT),
                Outcome::Failure if failures + 1 >= u64::from(self.settings.failure_threshold) => {
                    return self.open_from(permit.word, now_ns);
                }
                Outcome::Failure => word + (1 << A_SHIFT),
            };
            match self
                .word
                .compare_exchange_weak(word, updated, AcqRel, Relaxed)
            {
                Ok(_) => return None,
                Err(current) => word = current,
            }
        }
    }

    /// Window mode: the failure and slow-call rates of the last `window_ns` decide.
    fn record_in_window(
        &self,
        permit: Permit,
        outcome: Outcome,
        slow: bool,
        now_ns: u64,
    ) -> Option<Transition> {
        let settings = self.settings.window.as_ref()?;
        let should_open = {
            let mut window = lock(&self.window);
            if !same_phase(self.word.load(Acquire), permit.word) {
                return None;
            }
            let phase = epoch(permit.word);
            if window.epoch != phase {
                window.epoch = phase;
                window.buckets = [EMPTY_BUCKET; WINDOW_BUCKETS as usize];
            }
            let bucket_ns = (settings.window_ns / WINDOW_BUCKETS).max(1);
            let index = now_ns / bucket_ns;
            let bucket = &mut window.buckets[(index % WINDOW_BUCKETS) as usize];
            if bucket.index != index {
                *bucket = Bucket {
                    index,
                    ..Bucket::default()
                };
            }
            bucket.calls += 1;
            bucket.failures += u64::from(outcome == Outcome::Failure);
            bucket.slow += u64::from(slow);
            let (mut calls, mut failures, mut slow_calls) = (0u64, 0u64, 0u64);
            for b in &window.buckets {
                if b.index <= index && index - b.index < WINDOW_BUCKETS {
                    calls += b.calls;
                    failures += b.failures;
                    slow_calls += b.slow;
                }
            }
            calls >= settings.minimum_calls
                && (failures as f64 / calls as f64 >= settings.failure_rate_threshold
                    || (settings.slow_call_ns.is_some()
                        && slow_calls as f64 / calls as f64 >= settings.slow_call_rate_threshold))
        };
        if should_open {
            self.open_from(permit.word, now_ns)
        } else {
            None
        }
    }

    /// Half-open: `success_threshold` successes close; a failure reopens.
    fn record_probe(&self, permit: Permit, outcome: Outcome, now_ns: u64) -> Option<Transition> {
        if outcome == Outcome::Failure {
            return self.open_from(permit.word, now_ns);
        }
        let mut word = self.word.load(Acquire);
        loop {
            if !same_phase(word, permit.word) {
                return None;
            }
            let released = word - (1 << B_SHIFT);
            let closes = outcome == Outcome::Success
                && count_a(word) + 1 >= u64::from(self.settings.success_threshold);
            let updated = match outcome {
                Outcome::Success if closes => pack(State::Closed, next_epoch(word), 0, 0),
                Outcome::Success => released + (1 << A_SHIFT),
                _ => released,
            };
            match self
                .word
                .compare_exchange_weak(word, updated, AcqRel, Acquire)
            {
                Ok(_) if closes => {
                    self.counters.to_closed.fetch_add(1, Relaxed);
                    return Some(Transition {
                        from: State::HalfOpen,
                        to: State::Closed,
                    });
                }
                Ok(_) => return None,
                Err(current) => word = current,
            }
        }
    }

    /// Opens the breaker if it is still in the phase of `expected`.
    fn open_from(&self, expected: u64, now_ns: u64) -> Option<Transition> {
        let _guard = lock(&self.transition_lock);
        let mut word = self.word.load(Acquire);
        loop {
            if !same_phase(word, expected) {
                return None;
            }
            // Published before the word, so whoever sees this OPEN sees its start.
            self.opened_at_ns.store(now_ns, Release);
            let open = pack(State::Open, next_epoch(word), 0, 0);
            match self.word.compare_exchange(word, open, AcqRel, Acquire) {
                Ok(_) => {
                    self.counters.to_open.fetch_add(1, Relaxed);
                    return Some(Transition {
                        from: State::of(expected),
                        to: State::Open,
                    });
                }
                Err(current) => word = current, // a count changed; same phase, retry
            }
        }
    }

    /// Holds the breaker open until `reset()`.
    pub fn force_open(&self) -> Option<Transition> {
        let _guard = lock(&self.transition_lock);
        let previous = self.replace_word(State::ForcedOpen);
        let from = State::of(previous);
        if from == State::Open || from == State::ForcedOpen {
            return None;
        }
        self.counters.to_open.fetch_add(1, Relaxed);
        Some(Transition {
            from,
            to: State::Open,
        })
    }

    /// Closes the breaker and starts its counts (not the metrics counters) afresh.
    pub fn reset(&self) -> Option<Transition> {
        let _guard = lock(&self.transition_lock);
        let previous = self.replace_word(State::Closed);
        self.succeeded_base
            .store(self.counters.succeeded.load(Relaxed), Relaxed);
        self.failed_base
            .store(self.counters.failed.load(Relaxed), Relaxed);
        self.last_failure_bits.store(0, Relaxed);
        let from = State::of(previous);
        if from == State::Closed {
            return None;
        }
        self.counters.to_closed.fetch_add(1, Relaxed);
        Some(Transition {
            from,
            to: State::Closed,
        })
    }

    fn replace_word(&self, state: State) -> u64 {
        let mut word = self.word.load(Acquire);
        loop {
            let new = pack(state, next_epoch(word), 0, 0);
            match self.word.compare_exchange_weak(word, new, AcqRel, Acquire) {
                Ok(previous) => return previous,
                Err(current) => word = current,
            }
        }
    }
}

#[cfg(feature = "python")]
pub use binding::CircuitBreakerCore;

#[cfg(feature = "python")]
mod binding {
    use super::lock;
    use super::{
        Admission, Breaker, Outcome, Permit, Settings, State, Transition, WindowSettings, MAX_COUNT,
    };
    use crate::breaker_ffi::{context_get, context_set, fresh_error, raise_chained};
    use crate::clock::{ns_to_secs, secs_to_ns, Clock};
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

    /// The lock-free core of `shared.resilience.CircuitBreaker`.
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
            _ => Err(PyValueError::new_err(format!(
                "{name} must be between 1 and {MAX_COUNT}, got {value}"
            ))),
        }
    }

    fn seconds_setting(name: &str, value: f64) -> PyResult<u64> {
        if !value.is_finite() || value <= 0.0 {
            return Err(PyValueError::new_err(format!(
                "{name} must be a finite number > 0, got {value}"
            )));
        }
        Ok(secs_to_ns(value).max(1))
    }

    fn rate_setting(name: &str, value: f64) -> PyResult<f64> {
        if !(value > 0.0 && value <= 1.0) {
            return Err(PyValueError::new_err(format!(
                "{name} must be in (0, 1], got {value}"
            )));
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
        pub(crate) fn try_admit<'py>(
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
                    this.name
                        .bind(py)
                        .repr()
                        .map_or_else(|_| "?".to_owned(), |r| r.to_string())
                ))
            })
        }

        fn record(
            &self,
            breaker: &Bound<'_, Self>,
            permit: Permit,
            outcome: Outcome,
        ) -> PyResult<()> {
            let transition = self
                .core
                .record(permit, outcome, &mut self.now_fn(breaker.py()))?;
            self.notify(breaker, transition)
        }

        /// Success, unless `is_failure_result` says the value is a failure.
        pub(crate) fn record_value(
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
        pub(crate) fn record_error(
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
        fn notify(
            &self,
            breaker: &Bound<'_, Self>,
            transition: Option<Transition>,
        ) -> PyResult<()> {
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
                probe_timeout_ns: seconds_setting(
                    "probe_timeout",
                    probe_timeout.unwrap_or(timeout),
                )?,
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
        /// same one under the vectorcall convention (`crate::breaker_ffi`).
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn settings(
        failure_threshold: u32,
        success_threshold: u32,
        half_open_max_calls: u32,
    ) -> Settings {
        Settings {
            failure_threshold,
            success_threshold,
            half_open_max_calls,
            open_timeout_ns: 1_000,
            probe_timeout_ns: 5_000,
            window: None,
        }
    }

    fn clock(t: u64) -> impl FnMut() -> Result<u64, Infallible> {
        move || Ok(t)
    }

    fn admit(b: &Breaker, t: u64) -> Admission {
        b.admit(&mut clock(t)).unwrap()
    }

    fn permit(b: &Breaker, t: u64) -> Permit {
        match admit(b, t) {
            Admission::Admitted { permit, .. } => permit,
            Admission::Rejected { .. } => panic!("rejected"),
        }
    }

    fn record(b: &Breaker, p: Permit, outcome: Outcome, t: u64) -> Option<Transition> {
        b.record(p, outcome, &mut clock(t)).unwrap()
    }

    #[test]
    fn opens_after_consecutive_failures_and_rejects_until_timeout() {
        let b = Breaker::new(settings(3, 1, 1));
        for _ in 0..2 {
            let p = permit(&b, 0);
            assert_eq!(record(&b, p, Outcome::Failure, 0), None);
        }
        let p = permit(&b, 0);
        assert_eq!(record(&b, p, Outcome::Success, 0), None);
        assert_eq!(b.state(), State::Closed, "a success resets the streak");
        for _ in 0..3 {
            let p = permit(&b, 10);
            record(&b, p, Outcome::Failure, 10);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            admit(&b, 400),
            Admission::Rejected {
                retry_after_ns: 610
            }
        );
        assert_eq!(b.failure_count(), 5);
        assert!(b.last_failure_time().is_some());
    }

    #[test]
    fn half_open_admits_limited_probes_and_closes_after_successes() {
        let b = Breaker::new(settings(1, 2, 1));
        let p = permit(&b, 0);
        record(&b, p, Outcome::Failure, 0);
        let probe = permit(&b, 1_000);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(
            admit(&b, 1_000),
            Admission::Rejected {
                retry_after_ns: 5_000
            }
        );
        assert_eq!(record(&b, probe, Outcome::Success, 1_000), None);
        let probe = permit(&b, 1_000);
        let closed = record(&b, probe, Outcome::Success, 1_000);
        assert_eq!(
            closed,
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
    }

    #[test]
    fn neutral_probe_gives_back_its_permit() {
        let b = Breaker::new(settings(1, 1, 1));
        let p = permit(&b, 0);
        record(&b, p, Outcome::Failure, 0);
        let probe = permit(&b, 2_000);
        record(&b, probe, Outcome::Neutral, 2_000);
        assert!(matches!(admit(&b, 2_000), Admission::Admitted { .. }));
    }

    #[test]
    fn a_probe_lease_expires_after_probe_timeout() {
        let b = Breaker::new(settings(1, 1, 1));
        let p = permit(&b, 0);
        record(&b, p, Outcome::Failure, 0);
        let leaked = permit(&b, 1_000); // never reports
        assert_eq!(admit(&b, 5_999), Admission::Rejected { retry_after_ns: 1 });
        let renewed = permit(&b, 6_000);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.counters.probes_expired.load(Relaxed), 1);
        assert_eq!(
            record(&b, leaked, Outcome::Failure, 6_000),
            None,
            "the expired probe's outcome is late"
        );
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(
            admit(&b, 6_001),
            Admission::Rejected {
                retry_after_ns: 4_999
            }
        );
        assert_eq!(
            record(&b, renewed, Outcome::Success, 6_001),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
    }

    #[test]
    fn a_new_probe_renews_the_lease_of_the_slots() {
        let b = Breaker::new(settings(1, 5, 2));
        let p = permit(&b, 0);
        record(&b, p, Outcome::Failure, 0);
        let leaked = permit(&b, 1_000);
        let second = permit(&b, 4_000);
        // Full since 4_000: free again at 9_000, not at 6_000.
        assert_eq!(admit(&b, 8_999), Admission::Rejected { retry_after_ns: 1 });
        record(&b, second, Outcome::Success, 8_999);
        let third = permit(&b, 8_999);
        assert_eq!(admit(&b, 13_998), Admission::Rejected { retry_after_ns: 1 });
        let fresh = permit(&b, 13_999);
        assert_eq!(b.counters.probes_expired.load(Relaxed), 2);
        assert_eq!(record(&b, leaked, Outcome::Failure, 14_000), None);
        assert_eq!(record(&b, third, Outcome::Failure, 14_000), None);
        assert_eq!(b.state(), State::HalfOpen);
        record(&b, fresh, Outcome::Neutral, 14_000);
        assert!(matches!(admit(&b, 14_000), Admission::Admitted { .. }));
    }

    #[test]
    fn late_outcome_of_an_old_phase_changes_nothing() {
        let b = Breaker::new(settings(1, 1, 1));
        let old = permit(&b, 0);
        b.force_open();
        b.reset();
        assert_eq!(record(&b, old, Outcome::Failure, 0), None);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(
            b.counters.failed.load(Relaxed),
            1,
            "still counted for metrics"
        );
    }

    #[test]
    fn forced_open_never_probes_until_reset() {
        let b = Breaker::new(settings(1, 1, 1));
        assert!(b.force_open().is_some());
        assert_eq!(
            admit(&b, u64::MAX),
            Admission::Rejected {
                retry_after_ns: 1_000
            }
        );
        assert_eq!(
            b.reset(),
            Some(Transition {
                from: State::ForcedOpen,
                to: State::Closed
            })
        );
        assert_eq!(b.counters.rejected.load(Relaxed), 1);
    }

    #[test]
    fn window_opens_on_failure_rate_after_minimum_calls() {
        let mut s = settings(1, 1, 1);
        s.window = Some(WindowSettings {
            window_ns: 100,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            slow_call_ns: Some(5),
            slow_call_rate_threshold: 1.0,
        });
        let b = Breaker::new(s);
        for (outcome, end) in [
            (Outcome::Failure, 1),
            (Outcome::Failure, 1),
            (Outcome::Success, 1),
        ] {
            let p = permit(&b, 0);
            record(&b, p, outcome, end);
        }
        assert_eq!(b.state(), State::Closed, "below minimum_calls");
        // The old failures age out of the window.
        let p = permit(&b, 200);
        assert_eq!(record(&b, p, Outcome::Success, 201), None);
        let p = permit(&b, 200);
        assert_eq!(
            record(&b, p, Outcome::Success, 210),
            None,
            "slow but rate 1/2 < 1.0"
        );
        assert_eq!(b.counters.slow.load(Relaxed), 1);
        for _ in 0..2 {
            let p = permit(&b, 220);
            record(&b, p, Outcome::Failure, 221);
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn counts_add_up_under_threads() {
        let breaker = Breaker::new(settings(2, 3, 2));
        let admitted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let (breaker, admitted) = (&breaker, &admitted);
                scope.spawn(move || {
                    for i in 0..20_000u64 {
                        // Time jumps past the timeout now and then, so every state is visited.
                        let now = (i / 100) * 1_000;
                        let Admission::Admitted { permit, .. } = admit(breaker, now) else {
                            continue;
                        };
                        admitted.fetch_add(1, Relaxed);
                        let outcome = match (i + t) % 5 {
                            0 | 1 => Outcome::Failure,
                            2 => Outcome::Neutral,
                            _ => Outcome::Success,
                        };
                        record(breaker, permit, outcome, now);
                    }
                });
            }
        });
        let c = &breaker.counters;
        let recorded = c.succeeded.load(Relaxed) + c.failed.load(Relaxed) + c.ignored.load(Relaxed);
        assert_eq!(recorded, admitted.load(Relaxed));
        assert_eq!(recorded + c.rejected.load(Relaxed), 80_000);
        assert!(c.to_open.load(Relaxed) > 0 && c.to_half_open.load(Relaxed) > 0);
        // Every probe slot was given back: the word holds no probe in flight.
        let word = breaker.word.load(Relaxed);
        assert!(State::of(word) != State::HalfOpen || count_b(word) == 0);
    }
}
