"""What the SQLite, Redis and PostgreSQL idempotency stores share.

The record model every durable store keeps per key:

* ``state``: ``P`` (in progress: claimed, lease running), ``C`` (completed:
  the result is stored) or ``F`` (failed and kept: the error is stored);
* ``owner``: the claim's random owner id (32 hex digits), checked by the
  server (a SQL ``WHERE`` or a Lua comparison) for every owner-only operation;
* ``fingerprint``: of the arguments; empty when unknown (a manual ``set``);
* ``value``: the result as ``<codec name> NUL <codec bytes>``, or the error text;
* an expiry: the lease's end while in progress, the TTL's end afterwards. An
  expired record is as good as absent: the next claim takes it over.

A token owns its key while its lease is live and the key is still in progress
under its owner id; every owner-checked operation needs both, in one atomic
step, or it returns ``False`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from shared import _validation
from shared.resilience.exceptions import IdempotencyStoreError
from shared.resilience.idempotency.codec import Codec, JsonCodec, StoredValueError
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

IN_PROGRESS = "P"
COMPLETED = "C"
FAILED = "F"
OWNER_HEX = 32
MAX_KEY_BYTES = 4096

logger = logging.getLogger("shared.resilience.idempotency")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def new_owner() -> str:
    return secrets.token_hex(OWNER_HEX // 2)


def check_key(key: Any, name: str = "key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{name} must be a non-empty str")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ValueError(f"{name} must be at most {MAX_KEY_BYTES} bytes, got {len(key)} chars")
    return key


def check_fingerprint(fingerprint: Any) -> str:
    if not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a str, got {type(fingerprint).__name__}")
    return fingerprint


def check_seconds(name: str, value: Any) -> float:
    """A finite duration > 0 (a TTL or a lease)."""
    return _validation.positive_finite(name, value)


def check_token(token: Any) -> OwnerToken:
    if not isinstance(token, OwnerToken):
        raise TypeError(f"token must be an OwnerToken, got {type(token).__name__}")
    return token


def check_error(error: Any) -> str:
    if not isinstance(error, str):
        raise TypeError(f"error must be a str, got {type(error).__name__}")
    return error


def check_codec(codec: Any) -> Codec:
    if codec is None:
        return JsonCodec()
    for attr in ("name", "encode", "decode"):
        if not hasattr(codec, attr):
            raise TypeError(f"codec must have name, encode and decode; {codec!r} lacks {attr}")
    if not isinstance(codec.name, str) or not codec.name or "\0" in codec.name:
        raise ValueError(f"codec.name must be a non-empty str without NUL, got {codec.name!r}")
    return codec  # type: ignore[no-any-return]


def pack(codec: Codec, value: Any) -> bytes:
    """``<codec name> NUL <bytes>``: raises ResultNotStorableError before any write."""
    return codec.name.encode() + b"\0" + codec.encode(value)


def unpack(codec: Codec, key: str, data: bytes | memoryview | None) -> Any:
    if data is None:
        return None
    raw = bytes(data)
    name, sep, payload = raw.partition(b"\0")
    if not sep or name != codec.name.encode():
        found = name.decode(errors="replace") if sep else "no codec"
        raise IdempotencyStoreError(
            key,
            f"the stored result was written by the {found!r} codec, "
            f"and this store decodes with {codec.name!r}",
        )
    try:
        return codec.decode(payload)
    except StoredValueError as exc:
        raise IdempotencyStoreError(key, str(exc)) from None


def decode_error_text(data: bytes | memoryview | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8", "replace")


def existing_claim(
    codec: Codec,
    key: str,
    fingerprint: str,
    state: str,
    stored_fingerprint: str | None,
    value: bytes | memoryview | str | None,
    remaining: float,
) -> Claim:
    """The answer of a claim that found a live record (not ours)."""
    if fingerprint and stored_fingerprint and fingerprint != stored_fingerprint:
        return Claim(ClaimState.MISMATCH)
    if state == IN_PROGRESS:
        return Claim(ClaimState.IN_PROGRESS, retry_after=max(0.0, remaining))
    if state == COMPLETED:
        assert not isinstance(value, str)
        return Claim(ClaimState.COMPLETED, result=unpack(codec, key, value))
    if state == FAILED:
        return Claim(ClaimState.FAILED, result=decode_error_text(value))
    raise IdempotencyStoreError(key, f"the stored record has an unknown state {state!r}")


def store_error(
    key: str, exc: BaseException, operation: str, *, executed: bool = False
) -> IdempotencyStoreError:
    error = IdempotencyStoreError(
        key, f"{operation} failed: {type(exc).__name__}: {exc}", executed=executed
    )
    error.__cause__ = exc
    return error


async def in_thread(function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Runs a blocking store call on the default executor (the async forms of
    a store without an asyncio client)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(function, *args, **kwargs))


async def claim_in_thread(store: Any, key: str, fingerprint: str, lease: float) -> Claim:
    """``store.claim`` on the default executor. If the awaiting task is cancelled
    while the claim runs, a claim it won is released (in the background) rather
    than left held by a token nobody has until its lease ends."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, store.claim, key, fingerprint, lease)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda done: _release_orphan(store, done))
        raise


def _release_orphan(store: Any, done: asyncio.Future[Claim]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    claim = done.result()
    if claim.token is not None:
        threading.Thread(target=_quiet_release, args=(store, claim.token), daemon=True).start()


def _quiet_release(store: Any, token: OwnerToken) -> None:
    try:
        store.release(token)
    except Exception:  # best effort: the lease frees it anyway
        logger.warning("could not release the claim of a cancelled caller", exc_info=True)


async def shielded_claim(store: Any, claim: Awaitable[Claim]) -> Claim:
    """Awaits a native asyncio ``claim`` so that a cancelled caller never leaves a claim
    it won held by a token nobody has: the claim runs to its end in its own task,
    and if it was won after the caller was cancelled, it is released."""
    task = asyncio.ensure_future(claim)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(lambda done: _release_orphan_async(store, done))
        raise


def _release_orphan_async(store: Any, done: asyncio.Future[Claim]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    token = done.result().token
    if token is not None:
        task = asyncio.ensure_future(_quiet_release_async(store, token))
        _ORPHAN_RELEASES.add(task)
        task.add_done_callback(_ORPHAN_RELEASES.discard)


async def _quiet_release_async(store: Any, token: OwnerToken) -> None:
    try:
        await store.release_async(token)
    except Exception:  # best effort: the lease frees it anyway
        logger.warning("could not release the claim of a cancelled caller", exc_info=True)


_ORPHAN_RELEASES: set[asyncio.Task[None]] = set()
