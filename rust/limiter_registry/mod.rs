//! Per-key token buckets: one GCRA state per key in a compact table.
//!
//! Memory is the constraint (a million keys in well under 100 bytes each), so
//! no Python object is kept per key: a key is a slot of 56 bytes (its hash,
//! its text inline when short, its TAT, its configuration, a generation and
//! its two links in the recency list), found through a compact index
//! (`slot_index`). `get_limiter` hands out a small handle holding the slot
//! number and generation; a handle whose slot was evicted or reused finds (or
//! recreates) its key again. Handing out a handle allocates nothing in the
//! common cases: a hot key's handle is cached, and on a build with the GIL the
//! last handle given out is re-pointed to the next key once nobody holds it
//! (reference count 1). The slot segments and the index are advised for huge
//! pages (`huge_pages.rs`): over a million keys each lookup would otherwise
//! also miss the TLB.
//!
//! One lock guards the table; every critical section is a lookup and a few
//! integer operations, never user code. It is a spin lock whose release is a
//! plain store, where `std::sync::Mutex` releases with an atomic swap (that
//! second atomic operation was the largest cost of a one-call decision on a
//! hot key after the clock read).
//! Builds with the GIL never contend for it (every caller holds the GIL for
//! the whole critical section); on free-threaded builds a waiter spins
//! briefly, then yields its CPU until the holder is done (`Registry::lock`).
//!
//! Nothing under the lock is O(keys): slots live in segments that double in
//! size and never move (a new segment is allocated, the old ones stay), the
//! index grows incrementally and its old buckets are freed after the lock is
//! released (see `slot_index`), and keys with the default configuration
//! are kept in an intrusive doubly linked list, most recently used first.
//!
//! The registry is bounded by `max_keys`. When full, by default (`Evict`) the
//! least recently used key is forgotten: its bucket has had the longest to
//! refill, so forgetting it grants the least. With `Reject`, only keys whose
//! bucket has been full for `idle_ttl` are evicted (forgetting a full bucket
//! loses nothing) and a new key is refused with the time until one can be.
//! Keys given their own configuration by `set` are never evicted.
//!
//! Split by concern: `table` (slots in segments, the recency list, eviction,
//! growth, the lock) with the index it uses (`slot_index`) and, behind the
//! `python` feature, `binding` (the `RateLimiterRegistry` class) and
//! `handles` (its `KeyedLimiter` handles).

#[cfg(feature = "python")]
mod binding;
#[cfg(feature = "python")]
mod handles;
pub mod slot_index;
mod table;

#[cfg(feature = "python")]
pub use binding::RateLimiterRegistry;
#[cfg(feature = "python")]
pub use handles::KeyedLimiter;
pub use table::{Decisions, Full, Location, OnFull, Registry};
