//! The backoff calculator: the delay before the next attempt of a retry.
//!
//! Delays are `f64` seconds, computed with the same float operations (in the
//! same order) as the pure-Python twin `shared._pure.backoff`, so both give
//! bit-identical delays for the same seed. Overflow-safe for any attempt
//! number: an exponent that overflows gives infinity, which the cap turns into
//! `max_delay`.
//!
//! Jitter draws from splitmix64, a tiny, well-defined generator implemented
//! identically in the twin: draw `k` (1, 2, ...) is `mix(seed + k * GAMMA)`,
//! so the state is one atomic counter and concurrent callers never lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// splitmix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// 2^-53: turns the top 53 bits of a draw into a uniform float in [0, 1).
const UNIT: f64 = 1.0 / 9_007_199_254_740_992.0;

/// splitmix64's output function.
#[inline]
#[must_use]
pub fn mix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How the un-jittered delay grows with the attempt number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// `initial * base^(attempt - 1)`
    Exponential,
    /// `initial * attempt`
    Linear,
    /// `initial`
    Constant,
}

impl Strategy {
    /// Parses the Python-facing name (`BackoffStrategy` values).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "exponential" => Some(Self::Exponential),
            "linear" => Some(Self::Linear),
            "constant" => Some(Self::Constant),
            _ => None,
        }
    }
}

/// How randomness is applied to the capped delay `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// exactly `d`
    None,
    /// uniform in [d/2, d)
    Equal,
    /// uniform in [0, d)
    Full,
    /// uniform in `[initial, min(3 * previous, max_delay))`, ignoring the strategy (AWS "decorrelated")
    Decorrelated,
}

impl Jitter {
    /// Parses the Python-facing name (`Jitter` values).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "equal" => Some(Self::Equal),
            "full" => Some(Self::Full),
            "decorrelated" => Some(Self::Decorrelated),
            _ => None,
        }
    }
}

/// A validated backoff policy with its own random stream.
#[derive(Debug)]
pub struct BackoffCore {
    strategy: Strategy,
    jitter: Jitter,
    initial: f64,
    cap: f64,
    base: f64,
    rng: AtomicU64,
}

/// Why a backoff configuration or argument is invalid: `(field, message)`.
pub type Invalid = (&'static str, String);

impl BackoffCore {
    /// Validates the configuration; the error names the field.
    pub fn new(
        strategy: Strategy,
        jitter: Jitter,
        initial: f64,
        cap: f64,
        base: f64,
        seed: u64,
    ) -> Result<Self, Invalid> {
        if !initial.is_finite() || initial < 0.0 {
            return Err((
                "initial_delay",
                format!("initial_delay must be a finite number >= 0, got {initial:?}"),
            ));
        }
        if !cap.is_finite() || cap < initial {
            return Err((
                "max_delay",
                format!("max_delay must be a finite number >= initial_delay, got {cap:?}"),
            ));
        }
        if !base.is_finite() || base < 1.0 {
            return Err((
                "exponential_base",
                format!("exponential_base must be a finite number >= 1, got {base:?}"),
            ));
        }
        Ok(Self {
            strategy,
            jitter,
            initial,
            cap,
            base,
            rng: AtomicU64::new(seed),
        })
    }

    /// The next uniform float in [0, 1) of this policy's stream.
    #[inline]
    fn next_unit(&self) -> f64 {
        let state = self
            .rng
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        (mix64(state) >> 11) as f64 * UNIT
    }

    /// The delay before attempt `attempt + 1`, without jitter, capped at `max_delay`.
    /// `attempt` >= 1 is the number of the attempt that just failed.
    #[inline]
    #[must_use]
    pub fn capped(&self, attempt: u64) -> f64 {
        let raw = match self.strategy {
            Strategy::Constant => self.initial,
            Strategy::Linear => self.initial * attempt as f64,
            // 0 * inf would be NaN; an exponent that overflows is inf, then capped.
            Strategy::Exponential if self.initial == 0.0 => 0.0,
            Strategy::Exponential => self.initial * self.base.powf((attempt - 1) as f64),
        };
        raw.min(self.cap)
    }

    /// The delay after failed attempt `attempt` (>= 1), jittered. `previous` is the
    /// delay slept before it (0 before the first retry); only decorrelated jitter reads it.
    #[inline]
    pub fn delay(&self, attempt: u64, previous: f64) -> Result<f64, Invalid> {
        if attempt == 0 {
            return Err(("attempt", "attempt must be >= 1, got 0".to_owned()));
        }
        if !previous.is_finite() || previous < 0.0 {
            return Err((
                "previous",
                format!("previous must be a finite number >= 0, got {previous:?}"),
            ));
        }
        Ok(match self.jitter {
            Jitter::None => self.capped(attempt),
            Jitter::Equal => {
                let half = self.capped(attempt) * 0.5;
                half + self.next_unit() * half
            }
            Jitter::Full => self.next_unit() * self.capped(attempt),
            Jitter::Decorrelated => {
                let upper = (previous * 3.0).min(self.cap).max(self.initial);
                self.initial + self.next_unit() * (upper - self.initial)
            }
        })
    }
}

#[cfg(feature = "python")]
pub use binding::Backoff;

#[cfg(feature = "python")]
mod binding {
    use super::{BackoffCore, Jitter, Strategy};
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;

    /// The backoff calculator (`shared._pure.backoff.Backoff` is its twin).
    #[pyclass(frozen, module = "shared._native")]
    pub struct Backoff {
        core: BackoffCore,
    }

    #[pymethods]
    impl Backoff {
        #[new]
        #[pyo3(signature = (
            strategy="exponential",
            initial_delay=1.0,
            max_delay=60.0,
            exponential_base=2.0,
            jitter="none",
            seed=None,
        ))]
        fn new(
            strategy: &str,
            initial_delay: f64,
            max_delay: f64,
            exponential_base: f64,
            jitter: &str,
            seed: Option<u64>,
        ) -> PyResult<Self> {
            let strategy = Strategy::parse(strategy).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "strategy must be 'exponential', 'linear' or 'constant', got {strategy:?}"
                ))
            })?;
            let jitter = Jitter::parse(jitter).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "jitter must be 'none', 'equal', 'full' or 'decorrelated', got {jitter:?}"
                ))
            })?;
            // Unseeded: a per-process random key from the standard library's hasher.
            let seed = seed.unwrap_or_else(|| RandomState::new().hash_one(0u8));
            BackoffCore::new(
                strategy,
                jitter,
                initial_delay,
                max_delay,
                exponential_base,
                seed,
            )
            .map(|core| Self { core })
            .map_err(|(_, message)| PyValueError::new_err(message))
        }

        /// The delay in seconds after failed attempt `attempt` (>= 1).
        #[pyo3(signature = (attempt, previous=0.0))]
        fn delay(&self, attempt: u64, previous: f64) -> PyResult<f64> {
            self.core
                .delay(attempt, previous)
                .map_err(|(_, message)| PyValueError::new_err(message))
        }
    }
}

