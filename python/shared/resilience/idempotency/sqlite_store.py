"""``SQLiteIdempotencyStore``: the durable default for one host (standard library only).

One database file, shared by every thread and every process that opens it:

* WAL journal, so readers never wait for the writer; ``synchronous=FULL`` by
  default, so a completed result survives a power cut, not only a crash;
* every change is one ``BEGIN IMMEDIATE`` transaction: the write lock is taken
  before the record is read, so two processes can never both see the key free
  and both claim it (SQLite serialises them; the second waits up to
  ``busy_timeout`` and then sees the first one's claim);
* times are wall-clock seconds (``time.time()``, or the ``clock`` you inject),
  the one clock every process on the host shares and that survives a restart;
* one connection per thread (and per process: a forked child opens its own).

The ``_async`` forms run the same calls on the event loop's default executor.
A network filesystem (NFS, SMB) breaks SQLite's locking: keep the file local.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared import _validation
from shared.resilience.idempotency import _durable
from shared.resilience.idempotency._durable import COMPLETED, FAILED, IN_PROGRESS
from shared.resilience.idempotency.codec import Codec
from shared.resilience.idempotency.outcomes import OutcomeCounting
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

__all__ = ["SQLiteIdempotencyStore"]

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def _check_table(table: Any) -> str:
    if not isinstance(table, str):
        raise TypeError(f"table must be a str, got {type(table).__name__}")
    if (
        not table
        or not (table[0].isalpha() or table[0] == "_")
        or not all(c.isalnum() or c == "_" for c in table)
    ):
        raise ValueError(f"table must be an SQL identifier (letters, digits, _), got {table!r}")
    if not table.isascii():
        raise ValueError(f"table must be ASCII, got {table!r}")
    return table


class _SQLiteStore:
    """The SQLite store's implementation (see ``SQLiteIdempotencyStore``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "shared_idempotency",
        codec: Codec | None = None,
        busy_timeout: float = 10.0,
        synchronous: str = "FULL",
        clock: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
        path_str = os.fspath(path)
        if not path_str or path_str == ":memory:" or path_str.startswith("file::memory"):
            raise ValueError(
                "path must name a database file (an in-memory database is not shared), "
                f"got {path!r}"
            )
        self._path = path_str
        self._table = _check_table(table)
        self._codec = _durable.check_codec(codec)
        self._busy_timeout = _validation.positive_finite("busy_timeout", busy_timeout)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        self._synchronous = synchronous.upper()
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable, got {type(clock).__name__}")
        self._clock = clock or time.time
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name = name or f"sqlite:{Path(path_str).name}"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        # A store dropped without close() closes its connections: a weakref callback
        # runs before the collector finalizes the connections (CPython 3.13+ warns
        # about a connection collected open), and it holds the list, not the store.
        weakref.finalize(self, _close_dropped, self._connections, os.getpid())
        self._closed = False
        with self._transaction("create table") as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL, "
                "owner TEXT NOT NULL, value BLOB, expires_at REAL NOT NULL) WITHOUT ROWID"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self._table}_expires_at ON {self._table} (expires_at)"
            )

    def __repr__(self) -> str:
        return f"SQLiteIdempotencyStore({self._path!r}, table={self._table!r})"

    # -- connections ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # only close() touches it from another thread
        )
        try:
            _switch_to_wal(conn, time.monotonic() + self._busy_timeout)
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except BaseException:
            conn.close()
            raise
        local.conn, local.pid = conn, os.getpid()
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _transaction(self, key: str, *, executed: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; sqlite errors become store errors."""
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _durable.store_error(key, exc, "BEGIN IMMEDIATE", executed=executed) from None
        try:
            yield conn
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _durable.store_error(key, exc, "the transaction", executed=executed) from None
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise _durable.store_error(key, exc, "COMMIT", executed=executed) from None

    def close(self) -> None:
        """Closes every connection this store opened (in this process)."""
        self._closed = True
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        pid = os.getpid()
        if getattr(self._local, "pid", pid) != pid:
            return  # a forked child: the parent's connections are not ours to close
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def purge_expired(self) -> int:
        """Deletes the expired records; returns how many. Expired records are
        already ignored, this only reclaims space (run it now and then)."""
        with self._transaction("*") as conn:
            cursor = conn.execute(
                f"DELETE FROM {self._table} WHERE expires_at <= ?", (self._clock(),)
            )
            return cursor.rowcount

    # -- the atomic claim ---------------------------------------------------------------

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim:
        key = _durable.check_key(key)
        fingerprint = _durable.check_fingerprint(fingerprint)
        lease = _durable.check_seconds("lease", lease)
        owner = _durable.new_owner()
        with self._transaction(key) as conn:
            now = self._clock()
            row = conn.execute(
                f"SELECT state, fingerprint, value, expires_at FROM {self._table} "
                "WHERE key = ? AND expires_at > ?",
                (key, now),
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT OR REPLACE INTO {self._table} "
                    "(key, fingerprint, state, owner, value, expires_at) "
                    "VALUES (?, ?, ?, ?, NULL, ?)",
                    (key, fingerprint, IN_PROGRESS, owner, now + lease),
                )
                return Claim(ClaimState.CLAIMED, token=OwnerToken(key, owner))
        state, stored_fingerprint, value, expires_at = row
        return _durable.existing_claim(
            self._codec, key, fingerprint, state, stored_fingerprint, value, expires_at - now
        )

    def _owned_update(
        self, token: OwnerToken, sql: str, params: tuple[Any, ...], *, executed: bool
    ) -> bool:
        """Runs ``sql`` plus the owner check in one transaction; ``_NOW`` in ``params``
        stands for the clock's reading inside it."""
        with self._transaction(token.key, executed=executed) as conn:
            now = self._clock()
            values = tuple(now if p is _NOW else p for p in params)
            cursor = conn.execute(
                sql + " WHERE key = ? AND owner = ? AND state = ? AND expires_at > ?",
                (*values, token.key, token.owner, IN_PROGRESS, now),
            )
            return cursor.rowcount == 1

    def complete(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        token = _durable.check_token(token)
        ttl = _durable.check_seconds("ttl", ttl)
        value = _durable.pack(self._codec, result)  # ResultNotStorableError before any write
        return self._owned_update(
            token,
            f"UPDATE {self._table} SET state = ?, value = ?, expires_at = ? + ?",
            (COMPLETED, value, _NOW, ttl),
            executed=True,
        )

    def fail(self, token: OwnerToken, error: str, ttl: float) -> bool:
        token = _durable.check_token(token)
        error = _durable.check_error(error)
        ttl = _durable.check_seconds("ttl", ttl)
        return self._owned_update(
            token,
            f"UPDATE {self._table} SET state = ?, value = ?, expires_at = ? + ?",
            (FAILED, error.encode(), _NOW, ttl),
            executed=True,
        )

    def release(self, token: OwnerToken) -> bool:
        token = _durable.check_token(token)
        return self._owned_update(token, f"DELETE FROM {self._table}", (), executed=False)

    def extend(self, token: OwnerToken, lease: float) -> bool:
        token = _durable.check_token(token)
        lease = _durable.check_seconds("lease", lease)
        return self._owned_update(
            token, f"UPDATE {self._table} SET expires_at = ? + ?", (_NOW, lease), executed=False
        )

    # -- the document's protocol and administration ---------------------------------------

    def delete(self, key: str) -> bool:
        key = _durable.check_key(key)
        with self._transaction(key) as conn:
            cursor = conn.execute(
                f"DELETE FROM {self._table} WHERE key = ? AND expires_at > ?",
                (key, self._clock()),
            )
            return cursor.rowcount == 1

    def get(self, key: str) -> Any:
        key = _durable.check_key(key)
        try:
            row = (
                self._connection()
                .execute(
                    f"SELECT value FROM {self._table} "
                    "WHERE key = ? AND state = ? AND expires_at > ?",
                    (key, COMPLETED, self._clock()),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise _durable.store_error(key, exc, "get") from None
        return None if row is None else _durable.unpack(self._codec, key, row[0])

    def set(self, key: str, value: Any, ttl: float) -> None:
        key = _durable.check_key(key)
        ttl = _durable.check_seconds("ttl", ttl)
        data = _durable.pack(self._codec, value)
        with self._transaction(key, executed=True) as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO {self._table} "
                "(key, fingerprint, state, owner, value, expires_at) VALUES (?, '', ?, '', ?, ?)",
                (key, COMPLETED, data, self._clock() + ttl),
            )

    def exists(self, key: str) -> bool:
        key = _durable.check_key(key)
        try:
            row = (
                self._connection()
                .execute(
                    f"SELECT 1 FROM {self._table} WHERE key = ? AND state = ? AND expires_at > ?",
                    (key, COMPLETED, self._clock()),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise _durable.store_error(key, exc, "exists") from None
        return row is not None

    # -- async forms: the same calls on the default executor -----------------------------

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim:
        return await _durable.claim_in_thread(self, key, fingerprint, lease)

    async def complete_async(self, token: OwnerToken, result: Any, ttl: float) -> bool:
        return await _durable.in_thread(self.complete, token, result, ttl)

    async def fail_async(self, token: OwnerToken, error: str, ttl: float) -> bool:
        return await _durable.in_thread(self.fail, token, error, ttl)

    async def release_async(self, token: OwnerToken) -> bool:
        return await _durable.in_thread(self.release, token)

    async def extend_async(self, token: OwnerToken, lease: float) -> bool:
        return await _durable.in_thread(self.extend, token, lease)

    async def delete_async(self, key: str) -> bool:
        return await _durable.in_thread(self.delete, key)

    async def get_async(self, key: str) -> Any:
        return await _durable.in_thread(self.get, key)

    async def set_async(self, key: str, value: Any, ttl: float) -> None:
        await _durable.in_thread(self.set, key, value, ttl)

    async def exists_async(self, key: str) -> bool:
        return await _durable.in_thread(self.exists, key)


# SQLite's primary result codes for "another connection holds the lock".
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _switch_to_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried until ``deadline`` while another
    connection holds the lock. While processes open a new file together, SQLite
    answers this pragma "database is locked" at once, without calling the busy
    handler that ``timeout`` sets (it would risk a deadlock there), so the
    ``busy_timeout`` wait is ours to make."""
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            code = exc.sqlite_errorcode & 0xFF
            if code not in _BUSY_CODES or time.monotonic() >= deadline:
                raise
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)


def _close_dropped(connections: list[sqlite3.Connection], pid: int) -> None:
    """Closes the connections of a store that was dropped without ``close()``."""
    if os.getpid() != pid:
        return  # a forked child: the parent's connections are not ours to close
    for conn in list(connections):
        with contextlib.suppress(Exception):
            conn.close()
    connections.clear()


class _Now:
    """A placeholder for "the clock's reading inside the transaction"."""


_NOW = _Now()


# OutcomeCounting: @idempotent counts each call's outcome on the store it used.
class SQLiteIdempotencyStore(OutcomeCounting, _SQLiteStore):
    """A durable idempotency store in one SQLite file (one host, many processes).

    Args:
        path: the database file (created if missing; not ``:memory:``).
        table: the table's name (created if missing).
        codec: how results are stored (default ``JsonCodec()``; see ``codec``).
        busy_timeout: seconds a writer waits for another process's transaction.
        synchronous: SQLite's ``synchronous`` pragma (``FULL`` by default: a
            completed result survives a power cut).
        clock: wall-clock seconds (default ``time.time``); inject one in tests.
        name: the store's name in metrics (default ``sqlite:<file name>``).
    """
