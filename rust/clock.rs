//! Time for the cores: integer nanoseconds on one monotonic timeline.
//!
//! Cores never read a clock themselves; their methods take `now_ns`, so the
//! logic is deterministic under `cargo test`. The binding supplies `now_ns`
//! from [`Clock`]: the process monotonic clock (no Python call), or a
//! `shared.testing.ManualClock` that the pure-Python twin reads too.

use std::sync::OnceLock;
use std::time::Instant;

/// Anchor of the native timeline: `(Instant at init, time.monotonic_ns() at init)`.
/// Aligning with Python's `time.monotonic_ns()` lets Python wrappers and the
/// Rust cores compare deadlines directly.
static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();

/// Nanoseconds on the native monotonic timeline.
#[inline]
#[must_use]
pub fn now_ns() -> u64 {
    let (start, base) = EPOCH.get_or_init(|| (Instant::now(), 0));
    // u64 nanoseconds overflow after 584 years of uptime.
    base + start.elapsed().as_nanos() as u64
}

/// Converts seconds to nanoseconds (truncating), saturating at `u64::MAX`; NaN and negatives give 0.
#[inline]
#[must_use]
pub fn secs_to_ns(seconds: f64) -> u64 {
    if seconds.is_nan() || seconds <= 0.0 {
        0
    } else if seconds >= (u64::MAX as f64) / 1e9 {
        u64::MAX
    } else {
        (seconds * 1e9) as u64
    }
}

/// Converts nanoseconds to seconds.
#[inline]
#[must_use]
pub fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(feature = "python")]
pub use binding::{init_epoch, monotonic_ns, Clock};

#[cfg(feature = "python")]
mod binding {
    use super::{now_ns, EPOCH};
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::PyString;
    use std::time::Instant;

    /// Anchors the native timeline to `time.monotonic_ns()`; called once at import.
    pub fn init_epoch(py: Python<'_>) -> PyResult<()> {
        let base: u64 = py.import("time")?.call_method0("monotonic_ns")?.extract()?;
        let _ = EPOCH.set((Instant::now(), base));
        Ok(())
    }

    /// The native monotonic clock in nanoseconds, on the same timeline as
    /// `time.monotonic_ns()`.
    #[pyfunction]
    #[must_use]
    pub fn monotonic_ns() -> u64 {
        now_ns()
    }

    /// Where a core reads the time: the native clock, or a manual clock object
    /// with a `now_ns()` method (tests; one object drives both backends).
    pub enum Clock {
        Monotonic,
        Manual(Py<PyAny>),
    }

    static NOW_NS: PyOnceLock<Py<PyString>> = PyOnceLock::new();

    impl Clock {
        /// `None` selects the native clock; anything else must have `now_ns()`.
        pub fn from_py(clock: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
            match clock {
                None => Ok(Self::Monotonic),
                Some(obj) if obj.is_none() => Ok(Self::Monotonic),
                Some(obj) => {
                    if !obj.hasattr("now_ns")? {
                        return Err(pyo3::exceptions::PyTypeError::new_err(
                            "clock must have a now_ns() method (for example shared.testing.ManualClock)",
                        ));
                    }
                    Ok(Self::Manual(obj.clone().unbind()))
                }
            }
        }

        /// The current time in nanoseconds.
        #[inline]
        pub fn now_ns(&self, py: Python<'_>) -> PyResult<u64> {
            match self {
                Self::Monotonic => Ok(now_ns()),
                Self::Manual(obj) => {
                    let name = NOW_NS.get_or_init(py, || PyString::intern(py, "now_ns").unbind());
                    obj.bind(py).call_method0(name.bind(py))?.extract()
                }
            }
        }

        /// The object handed in, or `None` for the native clock.
        #[must_use]
        pub fn to_py(&self, py: Python<'_>) -> Py<PyAny> {
            match self {
                Self::Monotonic => py.None(),
                Self::Manual(obj) => obj.clone_ref(py),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_monotonic() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }

    #[test]
    fn seconds_convert_and_saturate() {
        assert_eq!(secs_to_ns(1.5), 1_500_000_000);
        assert_eq!(secs_to_ns(-1.0), 0);
        assert_eq!(secs_to_ns(f64::NAN), 0);
        assert_eq!(secs_to_ns(f64::INFINITY), u64::MAX);
        assert_eq!(secs_to_ns(1e300), u64::MAX);
        assert!((ns_to_secs(2_500_000_000) - 2.5).abs() < 1e-12);
    }
}
