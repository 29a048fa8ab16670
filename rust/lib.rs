//! The native core of `shared`: state machines behind the Python API (atomics where
//! the state fits one word, short mutex sections for the keyed tables).
//!
//! Each primitive lives in its own file: the core logic first, free of `PyO3`
//! types and tested by `cargo test --no-default-features`, then its Python
//! binding behind the `python` feature. This file only declares modules and
//! registers what Python sees as `shared._native`.

pub mod backoff;
#[cfg(feature = "python")]
pub mod binding_errors;
pub mod circuit_breaker;
pub mod clock;
pub mod huge_pages;
pub mod idempotency;
pub mod limiter_registry;
pub mod retry;
// Allowed `unsafe` code: `PyThreadState_SetAsyncExc` (see the module's documentation).
#[cfg(feature = "python")]
#[allow(unsafe_code)]
pub mod timeout;
pub mod token_bucket;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::backoff::Backoff;
    #[pymodule_export]
    use crate::circuit_breaker::CircuitBreakerCore;
    #[pymodule_export]
    use crate::clock::monotonic_ns;
    #[pymodule_export]
    use crate::idempotency::IdempotencyLru;
    #[pymodule_export]
    use crate::limiter_registry::{KeyedLimiter, RateLimiterRegistry};
    #[pymodule_export]
    use crate::retry::{RetryBudget, RetryCore, RetryingCall};
    #[pymodule_export]
    use crate::timeout::{
        current_thread_state, deadline_clock, set_alarm_handler, set_deadline_clock, set_hooks,
        shield_enter, shield_exit, DeadlineCore, Guard, ThreadState,
    };
    #[pymodule_export]
    use crate::token_bucket::{Reservation, TokenBucket};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::clock::init_epoch(m.py())?;
        crate::circuit_breaker::install(m)?;
        for (name, value) in crate::timeout::FIRE_OUTCOMES {
            m.add(name, value)?;
        }
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add(
            "BUILD_PROFILE",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        )?;
        m.add("ABI3", cfg!(feature = "abi3"))?;
        Ok(())
    }
}
