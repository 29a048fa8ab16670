"""Rate-limit guarantees: over any schedule, grants never exceed burst + rate x time."""

from __future__ import annotations

import threading
import time

from hypothesis import example, given
from hypothesis import strategies as st

from shared.resilience import RateLimitConfig, RateLimiterRegistry, TokenBucket
from shared.testing import ManualClock

# Float error of summing the grants.
SLACK = 1e-6

rates = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)
bursts = st.floats(min_value=1.0, max_value=1e3, allow_nan=False)
steps = st.lists(
    st.tuples(
        st.sampled_from(["try", "acquire"]),
        st.floats(min_value=0.0, max_value=1.0),  # fraction of the burst asked for
        st.integers(min_value=0, max_value=3_000_000_000),  # ns to advance after
    ),
    max_size=60,
)


def assert_bound(grants: list[tuple[int, float]], rate: float, burst: float) -> None:
    """Every window [t0, t1] between grants holds at most burst + rate * (t1 - t0) tokens.

    Plus the documented allowance: the capacity is the burst's cost rounded up to
    whole nanoseconds, worth less than one nanosecond of tokens (rate * 1e-9).
    """
    allowance = rate * 1e-9
    for i, (t0, _) in enumerate(grants):
        total = 0.0
        for t1, tokens in grants[i:]:
            total += tokens
            bound = burst + rate * (t1 - t0) / 1e9 + allowance
            assert total <= bound + SLACK * max(1.0, burst)


@given(rate=rates, burst=bursts, initial=st.floats(0.0, 1.0), schedule=steps)
@example(
    rate=669793.0,
    burst=1.0625,
    initial=0.0,
    schedule=[("try", 0.0, 1587), ("try", 0.375, 0), ("acquire", 0.75, 0)],
).via("found by hypothesis: the capacity's rounding, within the allowance")
def test_grants_never_exceed_burst_plus_rate_times_time(
    rate: float, burst: float, initial: float, schedule: list[tuple[str, float, int]]
) -> None:
    """Tries and blocking acquires on a ManualClock respect the token-bucket bound."""
    clock = ManualClock()
    limiter = TokenBucket(
        RateLimitConfig(tokens_per_second=rate, burst_size=burst, initial_tokens=initial * burst),
        clock=clock,
    )
    grants: list[tuple[int, float]] = []
    for kind, fraction, advance in schedule:
        tokens = max(fraction * burst, 1e-3)
        if kind == "try":
            if limiter.try_acquire(tokens):
                grants.append((clock.now_ns(), tokens))
        elif tokens / rate < 1e4:  # acquire sleeps on the ManualClock
            limiter.acquire(tokens)
            grants.append((clock.now_ns(), tokens))
        clock.advance_ns(advance)
    assert_bound(grants, rate, burst)


@given(rate=rates, burst=bursts, schedule=steps)
def test_registry_limiters_respect_the_bound(
    rate: float, burst: float, schedule: list[tuple[str, float, int]]
) -> None:
    """A registry key's bucket obeys the same bound as a TokenBucket."""
    clock = ManualClock()
    registry = RateLimiterRegistry(
        RateLimitConfig(tokens_per_second=rate, burst_size=burst), max_keys=2, clock=clock
    )
    grants: list[tuple[int, float]] = []
    for _, fraction, advance in schedule:
        tokens = max(fraction * burst, 1e-3)
        if registry.get_limiter("k").try_acquire(tokens):
            grants.append((clock.now_ns(), tokens))
        clock.advance_ns(advance)
    assert_bound(grants, rate, burst)


def test_eight_threads_get_exactly_the_tokens_there_are() -> None:
    """8 threads racing on one bucket get every token there is and not one more."""
    limiter = TokenBucket(RateLimitConfig(tokens_per_second=1e-5, burst_size=4000))
    start = threading.Barrier(8)
    granted = [0] * 8

    def worker(i: int) -> None:
        start.wait(timeout=10)
        for _ in range(1000):
            granted[i] += limiter.try_acquire()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(granted) == 4000


def test_eight_threads_never_exceed_the_bound_in_real_time() -> None:
    """8 threads on one refilling bucket stay under burst + rate x time in every window."""
    rate, burst = 2000.0, 50.0
    limiter = TokenBucket(RateLimitConfig(tokens_per_second=rate, burst_size=burst))
    start = threading.Barrier(8)
    # Each grant happened at some instant between these two readings.
    grants: list[list[tuple[int, int]]] = [[] for _ in range(8)]

    def worker(i: int) -> None:
        start.wait(timeout=10)
        deadline = time.monotonic_ns() + 200_000_000
        while (before := time.monotonic_ns()) < deadline:
            if limiter.try_acquire():
                grants[i].append((before, time.monotonic_ns()))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    spans = sorted(g for per_thread in grants for g in per_thread)
    assert len(spans) >= burst
    # Grants surely inside [spans[i].before, end] number at most burst + rate x that window.
    for i, (window_start, _) in enumerate(spans):
        ends = sorted(after for _, after in spans[i:])
        for count, end in enumerate(ends, start=1):
            assert count <= burst + rate * (end - window_start) / 1e9 + SLACK * burst
