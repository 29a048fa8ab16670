"""``InMemoryIdempotencyStore``: one process, bounded, on the native TTL LRU.

For tests and single-process services: nothing survives a restart and nothing
is shared with other processes (use a durable store for money movements).
Results are stored by reference, not copied or serialised: a replay returns
the very object the first call returned, so do not mutate results.
"""

from __future__ import annotations

import itertools
import secrets
from typing import TYPE_CHECKING, Any, ClassVar, Final

from shared import _validation
from shared._backend import core
from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency.outcomes import OutcomeCounting
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

if TYPE_CHECKING:
    from shared import _native
    from shared.testing import ManualClock

__all__ = ["InMemoryIdempotencyStore"]

DEFAULT_TTL: Final = 86400

_CLAIMED, _IN_PROGRESS, _COMPLETED, _FAILED, _MISMATCH, _FULL = range(6)
_STATES: Final = {
    _IN_PROGRESS: ClaimState.IN_PROGRESS,
    _COMPLETED: ClaimState.COMPLETED,
    _FAILED: ClaimState.FAILED,
    _MISMATCH: ClaimState.MISMATCH,
}


def _owner_of(token: Any) -> int | None:
    """The core's owner id inside one of our tokens; None for anything else."""
    if not isinstance(token, OwnerToken):
        raise TypeError(f"token must be an OwnerToken, got {type(token).__name__}")
    owner = token.owner
    if type(owner) is str and owner.isdigit() and len(owner) <= 20:
        value = int(owner)
        if value < 2**64:
            return value
    return None


