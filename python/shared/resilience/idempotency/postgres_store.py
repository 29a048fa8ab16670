"""``PostgresIdempotencyStore``: idempotency in PostgreSQL (psycopg 3, with a pool).

One row per key in a table you create with ``store.create_table()`` (or with
the SQL of ``table_sql()`` in your migrations):

* ``claim`` is one statement, so one round trip: it reads the key's live row
  and, only when there is none, ``INSERT ... ON CONFLICT (key) DO UPDATE ...
  WHERE <the row's lease or TTL has expired>``. PostgreSQL's unique index
  decides between concurrent claims: exactly one inserts, the others wait for
  its commit and then see its row. A replay writes nothing (no row lock, no
  WAL flush at commit), so it costs about what a ``SELECT`` costs; a first
  execution commits twice (claim, complete), each a WAL flush unless you
  relax ``synchronous_commit`` (do not, for money movements);
* ``complete``, ``fail``, ``release`` and ``extend`` are one ``UPDATE`` /
  ``DELETE`` each, ``WHERE key = .. AND owner = .. AND state = 'P' AND
  expires_at > clock_timestamp()``: the owner check is the server's;
* times are the server's ``clock_timestamp()``, shared by every client host.

The store's own connections are autocommit (one statement, one round trip).
``store.on(conn)`` runs the same operations on YOUR connection, inside your
transaction, so that a business write and the idempotency record commit or roll
back together::

    with pool.connection() as conn, conn.transaction():
        tx = store.on(conn)
        claim = tx.claim(key, fingerprint, lease=30)
        if claim.state is ClaimState.CLAIMED:
            conn.execute("INSERT INTO payments ...")
            tx.complete(claim.token, result, ttl=86400)
    # committed: both; rolled back (an exception): neither, and the key is free

Inside such a transaction a concurrent claim of the same key waits for it to
commit or roll back (the row lock), instead of answering "in progress".

Sync methods use ``pool`` (a ``psycopg_pool.ConnectionPool``; given ``conninfo``
the store creates one of autocommit connections), the ``_async`` ones
``async_pool`` (an ``AsyncConnectionPool`` you open and close in your event
loop: a pool belongs to one loop). Without an asyncio pool the ``_async`` forms
run the sync calls on the default executor.
"""

from __future__ import annotations

from typing import Any

from shared import _validation
from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency import _durable
from shared.resilience.idempotency._durable import COMPLETED, FAILED
from shared.resilience.idempotency.codec import Codec
from shared.resilience.idempotency.outcomes import OutcomeCounting
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

__all__ = ["DEFAULT_TABLE", "PostgresIdempotencyStore", "table_sql"]

DEFAULT_TABLE = "shared_idempotency"
# A claim that raced with a row changing between its INSERT and its snapshot
# (committed after the snapshot, or expiring at that instant) is simply retried.
_CLAIM_ATTEMPTS = 8


