//! The state machine: admission (with probe leases), outcomes by epoch, and
//! the transitions. No lock is held while user code runs, and none on the
//! closed path.

use super::window::{Window, WindowSettings};
use super::word::{
    count_a, count_b, epoch, next_epoch, pack, same_phase, State, A_SHIFT, B_SHIFT, COUNT_MASK,
};
use std::sync::atomic::{
    AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

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

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
            window: Mutex::new(Window::new()),
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
            window.record(
                settings,
                epoch(permit.word),
                now_ns,
                outcome == Outcome::Failure,
                slow,
            )
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
