"""Registry memory: a million keys in at most 100 bytes each (RSS, measured in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

KEYS = 1_000_000
MAX_BYTES_PER_KEY = 100

_MEASURE = textwrap.dedent(
    """
    import os, sys
    from shared.resilience import RateLimitConfig, RateLimiterRegistry

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    keys = int(sys.argv[1])
    registry = RateLimiterRegistry(RateLimitConfig(tokens_per_second=10.0), max_keys=keys)
    registry.get_limiter("warm-up").try_acquire()
    registry.remove_limiter("warm-up")
    before = rss()
    for i in range(keys):
        registry.get_limiter(f"user_{i}").try_acquire()
    assert len(registry) == keys
    print((rss() - before) / keys)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.usefixtures("native")
def test_a_million_keys_fit_in_100_bytes_each() -> None:
    """RSS grows by at most 100 bytes per key over 1,000,000 keys (native registry).

    The target is the native registry's, so the subprocess always runs the Rust
    backend, whichever backend this run tests.
    """
    env = {**os.environ, "SHARED_BACKEND": "rust"}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(KEYS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    per_key = float(result.stdout.strip())
    print(f"registry RSS: {per_key:.1f} bytes per key over {KEYS:,} keys")
    assert per_key <= MAX_BYTES_PER_KEY, f"{per_key:.1f} bytes per key"