def _identifier(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if (
        not value
        or len(value) > 50
        or not value.isascii()
        or not (value[0].isalpha() or value[0] == "_")
        or not all(c.isalnum() or c == "_" for c in value)
    ):
        raise ValueError(
            f"{name} must be an SQL identifier (ASCII letters, digits, _; at most 50), "
            f"got {value!r}"
        )
    return value.lower()


def _qualified(table: str, schema: str | None) -> str:
    table = _identifier("table", table)
    if schema is None:
        return f'"{table}"'
    return f'"{_identifier("schema", schema)}"."{table}"'


def table_sql(table: str = DEFAULT_TABLE, *, schema: str | None = None) -> str:
    """The ``CREATE TABLE`` (and index) statements of the store's table, for migrations."""
    name = _qualified(table, schema)
    index = f'"{_identifier("table", table)}_expires_at"'
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (\n"
        "    key         text PRIMARY KEY,\n"
        "    fingerprint text NOT NULL DEFAULT '',\n"
        "    state       char(1) NOT NULL CHECK (state IN ('P', 'C', 'F')),\n"
        "    owner       text NOT NULL DEFAULT '',\n"
        "    value       bytea,\n"
        "    expires_at  timestamptz NOT NULL\n"
        ");\n"
        f"CREATE INDEX IF NOT EXISTS {index} ON {name} (expires_at);\n"
    )


class _Queries:
    """Every statement, with the table's name in it."""

    def __init__(self, table: str) -> None:
        live = "expires_at > clock_timestamp()"
        owned = f"WHERE key = %s AND owner = %s AND state = 'P' AND {live}"
        until = "clock_timestamp() + make_interval(secs => %s)"
        # A live row found in the statement's snapshot is answered without writing
        # (a replay takes no row lock and no transaction id, so its commit has no WAL
        # to flush); only when there is none does the INSERT run, and its ON CONFLICT
        # takes over a row whose lease or TTL has expired.
        self.claim = (
            "WITH existing AS (SELECT state, fingerprint, value, "
            "extract(epoch FROM expires_at - clock_timestamp())::float8 AS remaining "
            f"FROM {table} WHERE key = %(key)s AND {live}), "
            f"claimed AS (INSERT INTO {table} AS r "
            "(key, fingerprint, state, owner, value, expires_at) "
            "SELECT %(key)s, %(fp)s, 'P', %(owner)s, NULL, "
            "clock_timestamp() + make_interval(secs => %(lease)s) "
            "WHERE NOT EXISTS (SELECT 1 FROM existing) "
            "ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, state = 'P', "
            "owner = EXCLUDED.owner, value = NULL, expires_at = EXCLUDED.expires_at "
            "WHERE r.expires_at <= clock_timestamp() RETURNING 1) "
            "SELECT true, NULL, NULL, NULL::bytea, NULL::float8 FROM claimed UNION ALL "
            "SELECT false, state, fingerprint, value, remaining FROM existing"
        )
        self.finish = f"UPDATE {table} SET state = %s, value = %s, expires_at = {until} {owned}"
        self.release = f"DELETE FROM {table} {owned}"
        self.extend = f"UPDATE {table} SET expires_at = {until} {owned}"
        self.delete = f"DELETE FROM {table} WHERE key = %s AND {live}"
        self.get = f"SELECT value FROM {table} WHERE key = %s AND state = 'C' AND {live}"
        self.exists = f"SELECT 1 FROM {table} WHERE key = %s AND state = 'C' AND {live}"
        self.set = (
            f"INSERT INTO {table} (key, fingerprint, state, owner, value, expires_at) "
            f"VALUES (%s, '', 'C', '', %s, {until}) ON CONFLICT (key) DO UPDATE SET "
            "fingerprint = '', state = 'C', owner = '', value = EXCLUDED.value, "
            "expires_at = EXCLUDED.expires_at"
        )
        self.purge = f"DELETE FROM {table} WHERE expires_at <= clock_timestamp()"


# What one operation asks of a connection: the SQL, its parameters and whether
# the caller wants the rows ("rows") or the number of rows changed ("count").
_Step = tuple[str, Any, str]


class _Operations:
    """The store's operations as steps plus the reading of their replies; the pool
    store and the transaction view run the very same steps."""

    _queries: _Queries
    _codec: Codec

    def _claim_step(self, key: str, fingerprint: str, lease: float) -> tuple[_Step, str]:
        key = _durable.check_key(key)
        fingerprint = _durable.check_fingerprint(fingerprint)
        lease = _durable.check_seconds("lease", lease)
        owner = _durable.new_owner()
        params = {"key": key, "fp": fingerprint, "owner": owner, "lease": lease}
        return (self._queries.claim, params, "rows"), owner

    def _claim_answer(self, key: str, fingerprint: str, owner: str, rows: Any) -> Claim | None:
        """The claim's answer, or None when the statement raced and must be retried."""
        if not rows:
            return None
        claimed, state, stored_fingerprint, value, remaining = rows[0]
        if claimed:
            return Claim(ClaimState.CLAIMED, token=OwnerToken(key, owner))
        if remaining is None or remaining <= 0:
            return None
        return _durable.existing_claim(
            self._codec, key, fingerprint, state, stored_fingerprint, value, remaining
        )

    def _finish_step(self, token: OwnerToken, state: str, value: bytes, ttl: float) -> _Step:
        return (self._queries.finish, (state, value, ttl, token.key, token.owner), "count")

    def _complete_step(self, token: OwnerToken, result: Any, ttl: float) -> _Step:
        token = _durable.check_token(token)
        ttl = _durable.check_seconds("ttl", ttl)
        value = _durable.pack(self._codec, result)  # ResultNotStorableError before any write
        return self._finish_step(token, COMPLETED, value, ttl)

    def _fail_step(self, token: OwnerToken, error: str, ttl: float) -> _Step:
        token = _durable.check_token(token)
        value = _durable.check_error(error).encode()
        ttl = _durable.check_seconds("ttl", ttl)
        return self._finish_step(token, FAILED, value, ttl)

    def _release_step(self, token: OwnerToken) -> _Step:
        token = _durable.check_token(token)
        return (self._queries.release, (token.key, token.owner), "count")

    def _extend_step(self, token: OwnerToken, lease: float) -> _Step:
        token = _durable.check_token(token)
        lease = _durable.check_seconds("lease", lease)
        return (self._queries.extend, (lease, token.key, token.owner), "count")

    def _delete_step(self, key: str) -> _Step:
        return (self._queries.delete, (_durable.check_key(key),), "count")

    def _get_step(self, key: str) -> _Step:
        return (self._queries.get, (_durable.check_key(key),), "rows")

    def _get_answer(self, key: str, rows: Any) -> Any:
        return _durable.unpack(self._codec, key, rows[0][0]) if rows else None

    def _set_step(self, key: str, value: Any, ttl: float) -> _Step:
        key = _durable.check_key(key)
        ttl = _durable.check_seconds("ttl", ttl)
        return (self._queries.set, (key, _durable.pack(self._codec, value), ttl), "count")

    def _exists_step(self, key: str) -> _Step:
        return (self._queries.exists, (_durable.check_key(key),), "rows")


def _run(conn: Any, step: _Step) -> Any:
    query, params, want = step
    cursor = conn.execute(query, params)
    return cursor.fetchall() if want == "rows" else cursor.rowcount


async def _run_async(conn: Any, step: _Step) -> Any:
    query, params, want = step
    cursor = await conn.execute(query, params)
    return await cursor.fetchall() if want == "rows" else cursor.rowcount


def _errors() -> tuple[type[BaseException], ...]:
    import psycopg
    import psycopg_pool

    return (psycopg.Error, psycopg_pool.PoolTimeout)


class _PostgresStore(_Operations):
    """The PostgreSQL store's implementation (see ``PostgresIdempotencyStore``)."""

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: Any = None,
        async_pool: Any = None,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        codec: Codec | None = None,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        if conninfo is not None and not isinstance(conninfo, str):
            raise TypeError(f"conninfo must be a str, got {type(conninfo).__name__}")
        if conninfo is None and pool is None and async_pool is None:
            raise TypeError("give conninfo, pool (ConnectionPool) or async_pool")
        for label, size in (("min_size", min_size), ("max_size", max_size)):
            if type(size) is not int or size < (0 if label == "min_size" else 1):
                raise ValueError(f"{label} must be an int >= {int(label != 'min_size')}")
        if max_size < min_size:
            raise ValueError(f"max_size ({max_size}) must be >= min_size ({min_size})")
        self._timeout = _validation.positive_finite("timeout", timeout)
        self._table = _qualified(table, schema)
        self._table_sql = table_sql(table, schema=schema)
        self._queries = _Queries(self._table)
        self._codec = _durable.check_codec(codec)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name = name or f"postgres:{self._table.replace(chr(34), '')}"
        self._conninfo = conninfo
        if pool is None and conninfo is not None:
            from psycopg_pool import ConnectionPool

            pool = ConnectionPool(
                conninfo,
                kwargs={"autocommit": True},
                open=True,
                timeout=self._timeout,
                name=self.name,
                min_size=min_size,
                max_size=max_size,
            )
            self._owns_pool = True
        else:
            self._owns_pool = False
        self._pool = pool
        self._async_pool = async_pool

    def __repr__(self) -> str:
        return f"PostgresIdempotencyStore(table={self._table!r})"

    def table_sql(self) -> str:
        """This store's ``CREATE TABLE`` statements (for your migrations)."""
        return self._table_sql

    def create_table(self) -> None:
        """Creates the table and its index if they do not exist (idempotent)."""
        with self._connection() as conn:
            conn.execute(self._table_sql)

    async def create_table_async(self) -> None:
        """``create_table`` for asyncio code."""
        if not self._has_async:
            return await _durable.in_thread(self.create_table)
        async with await self._async_connection() as conn:
            await conn.execute(self._table_sql)
        return None

    def on(self, conn: Any) -> PostgresTransaction:
        """The store's operations on ``conn``, inside the caller's transaction: nothing
        commits until the caller commits (see the module's documentation)."""
        return PostgresTransaction(self, conn)

    def close(self) -> None:
        """Closes the pools the store created (not the ones it was given)."""
        if self._owns_pool and self._pool is not None:
            self._pool.close()

    def purge_expired(self) -> int:
        """Deletes the expired rows (they are already ignored); returns how many."""
        return int(self._sync("*", (self._queries.purge, (), "count"), "purge"))

    # -- connections ---------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._pool is None:
            raise TypeError(
                "this PostgresIdempotencyStore has only an asyncio pool: use the _async "
                "methods, or pass conninfo or pool= too"
            )
        return self._pool.connection(timeout=self._timeout)

    async def _async_connection(self) -> Any:
        assert self._async_pool is not None
        return self._async_pool.connection(timeout=self._timeout)

    @property
    def _has_async(self) -> bool:
        return self._async_pool is not None

    def _sync(self, key: str, step: _Step, operation: str, executed: bool = False) -> Any:
        try:
            with self._connection() as conn:
                return _run(conn, step)
        except _errors() as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    async def _async(self, key: str, step: _Step, operation: str, executed: bool = False) -> Any:
        try:
            async with await self._async_connection() as conn:
                return await _run_async(conn, step)
        except _errors() as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    # -- sync ----------------------------------------------------------------------------

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim:
        step, owner = self._claim_step(key, fingerprint, lease)
        for _ in range(_CLAIM_ATTEMPTS):
            answer = self._claim_answer(key, fingerprint, owner, self._sync(key, step, "claim"))
            if answer is not None:
                return answer
        raise IdempotencyStoreError(key, "the claim kept racing with concurrent changes")

    def complete(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        step = self._complete_step(token, result, ttl)
        return bool(self._sync(token.key, step, "complete", True) == 1)

    def fail(self, token: OwnerToken, error: str, ttl: float) -> bool:
        return bool(self._sync(token.key, self._fail_step(token, error, ttl), "fail", True) == 1)

    def release(self, token: OwnerToken) -> bool:
        return bool(self._sync(token.key, self._release_step(token), "release") == 1)

    def extend(self, token: OwnerToken, lease: float) -> bool:
        return bool(self._sync(token.key, self._extend_step(token, lease), "extend") == 1)

    def delete(self, key: str) -> bool:
        return bool(self._sync(key, self._delete_step(key), "delete") == 1)

    def get(self, key: str) -> Any:
        return self._get_answer(key, self._sync(key, self._get_step(key), "get"))

    def set(self, key: str, value: Any, ttl: float) -> None:
        self._sync(key, self._set_step(key, value, ttl), "set", True)

    def exists(self, key: str) -> bool:
        return bool(self._sync(key, self._exists_step(key), "exists"))

    # -- asyncio -------------------------------------------------------------------------

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim:
        if not self._has_async:
            return await _durable.claim_in_thread(self, key, fingerprint, lease)
        step, owner = self._claim_step(key, fingerprint, lease)

        async def claim() -> Claim:
            for _ in range(_CLAIM_ATTEMPTS):
                rows = await self._async(key, step, "claim")
                answer = self._claim_answer(key, fingerprint, owner, rows)
                if answer is not None:
                    return answer
            raise IdempotencyStoreError(key, "the claim kept racing with concurrent changes")

        return await _durable.shielded_claim(self, claim())

    async def complete_async(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.complete, token, result, ttl)
        step = self._complete_step(token, result, ttl)
        return bool(await self._async(token.key, step, "complete", True) == 1)

    async def fail_async(self, token: OwnerToken, error: str, ttl: float) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.fail, token, error, ttl)
        step = self._fail_step(token, error, ttl)
        return bool(await self._async(token.key, step, "fail", True) == 1)

    async def release_async(self, token: OwnerToken) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.release, token)
        return bool(await self._async(token.key, self._release_step(token), "release") == 1)

    async def extend_async(self, token: OwnerToken, lease: float) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.extend, token, lease)
        step = self._extend_step(token, lease)
        return bool(await self._async(token.key, step, "extend") == 1)

    async def delete_async(self, key: str) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.delete, key)
        return bool(await self._async(key, self._delete_step(key), "delete") == 1)

    async def get_async(self, key: str) -> Any:
        if not self._has_async:
            return await _durable.in_thread(self.get, key)
        return self._get_answer(key, await self._async(key, self._get_step(key), "get"))

    async def set_async(self, key: str, value: Any, ttl: float) -> None:
        if not self._has_async:
            return await _durable.in_thread(self.set, key, value, ttl)
        await self._async(key, self._set_step(key, value, ttl), "set", True)
        return None

    async def exists_async(self, key: str) -> bool:
        if not self._has_async:
            return await _durable.in_thread(self.exists, key)
        return bool(await self._async(key, self._exists_step(key), "exists"))