class InMemoryIdempotencyStore(OutcomeCounting):
    """The design document's in-memory store, with the atomic claim.

    Args:
        capacity: the most keys held (default 10,000). A new key in a full
            store evicts the least recently used *completed* result (after
            purging expired entries); in-progress claims and failed keys are
            never evicted, and when nothing else is left a claim raises
            ``IdempotencyStoreError`` (nothing was executed) until a lease or
            TTL runs out.
        clock: a ``shared.testing.ManualClock`` for tests (default: the
            monotonic clock).
        name: the store's name in metrics (default ``"memory"``).

    Thread-safe; the async methods never block (they call the sync ones).
    """

    #: ``@idempotent`` may call the sync methods from async code: they never block.
    nonblocking: ClassVar[bool] = True

    def __init__(
        self,
        capacity: int = 10000,
        *,
        clock: ManualClock | None = None,
        name: str = "memory",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self.name = name
        self._core: _native.IdempotencyLru = core.IdempotencyLru(capacity, clock=clock)
        # Owner ids: unique in this store, and unlikely to match another store's.
        self._owners = itertools.count(secrets.randbits(48))
        # The hot reads go straight to the core (no Python frame in between).
        self.get = self._core.get  # type: ignore[method-assign]
        self.exists = self._core.exists  # type: ignore[method-assign]

    # -- the atomic claim ----------------------------------------------------------

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim:
        """Claims ``key`` for ``lease`` seconds, or says who has it (see ``store``)."""
        if key == "":
            raise ValueError("key must be a non-empty str")
        owner = next(self._owners)
        code, payload = self._core.claim(key, fingerprint, lease, owner)
        if code == _CLAIMED:
            return Claim(ClaimState.CLAIMED, token=OwnerToken(key, str(owner)))
        if code == _COMPLETED:
            return Claim(ClaimState.COMPLETED, result=payload)
        if code == _IN_PROGRESS:
            return Claim(ClaimState.IN_PROGRESS, retry_after=payload)
        if code == _FULL:
            raise IdempotencyStoreError(
                key,
                f"the in-memory store is full ({self._core.capacity} keys in progress or "
                f"failed); retry after {payload:.3f}s",
            )
        return Claim(_STATES[code], result=payload)

    def _claim_or_result(self, key: str, fingerprint: str, lease: float) -> tuple[bool, Any]:
        """``(True, result)`` for a completed key, else ``(False, claim)``: ``@idempotent``'s
        replay path, without building a ``Claim``."""
        if key == "":
            raise ValueError("key must be a non-empty str")
        owner = next(self._owners)
        code, payload = self._core.claim(key, fingerprint, lease, owner)
        if code == _COMPLETED:
            return (True, payload)
        if code == _CLAIMED:
            return (False, Claim(ClaimState.CLAIMED, token=OwnerToken(key, str(owner))))
        if code == _IN_PROGRESS:
            return (False, Claim(ClaimState.IN_PROGRESS, retry_after=payload))
        if code == _FULL:
            raise IdempotencyStoreError(
                key,
                f"the in-memory store is full ({self._core.capacity} keys in progress or "
                f"failed); retry after {payload:.3f}s",
            )
        return (False, Claim(_STATES[code], result=payload))

    def complete(self, token: OwnerToken, result: Any, ttl: float = DEFAULT_TTL) -> bool:
        """Stores ``result`` for ``ttl`` seconds if ``token`` still owns its key."""
        owner = _owner_of(token)
        if owner is None:
            _validation.positive_finite("ttl", ttl)
            return False
        return self._core.complete(token.key, owner, result, ttl)

    def fail(self, token: OwnerToken, error: str, ttl: float = DEFAULT_TTL) -> bool:
        """Keeps the key as failed with ``error`` for ``ttl`` seconds if ``token`` owns it."""
        owner = _owner_of(token)
        if owner is None:
            _validation.positive_finite("ttl", ttl)
            return False
        return self._core.fail(token.key, owner, error, ttl)

    def release(self, token: OwnerToken) -> bool:
        """Frees the key if ``token`` still owns it."""
        owner = _owner_of(token)
        return owner is not None and self._core.release(token.key, owner)

    def extend(self, token: OwnerToken, lease: float) -> bool:
        """Renews ``token``'s lease to ``lease`` seconds from now if it still owns the key."""
        owner = _owner_of(token)
        if owner is None:
            _validation.positive_finite("lease", lease)
            return False
        return self._core.extend(token.key, owner, lease)

    def delete(self, key: str) -> bool:
        """Forgets ``key`` whatever its state (an operator's decision on a failed key)."""
        return self._core.delete(key)

    # -- the design document's protocol -------------------------------------------

    def get(self, key: str) -> Any:
        """The completed result of ``key``, or None."""
        return self._core.get(key)

    def set(self, key: str, value: Any, ttl: float = DEFAULT_TTL) -> None:
        """Stores ``value`` as ``key``'s result for ``ttl`` seconds, whatever was there."""
        if key == "":
            raise ValueError("key must be a non-empty str")
        if not self._core.set(key, value, ttl):
            raise IdempotencyStoreError(
                key,
                f"the in-memory store is full ({self._core.capacity} keys in progress or failed)",
            )

    def exists(self, key: str) -> bool:
        """Whether a completed result of ``key`` is stored."""
        return self._core.exists(key)

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim:
        return self.claim(key, fingerprint, lease)

    async def complete_async(
        self, token: OwnerToken, result: Any, ttl: float = DEFAULT_TTL
    ) -> bool:
        return self.complete(token, result, ttl)

    async def fail_async(self, token: OwnerToken, error: str, ttl: float = DEFAULT_TTL) -> bool:
        return self.fail(token, error, ttl)

    async def release_async(self, token: OwnerToken) -> bool:
        return self.release(token)

    async def extend_async(self, token: OwnerToken, lease: float) -> bool:
        return self.extend(token, lease)

    async def delete_async(self, key: str) -> bool:
        return self.delete(key)

    async def get_async(self, key: str) -> Any:
        return self.get(key)

    async def set_async(self, key: str, value: Any, ttl: float = DEFAULT_TTL) -> None:
        self.set(key, value, ttl)

    async def exists_async(self, key: str) -> bool:
        return self.exists(key)

    # -- inspection -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._core)

    @property
    def capacity(self) -> int:
        """The most keys held."""
        return self._core.capacity

    @property
    def evictions(self) -> int:
        """Completed results evicted to make room (not counting expiries)."""
        return self._core.evictions

    def clear(self) -> None:
        """Forgets every key (tests)."""
        self._core.clear()

    def __repr__(self) -> str:
        return (
            f"InMemoryIdempotencyStore(name={self.name!r}, keys={len(self)}, "
            f"capacity={self.capacity})"
        )
