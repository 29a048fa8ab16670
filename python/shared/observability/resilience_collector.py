"""Prometheus metrics for every live breaker, limiter, retry, timeout and idempotency store.

One collector reads the counters the cores already keep (atomics in the Rust
core, their twins in pure Python) when Prometheus scrapes: nothing is added
to any call path. Instances are found through weak registries
(``shared._instances``), so a breaker nobody holds any more disappears from
the next scrape. Labels are the names users gave (``breaker``, ``limiter``,
``retry``, ``store``); a registry's keys never become label values.
Instances that share a name are summed into one series.

``register_resilience_metrics()`` adds the collector to a
``prometheus_client`` registry (the default one unless told otherwise);
``MetricsServer`` does it when it starts.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from shared import _instances

__all__ = [
    "IDEMPOTENCY_OUTCOMES",
    "OutcomeCountingStore",
    "ResilienceCollector",
    "register_idempotency_store",
    "register_resilience_metrics",
    "unregister_idempotency_store",
    "unregister_resilience_metrics",
]

_log = logging.getLogger(__name__)

_BREAKER_STATES = ("closed", "open", "half_open")
_BREAKER_OUTCOMES = (
    ("success", "calls_succeeded"),
    ("failure", "calls_failed"),
    ("ignored", "calls_ignored"),
)
_BREAKER_TRANSITIONS = (
    ("open", "transitions_to_open"),
    ("half_open", "transitions_to_half_open"),
    ("closed", "transitions_to_closed"),
)
_RETRY_OUTCOMES = (
    ("succeeded_without_retry", "succeeded_without_retry"),
    ("succeeded_with_retry", "succeeded_with_retry"),
    ("failed_without_retry", "failed_without_retry"),
    ("failed_with_retry", "failed_with_retry"),
)
_RETRY_GIVE_UPS = (
    ("max_attempts", "give_ups_max_attempts"),
    ("deadline", "give_ups_deadline"),
    ("budget", "give_ups_budget"),
)

IDEMPOTENCY_OUTCOMES = ("executed", "replayed", "in_progress", "mismatch", "errors", "lost_leases")
"""The ``outcome`` label values of ``shared_idempotency_requests_total``: the keys a
store's ``outcome_counts()`` is read for (a missing key counts 0)."""


@runtime_checkable
class OutcomeCountingStore(Protocol):
    """What ``register_idempotency_store`` needs: a ``name`` and ``outcome_counts()``."""

    @property
    def name(self) -> str: ...

    def outcome_counts(self) -> Mapping[str, int]: ...


class _Stores:
    """Registered idempotency stores: weakly where the store allows it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[int, Callable[[], Any]] = {}

    def add(self, store: Any) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(store)
        except TypeError:  # no __weakref__ slot: hold it (until unregistered)
            ref = lambda: store  # noqa: E731
        with self._lock:
            self._stores[id(store)] = ref

    def remove(self, store: Any) -> bool:
        with self._lock:
            ref = self._stores.get(id(store))
            if ref is None or ref() is not store:
                return False
            del self._stores[id(store)]
            return True

    def snapshot(self) -> list[Any]:
        with self._lock:
            alive = []
            for key, ref in list(self._stores.items()):
                store = ref()
                if store is None:
                    del self._stores[key]
                else:
                    alive.append(store)
            return alive


_stores = _Stores()


def register_idempotency_store(store: OutcomeCountingStore) -> None:
    """Exports ``store``'s outcome counts as ``shared_idempotency_requests_total{store=...}``.

    ``store`` needs a ``name`` (str) and ``outcome_counts()`` returning counts by
    outcome (``IDEMPOTENCY_OUTCOMES``). It is held weakly when it can be: a store
    nobody else holds disappears from the metrics.
    """
    name = getattr(store, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("store must have a non-empty str name")
    if not callable(getattr(store, "outcome_counts", None)):
        raise TypeError("store must have an outcome_counts() method")
    _stores.add(store)


def unregister_idempotency_store(store: OutcomeCountingStore) -> bool:
    """Stops exporting ``store``'s counts; whether it was registered."""
    return _stores.remove(store)