class PostgresTransaction(_Operations):
    """The store's operations on the caller's connection, in the caller's transaction.

    Nothing here commits or rolls back: the record is written when the caller's
    transaction commits, and vanishes when it rolls back. Use the sync methods on
    a ``psycopg.Connection``, the ``_async`` ones on a ``psycopg.AsyncConnection``.
    """

    def __init__(self, store: _PostgresStore, conn: Any) -> None:
        if not hasattr(conn, "execute") or not hasattr(conn, "transaction"):
            raise TypeError(f"conn must be a psycopg connection, got {type(conn).__name__}")
        self._store = store
        self._queries = store._queries
        self._codec = store._codec
        self.conn = conn

    def _sync(self, key: str, step: _Step, operation: str, executed: bool = False) -> Any:
        try:
            return _run(self.conn, step)
        except _errors() as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    async def _async(self, key: str, step: _Step, operation: str, executed: bool = False) -> Any:
        try:
            return await _run_async(self.conn, step)
        except _errors() as exc:
            raise _durable.store_error(key, exc, operation, executed=executed) from None

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim:
        step, owner = self._claim_step(key, fingerprint, lease)
        for _ in range(_CLAIM_ATTEMPTS):
            answer = self._claim_answer(key, fingerprint, owner, self._sync(key, step, "claim"))
            if answer is not None:
                return answer
        raise IdempotencyStoreError(key, "the claim kept racing with concurrent changes")

    def complete(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        step = self._complete_step(token, result, ttl)
        return bool(self._sync(token.key, step, "complete", True) == 1)

    def fail(self, token: OwnerToken, error: str, ttl: float) -> bool:
        return bool(self._sync(token.key, self._fail_step(token, error, ttl), "fail", True) == 1)

    def release(self, token: OwnerToken) -> bool:
        return bool(self._sync(token.key, self._release_step(token), "release") == 1)

    def extend(self, token: OwnerToken, lease: float) -> bool:
        return bool(self._sync(token.key, self._extend_step(token, lease), "extend") == 1)

    def get(self, key: str) -> Any:
        return self._get_answer(key, self._sync(key, self._get_step(key), "get"))

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim:
        step, owner = self._claim_step(key, fingerprint, lease)
        for _ in range(_CLAIM_ATTEMPTS):
            rows = await self._async(key, step, "claim")
            answer = self._claim_answer(key, fingerprint, owner, rows)
            if answer is not None:
                return answer
        raise IdempotencyStoreError(key, "the claim kept racing with concurrent changes")

    async def complete_async(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        step = self._complete_step(token, result, ttl)
        return bool(await self._async(token.key, step, "complete", True) == 1)

    async def fail_async(self, token: OwnerToken, error: str, ttl: float) -> bool:
        step = self._fail_step(token, error, ttl)
        return bool(await self._async(token.key, step, "fail", True) == 1)

    async def release_async(self, token: OwnerToken) -> bool:
        return bool(await self._async(token.key, self._release_step(token), "release") == 1)

    async def extend_async(self, token: OwnerToken, lease: float) -> bool:
        step = self._extend_step(token, lease)
        return bool(await self._async(token.key, step, "extend") == 1)

    async def get_async(self, key: str) -> Any:
        return self._get_answer(key, await self._async(key, self._get_step(key), "get"))


# OutcomeCounting: @idempotent counts each call's outcome on the store it used.
class PostgresIdempotencyStore(OutcomeCounting, _PostgresStore):
    """An idempotency store in a PostgreSQL table (psycopg 3 with a pool).

    Args:
        conninfo: a libpq connection string; the store then creates its sync pool
            (autocommit connections) and closes it in ``close()``.
        pool: a ``psycopg_pool.ConnectionPool`` of your own, for the sync methods
            (autocommit connections save a round trip per call).
        async_pool: a ``psycopg_pool.AsyncConnectionPool`` for the ``_async`` ones.
        table: the table's name (default ``shared_idempotency``).
        schema: the table's schema (default: the search path's).
        codec: how results are stored (default ``JsonCodec()``).
        min_size: the created pool's minimum size.
        max_size: the created pool's maximum size.
        timeout: seconds to wait for a pooled connection.
        name: the store's name in metrics (default ``postgres:<table>``).

    The table is not created for you: call ``create_table()`` once, or put
    ``table_sql()`` in your migrations.
    """
