//! The opt-in failure-rate mode (resilience4j's time-based sliding window):
//! `WINDOW_BUCKETS` buckets over the window, each counting the calls, failures
//! and slow calls of its slice of time, emptied when a new phase starts.

/// Buckets of the time-based sliding window.
pub const WINDOW_BUCKETS: u64 = 10;

/// The opt-in failure-rate mode (resilience4j's time-based sliding window).
#[derive(Clone, Debug)]
pub struct WindowSettings {
    pub window_ns: u64,
    pub minimum_calls: u64,
    pub failure_rate_threshold: f64,
    pub slow_call_ns: Option<u64>,
    pub slow_call_rate_threshold: f64,
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    index: u64,
    calls: u64,
    failures: u64,
    slow: u64,
}

pub(super) struct Window {
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

impl Window {
    pub(super) const fn new() -> Self {
        Self {
            epoch: 0,
            buckets: [EMPTY_BUCKET; WINDOW_BUCKETS as usize],
        }
    }

    /// Counts one call of the phase whose epoch is `phase`, ended at `now_ns`;
    /// returns whether the window's rates now reach a threshold (the breaker opens).
    pub(super) fn record(
        &mut self,
        settings: &WindowSettings,
        phase: u64,
        now_ns: u64,
        failed: bool,
        slow: bool,
    ) -> bool {
        if self.epoch != phase {
            self.epoch = phase;
            self.buckets = [EMPTY_BUCKET; WINDOW_BUCKETS as usize];
        }
        let bucket_ns = (settings.window_ns / WINDOW_BUCKETS).max(1);
        let index = now_ns / bucket_ns;
        let bucket = &mut self.buckets[(index % WINDOW_BUCKETS) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.calls += 1;
        bucket.failures += u64::from(failed);
        bucket.slow += u64::from(slow);
        let (mut calls, mut failures, mut slow_calls) = (0u64, 0u64, 0u64);
        for b in &self.buckets {
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
    }
}
