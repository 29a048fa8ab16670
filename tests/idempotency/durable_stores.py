"""Factories of the durable stores (SQLite, Redis, PostgreSQL) for store-generic tests.

``DURABLE_STORE_FACTORIES`` maps a store's name to a factory with the signature of
the conformance suite's ``STORE_FACTORIES`` (``tests/idempotency/conftest.py``):
``factory(clock: ManualClock) -> StoreCase(store, cleanup, clock_or_None)``.

* SQLite reads the ``ManualClock`` it is given (``clock=clock.monotonic``), so the
  case returns that clock: advance it to expire leases and TTLs.
* Redis and PostgreSQL keep time on the server (``PX``, ``clock_timestamp()``),
  so the case's clock is ``None``: a test that needs an expiry uses a short lease
  and waits for it in real time.

Each factory isolates its case (a fresh file, a random Redis key prefix, a fresh
table) and the returned ``cleanup`` removes it. Server-backed factories skip (or
fail in CI) through ``require_service`` when the server is down.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from shared.testing import ManualClock

try:  # tests/conftest.py (a conftest of this directory, if any, may shadow the name)
    from conftest import IN_CI, require_service
except ImportError:
    _spec = importlib.util.spec_from_file_location(
        "_shared_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    assert _spec is not None
    assert _spec.loader is not None
    _root_conftest = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_root_conftest)
    require_service = _root_conftest.require_service
    IN_CI = _root_conftest.IN_CI

REDIS_PORT = 6379
POSTGRES_PORT = 5432
POSTGRES_CONNINFO = os.environ.get(
    "SHARED_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)

try:  # the conformance suite's own case type, when it is there
    from conftest import StoreCase  # type: ignore[attr-defined]
except ImportError:

    class StoreCase(NamedTuple):  # type: ignore[no-redef]
        store: Any
        cleanup: Callable[[], None]
        clock: ManualClock | None


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def sqlite_case(clock: ManualClock) -> StoreCase:
    from shared.resilience.idempotency.sqlite_store import SQLiteIdempotencyStore

    directory = tempfile.mkdtemp(prefix="shared-idem-")
    store = SQLiteIdempotencyStore(os.path.join(directory, "idem.db"), clock=clock.monotonic)

    def cleanup() -> None:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)

    return StoreCase(store, cleanup, clock)


def redis_case(clock: ManualClock) -> StoreCase:
    require_service("redis", REDIS_PORT)
    import redis

    from shared.resilience.idempotency.redis_store import RedisIdempotencyStore

    prefix = f"test:shared:idem:{uuid.uuid4().hex}:"
    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT)
    # Sync client only: an asyncio client belongs to one event loop, and a suite's
    # tests each run their own; the _async forms then run on the default executor.
    # test_redis_store.py covers the asyncio client, closing it in its own loop.
    store = RedisIdempotencyStore(client, key_prefix=prefix)

    def cleanup() -> None:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()

    return StoreCase(store, cleanup, None)


def postgres_case(clock: ManualClock) -> StoreCase:
    require_service("postgresql", POSTGRES_PORT)
    import psycopg

    from shared.resilience.idempotency.postgres_store import PostgresIdempotencyStore

    table = unique("test_idem")
    store = PostgresIdempotencyStore(POSTGRES_CONNINFO, table=table, min_size=0, max_size=4)
    store.create_table()

    def cleanup() -> None:
        store.close()
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')

    return StoreCase(store, cleanup, None)


DURABLE_STORE_FACTORIES: dict[str, Callable[[ManualClock], StoreCase]] = {
    "sqlite": sqlite_case,
    "redis": redis_case,
    "postgres": postgres_case,
}