class _Sums:
    """Values summed by label values, in first-seen order."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + value


def _timeouts_fired() -> int:
    from shared.resilience.timeout import timeout_stats

    return timeout_stats()["fired"]


class ResilienceCollector:
    """Yields the ``shared_*`` families at scrape time (see the README's catalogue)."""

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not run a collection.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        self._breakers(*families[0:5])
        self._retries(*families[5:8])
        self._limiters(*families[8:12])
        families[12].add_metric([], _timeouts_fired())
        self._idempotency(families[13])
        return families

    @staticmethod
    def _families() -> list[Any]:
        return [
            GaugeMetricFamily(
                "shared_circuit_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
                labels=["breaker", "state"],
            ),
            CounterMetricFamily(
                "shared_circuit_breaker_calls",
                "Calls a circuit breaker let through, by outcome (success, failure, ignored).",
                labels=["breaker", "outcome"],
            ),
            CounterMetricFamily(
                "shared_circuit_breaker_rejected_calls",
                "Calls a circuit breaker rejected (open, or half-open with no probe slot free).",
                labels=["breaker"],
            ),
            CounterMetricFamily(
                "shared_circuit_breaker_slow_calls",
                "Calls slower than the breaker's slow_call_duration.",
                labels=["breaker"],
            ),
            CounterMetricFamily(
                "shared_circuit_breaker_transitions",
                "State transitions of a circuit breaker, by the state entered.",
                labels=["breaker", "to_state"],
            ),
            CounterMetricFamily(
                "shared_retry_calls",
                "Calls run by a retry, by outcome: succeeded or failed, without or with a retry.",
                labels=["retry", "outcome"],
            ),
            CounterMetricFamily(
                "shared_retry_retries",
                "Retries made (a sleep before another attempt).",
                labels=["retry"],
            ),
            CounterMetricFamily(
                "shared_retry_give_ups",
                "Calls a stop condition ended with an error, by reason "
                "(max_attempts, deadline, budget).",
                labels=["retry", "reason"],
            ),
            CounterMetricFamily(
                "shared_rate_limiter_decisions",
                "Rate limiter decisions (try_acquire and acquire), granted or rejected.",
                labels=["limiter", "decision"],
            ),
            CounterMetricFamily(
                "shared_rate_limiter_wait_seconds",
                "Seconds of waiting granted reservations (acquire) were given.",
                labels=["limiter"],
            ),
            GaugeMetricFamily(
                "shared_rate_limiter_available_tokens",
                "Tokens in a token bucket now.",
                labels=["limiter"],
            ),
            GaugeMetricFamily(
                "shared_rate_limiter_keys",
                "Keys a rate limiter registry holds.",
                labels=["limiter"],
            ),
            CounterMetricFamily(
                "shared_timeouts_fired",
                "Timeout deadlines that fired (sync blocks on any thread, and async blocks).",
            ),
            CounterMetricFamily(
                "shared_idempotency_requests",
                "Idempotent requests by outcome (executed, replayed, in_progress, mismatch, "
                "errors).",
                labels=["store", "outcome"],
            ),
        ]

    def _breakers(
        self,
        state: GaugeMetricFamily,
        calls: CounterMetricFamily,
        rejected: CounterMetricFamily,
        slow: CounterMetricFamily,
        transitions: CounterMetricFamily,
    ) -> None:
        states, outcome_sums, rejected_sums, slow_sums, transition_sums = (
            _Sums(),
            _Sums(),
            _Sums(),
            _Sums(),
            _Sums(),
        )
        for breaker in _instances.breakers.snapshot():
            try:
                name = breaker.name
                current = breaker._state_name
                counters = breaker.counters()
            except Exception:  # a broken instance must not break the scrape
                _log.debug("skipping a breaker in metrics", exc_info=True)
                continue
            for value in _BREAKER_STATES:
                states.add((name, value), 1.0 if value == current else 0.0)
            for outcome, key in _BREAKER_OUTCOMES:
                outcome_sums.add((name, outcome), counters[key])
            rejected_sums.add((name,), counters["calls_rejected"])
            slow_sums.add((name,), counters["calls_slow"])
            for to_state, key in _BREAKER_TRANSITIONS:
                transition_sums.add((name, to_state), counters[key])
        for (name, value), present in states.values.items():
            # Two live breakers of one name: the state of either is 1.
            state.add_metric([name, value], min(present, 1.0))
        _add_all(calls, outcome_sums)
        _add_all(rejected, rejected_sums)
        _add_all(slow, slow_sums)
        _add_all(transitions, transition_sums)

    def _retries(
        self,
        calls: CounterMetricFamily,
        retried: CounterMetricFamily,
        give_ups: CounterMetricFamily,
    ) -> None:
        call_sums, retried_sums, give_up_sums = _Sums(), _Sums(), _Sums()
        for retry in _instances.retries.snapshot():
            try:
                name = retry.name
                counters = retry.counters()
            except Exception:
                _log.debug("skipping a retry in metrics", exc_info=True)
                continue
            for outcome, key in _RETRY_OUTCOMES:
                call_sums.add((name, outcome), counters[key])
            retried_sums.add((name,), counters["retries"])
            for reason, key in _RETRY_GIVE_UPS:
                give_up_sums.add((name, reason), counters[key])
        _add_all(calls, call_sums)
        _add_all(retried, retried_sums)
        _add_all(give_ups, give_up_sums)

    def _limiters(
        self,
        decisions: CounterMetricFamily,
        waited: CounterMetricFamily,
        available: GaugeMetricFamily,
        keys: GaugeMetricFamily,
    ) -> None:
        decision_sums, wait_sums, available_sums, key_sums = _Sums(), _Sums(), _Sums(), _Sums()
        limiters = [(b, False) for b in _instances.token_buckets.snapshot()]
        limiters += [(r, True) for r in _instances.rate_limiter_registries.snapshot()]
        for limiter, is_registry in limiters:
            try:
                name = limiter.name
                counters = limiter.counters()
                # A registry's size, or a bucket's tokens: never one value per key.
                size = float(len(limiter)) if is_registry else limiter.available_tokens
            except Exception:
                _log.debug("skipping a limiter in metrics", exc_info=True)
                continue
            decision_sums.add((name, "granted"), counters["granted"])
            decision_sums.add((name, "rejected"), counters["rejected"])
            wait_sums.add((name,), counters["waited_ns"] / 1e9)
            (key_sums if is_registry else available_sums).add((name,), size)
        for limiter in _instances.redis_limiters.snapshot():
            try:
                name = limiter.name
                counters = limiter.counters()  # no round trip: counted in this process
            except Exception:
                _log.debug("skipping a Redis limiter in metrics", exc_info=True)
                continue
            decision_sums.add((name, "granted"), counters["granted"])
            decision_sums.add((name, "rejected"), counters["rejected"])
            wait_sums.add((name,), counters["waited_ns"] / 1e9)
        _add_all(decisions, decision_sums)
        _add_all(waited, wait_sums)
        _add_all(available, available_sums)
        _add_all(keys, key_sums)

    def _idempotency(self, requests: CounterMetricFamily) -> None:
        sums = _Sums()
        # Stores with OutcomeCounting join by themselves at their first outcome;
        # others are registered by hand. Each counts once.
        stores = {id(store): store for store in _instances.idempotency_stores.snapshot()}
        stores.update((id(store), store) for store in _stores.snapshot())
        for store in stores.values():
            try:
                name = store.name
                counts = store.outcome_counts()
                values = [
                    (outcome, int(counts.get(outcome, 0))) for outcome in IDEMPOTENCY_OUTCOMES
                ]
            except Exception:
                _log.debug("skipping an idempotency store in metrics", exc_info=True)
                continue
            for outcome, value in values:
                sums.add((name, outcome), value)
        _add_all(requests, sums)


def _add_all(family: Any, sums: _Sums) -> None:
    for labels, value in sums.values.items():
        family.add_metric(list(labels), value)


_registered: weakref.WeakKeyDictionary[CollectorRegistry, ResilienceCollector] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


def register_resilience_metrics(registry: CollectorRegistry = REGISTRY) -> ResilienceCollector:
    """Adds the ``shared_*`` families to ``registry``; returns the collector.

    Calling it again for the same registry returns the collector already
    registered (``MetricsServer`` calls it when it starts).
    """
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
    with _registered_lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = ResilienceCollector()
            registry.register(collector)
            _registered[registry] = collector
        return collector


def unregister_resilience_metrics(registry: CollectorRegistry = REGISTRY) -> bool:
    """Removes the ``shared_*`` families from ``registry``; whether they were there."""
    with _registered_lock:
        collector = _registered.pop(registry, None)
        if collector is None:
            return False
        registry.unregister(collector)
        return True
