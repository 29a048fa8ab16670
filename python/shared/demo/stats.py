"""What the demo counts while it runs, and the final proof."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Stats", "percentile"]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Stats:
    """Counters of the service and its clients (one event loop: no locks needed)."""

    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    keys_sent: set[str] = field(default_factory=set)
    duplicates_sent: int = 0
    resent_after_ack: int = 0
    acknowledged: dict[str, int] = field(default_factory=dict)  # key -> fill id
    replayed: int = 0
    replay_mismatches: int = 0
    rate_limited: int = 0
    breaker_rejections: int = 0
    failures: int = 0
    gave_up: int = 0
    client_retries: int = 0
    in_progress_waits: int = 0
    in_flight_at_stop: int = 0
    finished_after_stop: int = 0
    cancelled_at_stop: int = 0
    stopping: bool = False
    client_errors: list[str] = field(default_factory=list)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=20_000))
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def record_ack(self, key: str, fill_id: int, latency: float, replayed: bool) -> None:
        now = time.monotonic()
        self.latencies.append(latency)
        if replayed:
            self.replayed += 1
        first = self.acknowledged.setdefault(key, fill_id)
        if first != fill_id:
            self.replay_mismatches += 1
        if not replayed:
            self._recent.append(now)

    def rate(self, window: float = 1.0) -> float:
        """Orders executed per second over the last ``window`` seconds."""
        cutoff = time.monotonic() - window
        recent = self._recent
        while recent and recent[0] < cutoff:
            recent.popleft()
        return len(recent) / window

    def latency_percentiles(self) -> dict[str, float]:
        values = sorted(self.latencies)
        return {
            name: percentile(values, q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        }

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def ledger(self, executions: dict[str, int]) -> dict[str, Any]:
        """What a replica reports to its parent: the exchange's executions per key,
        the fills acknowledged per key and the keys sent (``aggregate`` merges them)."""
        return {
            "executions": executions,
            "acknowledged": dict(self.acknowledged),
            "keys_sent": sorted(self.keys_sent),
        }

    def summary(self, executions: dict[str, int], extra: dict[str, Any]) -> dict[str, Any]:
        """The final report and whether it proves exactly-once and a clean stop."""
        executed_keys = set(executions)
        acked_keys = set(self.acknowledged)
        duplicate_executions = sum(count - 1 for count in executions.values() if count > 1)
        unacknowledged = sorted(executed_keys - acked_keys)
        checks = {
            "orders were executed": bool(executed_keys),
            "no client crashed": not self.client_errors,
            "orders executed == unique keys acknowledged": len(executed_keys) == len(acked_keys)
            and executed_keys == acked_keys,
            "zero duplicate executions": duplicate_executions == 0,
            "every replay returned the original fill": self.replay_mismatches == 0,
            "nothing lost on shutdown": self.cancelled_at_stop == 0 and not unacknowledged,
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "duration_s": round(self.elapsed(), 3),
            "requests": self.requests,
            "unique_keys_sent": len(self.keys_sent),
            "orders_executed": sum(executions.values()),
            "unique_keys_executed": len(executed_keys),
            "unique_keys_acknowledged": len(acked_keys),
            "duplicate_executions": duplicate_executions,
            "duplicates_sent": self.duplicates_sent + self.resent_after_ack,
            "duplicates_replayed": self.replayed,
            "replay_mismatches": self.replay_mismatches,
            "executed_but_unacknowledged": unacknowledged[:10],
            "rate_limited": self.rate_limited,
            "breaker_rejections": self.breaker_rejections,
            "failed_attempts_seen_by_clients": self.failures,
            "client_retries": self.client_retries,
            "in_progress_timeouts": self.in_progress_waits,
            "keys_abandoned_unexecuted": self.gave_up,
            "client_errors": self.client_errors,
            "in_flight_at_stop": self.in_flight_at_stop,
            "finished_after_stop": self.finished_after_stop,
            "cancelled_at_stop": self.cancelled_at_stop,
            "latency_ms": {k: round(v * 1000, 2) for k, v in self.latency_percentiles().items()},
            **extra,
        }
