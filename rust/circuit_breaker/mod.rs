//! Circuit breaker: a state machine in one atomic word (lock-free on the success path).
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
//!
//! Split by concern: `word` (the packed state word), `machine` (admission,
//! outcomes, transitions), `window` (the sliding-window mode) and, behind
//! the `python` feature, `binding` (the Python class) with its child
//! `binding::ffi` (the vectorcall `call` and other C-API fast paths).

#[cfg(feature = "python")]
mod binding;
mod machine;
mod window;
mod word;

#[cfg(feature = "python")]
pub use binding::{install, CircuitBreakerCore};
pub use machine::{Admission, Breaker, Counters, Outcome, Permit, Settings, Transition};
pub use window::{WindowSettings, WINDOW_BUCKETS};
pub use word::{State, MAX_COUNT};
