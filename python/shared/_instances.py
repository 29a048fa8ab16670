"""Weak registries of live pattern instances, for the metrics collector.

Constructors add their instance here (once, off every hot path); the
collector (``shared.observability.resilience_collector``) takes a snapshot at
scrape time. The registries hold weak references only: an instance nobody
else holds is collected as usual and disappears from the next snapshot.

Dead references are dropped when a snapshot is taken and, so that a process
that creates many short-lived instances and is never scraped stays bounded,
whenever the registry has doubled since it was last pruned.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Generic, TypeVar

__all__ = [
    "WeakInstances",
    "breakers",
    "idempotency_stores",
    "rate_limiter_registries",
    "redis_limiters",
    "retries",
    "token_buckets",
]

T = TypeVar("T")

_MIN_PRUNE = 64


class WeakInstances(Generic[T]):
    """A thread-safe set of weak references, in insertion order.

    No weakref callbacks: a callback can run inside a garbage collection
    triggered while this registry's lock is held by the same thread.
    """

    __slots__ = ("_lock", "_prune_at", "_refs")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._prune_at = _MIN_PRUNE

    def add(self, instance: T) -> None:
        """Tracks ``instance`` until it is collected."""
        ref = weakref.ref(instance)
        with self._lock:
            self._refs[id(instance)] = ref
            if len(self._refs) >= self._prune_at:
                self._prune_locked()
                self._prune_at = max(_MIN_PRUNE, 2 * len(self._refs))

    def _prune_locked(self) -> list[T]:
        alive: list[T] = []
        dead: list[int] = []
        for key, ref in self._refs.items():
            instance = ref()
            if instance is None:
                dead.append(key)
            else:
                alive.append(instance)
        for key in dead:
            del self._refs[key]
        return alive

    def snapshot(self) -> list[T]:
        """The live instances (strong references: keep the list briefly)."""
        with self._lock:
            return self._prune_locked()

    def __len__(self) -> int:
        return len(self.snapshot())


breakers: WeakInstances[Any] = WeakInstances()
"""Every ``CircuitBreaker`` alive."""
token_buckets: WeakInstances[Any] = WeakInstances()
"""Every ``TokenBucket`` alive."""
rate_limiter_registries: WeakInstances[Any] = WeakInstances()
"""Every ``RateLimiterRegistry`` alive."""
redis_limiters: WeakInstances[Any] = WeakInstances()
"""Every Redis-backed bucket and registry alive (not the handles a registry gives out)."""
retries: WeakInstances[Any] = WeakInstances()
idempotency_stores: WeakInstances[Any] = WeakInstances()
"""Every idempotency store with ``OutcomeCounting`` that has counted an outcome."""
"""Every ``Retry`` alive (``@with_retry`` makes one per decorated function)."""
