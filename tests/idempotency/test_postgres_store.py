"""PostgresIdempotencyStore specifics: the table, on(conn) transactions, the asyncio pool,
round trips, an unreachable server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from durable_stores import POSTGRES_CONNINFO, require_service, unique
from psycopg_pool import AsyncConnectionPool

from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency import postgres_store
from shared.resilience.idempotency.postgres_store import PostgresIdempotencyStore, table_sql
from shared.resilience.idempotency.store import ClaimState

pytestmark = [pytest.mark.backend_independent, pytest.mark.postgres]


@pytest.fixture
def table() -> Iterator[str]:
    require_service("postgresql", 5432)
    name = unique("test_idem")
    yield name
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        conn.execute(f'DROP TABLE IF EXISTS "{name}_payments"')


@pytest.fixture
def store(table: str) -> Iterator[PostgresIdempotencyStore]:
    store = PostgresIdempotencyStore(POSTGRES_CONNINFO, table=table, min_size=0, max_size=4)
    store.create_table()
    yield store
    store.close()


@pytest.fixture
def payments(table: str, store: PostgresIdempotencyStore) -> str:
    """A business table beside the idempotency table."""
    name = f'"{table}_payments"'
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id text PRIMARY KEY, amount numeric)")
    return name


def _count(sql: str) -> int:
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def test_table_sql_is_what_create_table_runs(table: str, store: PostgresIdempotencyStore) -> None:
    """table_sql() is the DDL (for migrations); create_table() is idempotent."""
    sql = table_sql(table)
    assert sql == store.table_sql()
    assert f'CREATE TABLE IF NOT EXISTS "{table}"' in sql
    assert "key         text PRIMARY KEY" in sql
    store.create_table()  # a second time is fine
    assert table_sql("t", schema="audit").startswith('CREATE TABLE IF NOT EXISTS "audit"."t"')
    for bad in ("x; DROP TABLE y", "", "a" * 51, "1abc", 'q"uote'):
        with pytest.raises(ValueError, match="table"):
            table_sql(bad)
    with pytest.raises(ValueError, match="schema"):
        table_sql("t", schema="a b")


def test_commit_keeps_the_business_write_and_the_record(
    store: PostgresIdempotencyStore, payments: str
) -> None:
    """Claim, business write and completion in one transaction: committed together."""
    with psycopg.connect(POSTGRES_CONNINFO) as conn, conn.transaction():
        tx = store.on(conn)
        claim = tx.claim("pay-1", "fp", 30)
        assert claim.state is ClaimState.CLAIMED
        conn.execute(f"INSERT INTO {payments} VALUES ('pay-1', 100.5)")
        assert tx.complete(claim.token, {"paid": "100.5"}, 3600)
        assert tx.get("pay-1") == {"paid": "100.5"}
    replay = store.claim("pay-1", "fp", 30)
    assert (replay.state, replay.result) == (ClaimState.COMPLETED, {"paid": "100.5"})
    assert _count(f"SELECT count(*) FROM {payments}") == 1


def test_rollback_leaves_neither_and_the_key_claimable(
    store: PostgresIdempotencyStore, payments: str
) -> None:
    """An exception after the business write rolls back both; the key is free at once."""

    def pay() -> None:
        with psycopg.connect(POSTGRES_CONNINFO) as conn, conn.transaction():
            tx = store.on(conn)
            claim = tx.claim("pay-2", "fp", 30)
            conn.execute(f"INSERT INTO {payments} VALUES ('pay-2', 1)")
            assert tx.complete(claim.token, "paid", 3600)
            raise RuntimeError("after the write")

    with pytest.raises(RuntimeError, match="after the write"):
        pay()
    assert _count(f"SELECT count(*) FROM {payments}") == 0
    assert not store.exists("pay-2")
    assert store.claim("pay-2", "fp", 30).state is ClaimState.CLAIMED


def test_a_concurrent_claim_waits_for_the_transaction(store: PostgresIdempotencyStore) -> None:
    """While a transaction holds an uncommitted claim, another claim of the key waits for
    it: after a rollback it claims, after a commit it replays."""

    def contender(results: list[Any]) -> None:
        results.append(store.claim("k", "fp", 30))

    for outcome in ("rollback", "commit"):
        key_results: list[Any] = []
        conn = psycopg.connect(POSTGRES_CONNINFO)
        try:
            tx = store.on(conn)
            claim = tx.claim("k", "fp", 30)
            if claim.state is not ClaimState.CLAIMED:  # the rollback round's contender won
                conn.rollback()
                assert store.delete("k")
                claim = tx.claim("k", "fp", 30)
            assert tx.complete(claim.token, outcome, 60)
            thread = threading.Thread(target=contender, args=(key_results,))
            thread.start()
            time.sleep(0.2)
            assert not key_results  # blocked on the row lock
            conn.rollback() if outcome == "rollback" else conn.commit()
            thread.join(10)
        finally:
            conn.close()
        expected = ClaimState.CLAIMED if outcome == "rollback" else ClaimState.COMPLETED
        assert key_results[0].state is expected
        if outcome == "rollback":
            assert store.release(key_results[0].token)


async def test_async_pool_and_async_transaction(
    table: str, store: PostgresIdempotencyStore
) -> None:
    """The _async forms on an AsyncConnectionPool, 8 tasks racing (one claim), and
    on(AsyncConnection) inside an async transaction."""
    pool = AsyncConnectionPool(
        POSTGRES_CONNINFO, kwargs={"autocommit": True}, min_size=1, max_size=4, open=False
    )
    await pool.open()
    try:
        astore = PostgresIdempotencyStore(async_pool=pool, table=table)
        await astore.create_table_async()
        answers = await asyncio.gather(*(astore.claim_async("hot", "fp", 30) for _ in range(8)))
        states = [answer.state for answer in answers]
        assert states.count(ClaimState.CLAIMED) == 1
        assert states.count(ClaimState.IN_PROGRESS) == 7
        token = next(answer.token for answer in answers if answer.token)
        assert await astore.extend_async(token, 30)
        assert await astore.complete_async(token, [1], 60)
        assert await astore.get_async("hot") == [1]
        assert await astore.exists_async("hot")
        with pytest.raises(TypeError, match="only an asyncio pool"):
            astore.claim("k", "", 30)
        async with await psycopg.AsyncConnection.connect(POSTGRES_CONNINFO) as conn:
            tx = astore.on(conn)
            async with conn.transaction():
                claim = await tx.claim_async("atx", "", 30)
                assert await tx.complete_async(claim.token, "inside", 60)
                assert await tx.get_async("atx") == "inside"
            other = await tx.claim_async("atx2", "", 30)
            await conn.rollback()
            assert not await tx.release_async(other.token)  # rolled back: nothing to release
        assert store.get("atx") == "inside"
        assert store.claim("atx2", "", 30).state is ClaimState.CLAIMED
    finally:
        await pool.close()


def test_round_trips_per_call(store: PostgresIdempotencyStore, monkeypatch: Any) -> None:
    """A first execution is two statements (claim, complete); a replay one. The store's
    connections are autocommit, so a statement is one round trip."""
    statements: list[str] = []
    run = postgres_store._run

    def counting(conn: Any, step: Any) -> Any:
        statements.append(step[0].split()[0])
        assert conn.autocommit
        return run(conn, step)

    monkeypatch.setattr(postgres_store, "_run", counting)
    claim = store.claim("k", "fp", 30)
    assert store.complete(claim.token, 1, 60)
    assert statements == ["WITH", "UPDATE"]
    statements.clear()
    assert store.claim("k", "fp", 30).result == 1
    assert statements == ["WITH"]


def test_an_unreachable_server_is_a_store_error(table: str) -> None:
    """No server: IdempotencyStoreError naming the key after `timeout`, not a hang."""
    store = PostgresIdempotencyStore(
        "host=127.0.0.1 port=1 user=postgres dbname=test connect_timeout=1",
        table=table,
        min_size=0,
        timeout=0.5,
    )
    try:
        started = time.monotonic()
        with pytest.raises(IdempotencyStoreError) as info:
            store.claim("k", "", 30)
        assert info.value.key == "k"
        assert not info.value.executed
        assert time.monotonic() - started < 5
    finally:
        store.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "conninfo"),
        ({"conninfo": 5}, TypeError, "conninfo"),
        ({"conninfo": "x", "table": "bad name"}, ValueError, "table"),
        ({"conninfo": "x", "max_size": 0}, ValueError, "max_size"),
        ({"conninfo": "x", "min_size": 3, "max_size": 2}, ValueError, "max_size"),
        ({"conninfo": "x", "timeout": -1}, ValueError, "timeout"),
        ({"conninfo": "x", "codec": 3}, TypeError, "codec"),
    ],
)
def test_bad_configuration_names_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad constructor arguments: an error naming the parameter, before any connection."""
    with pytest.raises(error, match=match):
        PostgresIdempotencyStore(**kwargs)


def test_the_readme_shows_the_real_table_sql() -> None:
    """The README's SQL block is exactly what table_sql() returns."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### The table (PostgreSQL)", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    assert block == table_sql("shared_idempotency")


def test_a_dropped_connection_is_a_store_error_and_loses_nothing(table: str) -> None:
    """The server ends the store's connections between claim and complete: complete()
    raises a store error that says the call executed; the committed claim is intact,
    and the owner's retry of complete() records the result."""
    application = unique("idem_drop")
    # One connection: each pooled connection that the server ended fails once (with a
    # store error) before the pool replaces it.
    store = PostgresIdempotencyStore(
        f"{POSTGRES_CONNINFO} application_name={application}",
        table=table,
        min_size=1,
        max_size=1,
    )
    try:
        store.create_table()
        token = store.claim("k", "fp", 30).token
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (application,),
            )
        with pytest.raises(IdempotencyStoreError) as info:
            store.complete(token, {"id": 1}, 60)
        assert info.value.executed
        assert info.value.key == "k"
        assert store.claim("k", "fp", 30).state is ClaimState.IN_PROGRESS
        assert store.complete(token, {"id": 1}, 60)
        assert store.claim("k", "fp", 30).result == {"id": 1}
    finally:
        store.close()
