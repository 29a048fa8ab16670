"""Pure-Python twin of ``rust/idempotency.rs``: the bounded TTL LRU behind
``InMemoryIdempotencyStore``.

Entries are in progress (an owner and a lease), completed (a result and an
expiry) or failed (an error and an expiry). Times are integer nanoseconds on
the core's clock. The table is bounded by ``capacity``; a new key in a full
table first purges expired entries (only once something can have expired),
then evicts the least recently used *completed* entry. In-progress and failed
entries are never evicted: when the table holds nothing else, a new key is
refused (``FULL``) with the time until the first of them expires.

``claim`` answers ``(code, payload)``:

* ``0`` CLAIMED, ``None``: the caller's ``owner`` now holds the key;
* ``1`` IN_PROGRESS, seconds until the holder's lease ends;
* ``2`` COMPLETED, the stored result;
* ``3`` FAILED, the stored error;
* ``4`` MISMATCH, ``None``: the key is held with another fingerprint;
* ``5`` FULL, seconds until an entry can expire.

An empty fingerprint matches any (``set`` stores results without one).
Owner-checked calls (``complete``, ``fail``, ``release``, ``extend``) answer
``False`` unless ``owner`` holds a live lease on the key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from shared import _validation
from shared._pure.clock import NanosecondClock, ns_to_secs, time_source

CLAIMED = 0
IN_PROGRESS = 1
COMPLETED = 2
FAILED = 3
MISMATCH = 4
FULL = 5

_NEVER = 2**64 - 1
_MAX_CAPACITY = 2**32 - 2


def _duration_ns(name: str, value: Any) -> int:
    """A finite duration > 0 (and <= MAX_SECONDS) in integer nanoseconds."""
    if type(value) is float and 0.0 < value <= _validation.MAX_SECONDS:
        return int(value * 1e9)
    return int(_validation.positive_finite(name, value) * 1e9)


def _text(name: str, value: Any) -> str:
    """A str that is valid text (the native core stores UTF-8)."""
    if type(value) is str and value.isascii():
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid text (no lone surrogates), got {value!r}") from None
    return value


def _owner(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"owner must be an int, got {type(value).__name__}")
    if not 0 <= value < 2**64:
        raise ValueError(f"owner must be an int in [0, 2**64), got {value!r}")
    return value


class _Entry:
    __slots__ = ("expires", "fingerprint", "owner", "state", "value")

    def __init__(self, state: int, fingerprint: str, owner: int, value: Any, expires: int) -> None:
        self.state = state
        self.fingerprint = fingerprint
        self.owner = owner
        self.value = value
        self.expires = expires


class IdempotencyLru:
    """Bounded TTL LRU of idempotency entries (see the module docstring)."""

    _capacity: int
    _clock: NanosecondClock | None
    _now: Callable[[], int]
    _lock: threading.Lock
    _entries: dict[str, _Entry]
    _lru: OrderedDict[str, None]
    _earliest: int
    _evictions: int

    def __new__(
        cls, capacity: int = 10000, *, clock: NanosecondClock | None = None
    ) -> IdempotencyLru:
        self = super().__new__(cls)
        self._capacity = _validation.int_in_range("capacity", capacity, 1, _MAX_CAPACITY)
        self._clock = clock
        self._now = time_source(clock)
        self._lock = threading.Lock()
        self._entries = {}
        # Completed keys, least recently used first.
        self._lru = OrderedDict()
        # No entry expires before this instant (a lower bound; exact after a purge).
        self._earliest = _NEVER
        self._evictions = 0
        return self

    # -- helpers (lock held) --------------------------------------------------

    def _live(self, key: str, now: int) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= now:
            self._remove(key, entry)
            return None
        return entry

    def _remove(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        if entry.state == COMPLETED:
            del self._lru[key]

    def _note_expiry(self, expires: int) -> None:
        if expires < self._earliest:
            self._earliest = expires

    def _make_room(self, now: int) -> int | None:
        """Frees one place for a new key; None, or nanoseconds until one can be freed."""
        if len(self._entries) < self._capacity:
            return None
        if now >= self._earliest:
            earliest = _NEVER
            for key, entry in list(self._entries.items()):
                if entry.expires <= now:
                    self._remove(key, entry)
                elif entry.expires < earliest:
                    earliest = entry.expires
            self._earliest = earliest
            if len(self._entries) < self._capacity:
                return None
        if self._lru:
            key, _ = self._lru.popitem(last=False)
            del self._entries[key]
            self._evictions += 1
            return None
        return self._earliest - now

    def _insert(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        if entry.state == COMPLETED:
            self._lru[key] = None
        self._note_expiry(entry.expires)

    def _held(self, key: str, owner: int, now: int) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.state != IN_PROGRESS or entry.owner != owner:
            return None
        if entry.expires <= now:
            self._remove(key, entry)
            return None
        return entry

    # -- the API ----------------------------------------------------------------

    def claim(self, /, key: str, fingerprint: str, lease: float, owner: int) -> tuple[int, Any]:
        """Claims ``key`` for ``owner`` for ``lease`` seconds, or says why not."""
        key = _text("key", key)
        fingerprint = _text("fingerprint", fingerprint)
        lease_ns = _duration_ns("lease", lease)
        owner = _owner(owner)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            if entry is not None:
                if fingerprint and entry.fingerprint and fingerprint != entry.fingerprint:
                    return (MISMATCH, None)
                if entry.state == COMPLETED:
                    self._lru.move_to_end(key)
                    return (COMPLETED, entry.value)
                if entry.state == FAILED:
                    return (FAILED, entry.value)
                return (IN_PROGRESS, ns_to_secs(entry.expires - now))
            wait = self._make_room(now)
            if wait is not None:
                return (FULL, ns_to_secs(wait))
            self._insert(key, _Entry(IN_PROGRESS, fingerprint, owner, None, now + lease_ns))
            return (CLAIMED, None)

    def complete(self, /, key: str, owner: int, result: Any, ttl: float) -> bool:
        """Stores ``result`` for ``ttl`` seconds if ``owner`` holds ``key``."""
        key = _text("key", key)
        owner = _owner(owner)
        ttl_ns = _duration_ns("ttl", ttl)
        now = self._now()
        with self._lock:
            entry = self._held(key, owner, now)
            if entry is None:
                return False
            entry.state = COMPLETED
            entry.value = result
            entry.expires = now + ttl_ns
            self._lru[key] = None
            self._note_expiry(entry.expires)
            return True

    def fail(self, /, key: str, owner: int, error: Any, ttl: float) -> bool:
        """Records ``key`` as failed with ``error`` for ``ttl`` seconds if ``owner`` holds it."""
        key = _text("key", key)
        owner = _owner(owner)
        ttl_ns = _duration_ns("ttl", ttl)
        now = self._now()
        with self._lock:
            entry = self._held(key, owner, now)
            if entry is None:
                return False
            entry.state = FAILED
            entry.value = error
            entry.expires = now + ttl_ns
            self._note_expiry(entry.expires)
            return True

    def release(self, /, key: str, owner: int) -> bool:
        """Frees ``key`` if ``owner`` holds it."""
        key = _text("key", key)
        owner = _owner(owner)
        now = self._now()
        with self._lock:
            entry = self._held(key, owner, now)
            if entry is None:
                return False
            self._remove(key, entry)
            return True

    def extend(self, /, key: str, owner: int, lease: float) -> bool:
        """Renews ``owner``'s lease on ``key`` to ``lease`` seconds from now."""
        key = _text("key", key)
        owner = _owner(owner)
        lease_ns = _duration_ns("lease", lease)
        now = self._now()
        with self._lock:
            entry = self._held(key, owner, now)
            if entry is None:
                return False
            entry.expires = now + lease_ns
            self._note_expiry(entry.expires)
            return True

    def delete(self, /, key: str) -> bool:
        """Forgets ``key`` whatever its state; True if a live entry was removed."""
        key = _text("key", key)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            if entry is None:
                return False
            self._remove(key, entry)
            return True

    def get(self, /, key: str) -> Any:
        """The completed result of ``key``, or None."""
        key = _text("key", key)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            if entry is None or entry.state != COMPLETED:
                return None
            self._lru.move_to_end(key)
            return entry.value

    def set(self, /, key: str, value: Any, ttl: float) -> bool:
        """Stores ``value`` as ``key``'s completed result, whatever was there.

        False (nothing stored) only when the table is full of in-progress and
        failed entries.
        """
        key = _text("key", key)
        ttl_ns = _duration_ns("ttl", ttl)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            if entry is not None:
                self._remove(key, entry)
            elif self._make_room(now) is not None:
                return False
            self._insert(key, _Entry(COMPLETED, "", 0, value, now + ttl_ns))
            return True

    def exists(self, /, key: str) -> bool:
        """Whether a completed result of ``key`` is stored."""
        key = _text("key", key)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            return entry is not None and entry.state == COMPLETED

    def state(self, /, key: str) -> int | None:
        """The state code of ``key``'s live entry (IN_PROGRESS, COMPLETED, FAILED) or None."""
        key = _text("key", key)
        now = self._now()
        with self._lock:
            entry = self._live(key, now)
            return None if entry is None else entry.state

    def clear(self, /) -> None:
        """Forgets every entry."""
        with self._lock:
            self._entries.clear()
            self._lru.clear()
            self._earliest = _NEVER

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def evictions(self) -> int:
        """Completed entries evicted to make room (not counting expiries)."""
        return self._evictions

    @property
    def clock(self) -> NanosecondClock | None:
        return self._clock


__all__ = ["IdempotencyLru"]
