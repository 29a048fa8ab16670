"""Fixtures of the idempotency tests, and the store conformance contract.

Every store runs the one conformance suite (``test_conformance.py``). To add a
store, add an entry to ``STORE_FACTORIES``:

    STORE_FACTORIES["sqlite"] = StoreFactory(make_sqlite_case)

where ``make_sqlite_case(clock: ManualClock) -> StoreCase`` builds a fresh,
empty store for one test and returns ``StoreCase(store, cleanup, clock)``:

* ``store``: the store under test. It implements ``AtomicIdempotencyStore``
  (``name``; ``claim``/``complete``/``fail``/``release``/``extend``/``delete``/
  ``get``/``set``/``exists`` and their ``_async`` forms) and inherits
  ``OutcomeCounting``.
* ``cleanup``: called after the test (drop the table or keys, close clients).
  Tests use keys with a random prefix, so two runs never collide.
* ``clock``: the ``ManualClock`` given, if the store reads it (leases and TTLs
  then move only with ``clock.advance``); ``None`` if the store uses real time
  (a server's clock): clock-dependent tests then use leases and TTLs of a few
  tenths of a second and really wait (``StoreCase.advance`` does the right
  thing either way), so keep such a store's time resolution at 1 ms or finer.

A factory that needs a server calls ``require_service`` (from
``tests/conftest.py``: skips outside CI, fails in CI). ``StoreFactory``'s
``backend_independent`` (default True) marks the store's tests to run once per
install instead of once per backend: only stores on a native core (the
in-memory store) set it to False.

What the suite holds every store to (sync and async forms alike):

* ``claim`` answers CLAIMED (with an ``OwnerToken`` for the key), IN_PROGRESS
  (``0 < retry_after <= lease``), COMPLETED (``result`` equal to what was
  completed), FAILED (``result`` holding the error text) or MISMATCH (another
  non-empty fingerprint);
* ``complete``/``fail``/``release``/``extend`` answer True only for the live
  owner, and False for a foreign token, after a release, and after the lease
  ran out (whether or not someone claimed the key since), changing nothing;
* a lease that runs out frees the key; ``extend`` pushes it back;
* a TTL that runs out forgets the result;
* ``set``/``get``/``exists`` (the document's protocol): ``get`` of a missing key
  is None; ``set`` overwrites; ``exists`` is True for a stored result only;
* ``delete`` forgets any state (True if something was there);
* results round-trip equal and of the same type: JSON types, Decimal,
  timezone-aware datetime, date, UUID, Enum members, dataclasses, tuples;
* 16 threads (and 8 asyncio tasks) claiming one key: exactly one CLAIMED;
* bad input: a non-str key is a TypeError; an empty key, or a lease or TTL
  that is not a finite number > 0, a ValueError;
* ``outcome_counts()`` returns every name of ``OUTCOMES``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.resilience.idempotency import InMemoryIdempotencyStore
from shared.testing import ManualClock


def _root_conftest() -> Any:
    """tests/conftest.py, loaded once under its own name.

    Test modules import helpers with ``from conftest import ...``; with this
    file also named conftest.py, that import can find this one, so the root's
    helpers are re-exported here.
    """
    name = "shared_tests_root_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).parent.parent / "conftest.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_root = _root_conftest()
IN_CI = _root.IN_CI
require_service = _root.require_service


@dataclass
class StoreCase:
    """One store under test (see the module docstring)."""

    store: Any
    cleanup: Callable[[], None]
    clock: ManualClock | None

    def advance(self, seconds: float) -> None:
        """Moves the store's time forward: the manual clock, or a real wait."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            time.sleep(seconds)


@dataclass(frozen=True)
class StoreFactory:
    """How to build a ``StoreCase``; see the module docstring."""

    make: Callable[[ManualClock], StoreCase]
    backend_independent: bool = True


def _memory(clock: ManualClock) -> StoreCase:
    store = InMemoryIdempotencyStore(capacity=1000, clock=clock)
    return StoreCase(store, store.clear, clock)


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": StoreFactory(_memory, backend_independent=False),
}


def _store_params() -> list[Any]:
    return [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.backend_independent] if factory.backend_independent else [],
        )
        for name, factory in STORE_FACTORIES.items()
    ]


@pytest.fixture(params=_store_params())
def store_case(request: pytest.FixtureRequest) -> Iterator[StoreCase]:
    """A fresh store of each kind in ``STORE_FACTORIES``."""
    case = STORE_FACTORIES[request.param].make(ManualClock(1000.0))
    try:
        yield case
    finally:
        case.cleanup()


def _join_durable_stores() -> None:
    """The SQLite, Redis and PostgreSQL stores run the same conformance suite."""
    from durable_stores import DURABLE_STORE_FACTORIES

    for name, make in DURABLE_STORE_FACTORIES.items():

        def make_case(clock: ManualClock, make: Any = make) -> StoreCase:
            store, cleanup, store_clock = make(clock)
            return StoreCase(store, cleanup, store_clock)

        STORE_FACTORIES[name] = StoreFactory(make_case)


_join_durable_stores()