#[cfg(test)]
// Delays are exact by contract: the twin must reproduce them bit for bit.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    fn policy(strategy: Strategy, jitter: Jitter) -> BackoffCore {
        BackoffCore::new(strategy, jitter, 1.0, 60.0, 2.0, 42).unwrap()
    }

    #[test]
    fn strategies_follow_the_document() {
        let delays = |s| {
            let b = policy(s, Jitter::None);
            (1..=5)
                .map(|n| b.delay(n, 0.0).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(delays(Strategy::Exponential), [1.0, 2.0, 4.0, 8.0, 16.0]);
        assert_eq!(delays(Strategy::Linear), [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(delays(Strategy::Constant), [1.0; 5]);
    }

    #[test]
    fn huge_attempts_are_capped_not_overflowed() {
        for s in [Strategy::Exponential, Strategy::Linear] {
            let b = policy(s, Jitter::None);
            assert_eq!(b.delay(u64::MAX, 0.0).unwrap(), 60.0);
            assert_eq!(b.delay(2000, 0.0).unwrap(), 60.0);
        }
        let zero = BackoffCore::new(Strategy::Exponential, Jitter::None, 0.0, 1.0, 2.0, 1).unwrap();
        assert_eq!(zero.delay(u64::MAX, 0.0).unwrap(), 0.0);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let equal = policy(Strategy::Exponential, Jitter::Equal);
        let full = policy(Strategy::Exponential, Jitter::Full);
        let decorrelated = policy(Strategy::Exponential, Jitter::Decorrelated);
        let mut previous = 0.0;
        for n in 1..200 {
            let d = policy(Strategy::Exponential, Jitter::None).capped(n);
            let e = equal.delay(n, 0.0).unwrap();
            assert!(d / 2.0 <= e && e <= d);
            let f = full.delay(n, 0.0).unwrap();
            assert!((0.0..=d).contains(&f));
            let c = decorrelated.delay(n, previous).unwrap();
            assert!((1.0..=60.0).contains(&c));
            assert!(c <= (previous * 3.0).max(1.0));
            previous = c;
        }
    }

    #[test]
    fn splitmix64_matches_the_reference() {
        // First outputs of the reference splitmix64 seeded with 1234567.
        let b =
            BackoffCore::new(Strategy::Constant, Jitter::Full, 1.0, 1.0, 1.0, 1_234_567).unwrap();
        let first = mix64(1_234_567u64.wrapping_add(GAMMA));
        assert_eq!(first, 6_457_827_717_110_365_317);
        let u = b.delay(1, 0.0).unwrap();
        assert_eq!(u, (first >> 11) as f64 * UNIT);
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = |i, c, b| {
            BackoffCore::new(Strategy::Exponential, Jitter::None, i, c, b, 0)
                .unwrap_err()
                .0
        };
        assert_eq!(bad(-1.0, 1.0, 2.0), "initial_delay");
        assert_eq!(bad(f64::NAN, 1.0, 2.0), "initial_delay");
        assert_eq!(bad(2.0, 1.0, 2.0), "max_delay");
        assert_eq!(bad(1.0, f64::INFINITY, 2.0), "max_delay");
        assert_eq!(bad(1.0, 2.0, 0.5), "exponential_base");
        let b = policy(Strategy::Linear, Jitter::None);
        assert_eq!(b.delay(0, 0.0).unwrap_err().0, "attempt");
        assert_eq!(b.delay(1, f64::NAN).unwrap_err().0, "previous");
    }
}
