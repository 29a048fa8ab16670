//! The breaker's state in one atomic word: the state, an epoch and two small
//! counts, packed so that one load tells a caller everything the closed path
//! needs and one compare-exchange moves the machine.

/// Largest threshold or probe count that fits a count field of the word.
pub const MAX_COUNT: u32 = (1 << COUNT_BITS) - 1;

const COUNT_BITS: u32 = 20;
const STATE_MASK: u64 = 0b11;
pub(super) const A_SHIFT: u32 = 2;
pub(super) const B_SHIFT: u32 = A_SHIFT + COUNT_BITS;
const EPOCH_SHIFT: u32 = B_SHIFT + COUNT_BITS;
pub(super) const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

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
    pub(super) fn of(word: u64) -> Self {
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
pub(super) fn pack(state: State, epoch: u64, a: u64, b: u64) -> u64 {
    (epoch << EPOCH_SHIFT) | (b << B_SHIFT) | (a << A_SHIFT) | state as u64
}
pub(super) fn epoch(word: u64) -> u64 {
    word >> EPOCH_SHIFT
}
pub(super) fn count_a(word: u64) -> u64 {
    (word >> A_SHIFT) & COUNT_MASK
}
pub(super) fn count_b(word: u64) -> u64 {
    (word >> B_SHIFT) & COUNT_MASK
}
pub(super) fn next_epoch(word: u64) -> u64 {
    (epoch(word) + 1) & ((1 << (64 - EPOCH_SHIFT)) - 1)
}
pub(super) fn same_phase(a: u64, b: u64) -> bool {
    a & STATE_MASK == b & STATE_MASK && epoch(a) == epoch(b)
}
