"""The contract every idempotency store implements.

Correctness rests on an atomic claim, never on ``exists()`` then ``set()``
(two concurrent retries would both see "absent" and both execute):

``claim(key, fingerprint, lease)`` answers, in one atomic step,

* ``CLAIMED``: the caller owns the key until ``lease`` seconds pass; the
  ``Claim.token`` is the only way to ``complete``, ``fail``, ``release`` or
  ``extend`` it;
* ``IN_PROGRESS``: another owner holds a live lease (``Claim.retry_after`` says
  for how long at most);
* ``COMPLETED``: the key was executed; ``Claim.result`` is the stored result;
* ``FAILED``: the key was executed and failed under a keep-on-error policy;
  ``Claim.result`` is the stored error description; nothing re-executes until
  someone calls ``delete(key)``;
* ``MISMATCH``: the key exists with another fingerprint (the same key was sent
  with different arguments).

A lease that expires (its owner crashed or hangs) frees the key: the next
claim succeeds with a new token, and the old token can no longer complete it.

The design document's ``get``/``set``/``exists`` (and their ``_async`` forms)
stay for the manual pattern. A store that implements only those still works
with ``@idempotent``, check-then-set, with a warning that it is not atomic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AtomicIdempotencyStore",
    "Claim",
    "ClaimState",
    "IdempotencyStore",
    "OwnerToken",
]


class ClaimState(enum.Enum):
    """What a ``claim`` found."""

    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class OwnerToken:
    """Proof of ownership of a claimed key: the key and a random owner id."""

    key: str
    owner: str


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of ``claim``.

    Attributes:
        state: what the claim found.
        token: the owner token, for ``CLAIMED`` only.
        result: the stored result (``COMPLETED``) or error description (``FAILED``).
        retry_after: ``IN_PROGRESS`` only: seconds until the holder's lease ends.
    """

    state: ClaimState
    token: OwnerToken | None = None
    result: Any = None
    retry_after: float | None = None


@runtime_checkable
class IdempotencyStore(Protocol):
    """The design document's protocol: enough for the manual pattern.

    ``get`` returns the completed result or ``None``; ``set`` stores a completed
    result for ``ttl`` seconds; ``exists`` tells whether a result is stored.
    """

    async def get_async(self, key: str) -> Any: ...

    async def set_async(self, key: str, value: Any, ttl: float) -> None: ...

    async def exists_async(self, key: str) -> bool: ...


@runtime_checkable
class AtomicIdempotencyStore(Protocol):
    """What every store of this package implements; ``@idempotent`` uses it.

    Every owner-checked call returns ``False`` when the token no longer owns the
    key (its lease ran out and someone else claimed it, or it was completed,
    failed, released or deleted), and changes nothing then.
    """

    name: str

    def claim(self, key: str, fingerprint: str, lease: float) -> Claim: ...

    def complete(self, token: OwnerToken, result: Any, ttl: float) -> bool: ...

    def fail(self, token: OwnerToken, error: str, ttl: float) -> bool: ...

    def release(self, token: OwnerToken) -> bool: ...

    def extend(self, token: OwnerToken, lease: float) -> bool: ...

    def delete(self, key: str) -> bool: ...

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any, ttl: float) -> None: ...

    def exists(self, key: str) -> bool: ...

    async def claim_async(self, key: str, fingerprint: str, lease: float) -> Claim: ...

    async def complete_async(self, token: OwnerToken, result: Any, ttl: float) -> bool: ...

    async def fail_async(self, token: OwnerToken, error: str, ttl: float) -> bool: ...

    async def release_async(self, token: OwnerToken) -> bool: ...

    async def extend_async(self, token: OwnerToken, lease: float) -> bool: ...

    async def delete_async(self, key: str) -> bool: ...

    async def get_async(self, key: str) -> Any: ...

    async def set_async(self, key: str, value: Any, ttl: float) -> None: ...

    async def exists_async(self, key: str) -> bool: ...
