"""Outcome counters every idempotency store carries, read at scrape time.

``@idempotent`` records what each call did on the store it used; a metrics
collector reads ``store.outcome_counts()`` when Prometheus scrapes, so nothing
but an integer increment is added to a call.

Outcomes:

* ``executed``: the call claimed the key and ran the function;
* ``replayed``: a completed duplicate got the stored result (or
  ``DuplicateRequestError``);
* ``in_progress``: a concurrent duplicate gave up waiting
  (``IdempotencyInProgressError``);
* ``mismatch``: the key came with different arguments
  (``IdempotencyMismatchError``);
* ``errors``: the function raised (the key was released or kept as failed),
  or the key was found kept as failed (``IdempotencyFailedError``);
* ``lost_leases``: a call's lease ran out before it finished (its result
  could not be recorded; logged at ERROR).
"""

from __future__ import annotations

import threading
from typing import Final

from shared import _instances

__all__ = ["OUTCOMES", "OutcomeCounting"]

OUTCOMES: Final = ("executed", "replayed", "in_progress", "mismatch", "errors", "lost_leases")

# Guards the lazy creation of a store's counters (a store subclass need not
# call our __init__).
_CREATE = threading.Lock()


class _Counters:
    __slots__ = ("counts", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(OUTCOMES, 0)


class OutcomeCounting:
    """Mixin: per-store outcome counters (see the module docstring).

    Stores inherit it; they need not call any ``__init__`` (the counters are
    created on first use, and the store then appears in the built-in metrics,
    ``shared_idempotency_requests_total{store=<its name>}``). ``@idempotent``
    calls ``_count_outcome``; metrics read ``outcome_counts()``.
    """

    __slots__ = ()

    def _outcome_counters(self) -> _Counters:
        try:
            return self.__dict__["_shared_outcomes"]  # type: ignore[no-any-return]
        except KeyError:
            with _CREATE:
                counters = self.__dict__.get("_shared_outcomes")
                if counters is None:
                    counters = self.__dict__["_shared_outcomes"] = _Counters()
                    _instances.idempotency_stores.add(self)
                return counters

    def _count_outcome(self, outcome: str, n: int = 1) -> None:
        """Adds ``n`` to ``outcome`` (one of ``OUTCOMES``)."""
        counters = self._outcome_counters()
        with counters.lock:
            counters.counts[outcome] += n

    def outcome_counts(self) -> dict[str, int]:
        """A snapshot of the counters: ``{outcome: count}`` for every name of ``OUTCOMES``."""
        counters = self._outcome_counters()
        with counters.lock:
            return dict(counters.counts)
