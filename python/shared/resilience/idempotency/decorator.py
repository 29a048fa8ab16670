"""``@idempotent``: one execution per key, for sync and async functions and methods.

Per call, on a store with the atomic claim (``AtomicIdempotencyStore``):

1. the key is read from the ``key_param`` argument (by position or keyword)
   and the other arguments are fingerprinted (SHA-256 of their canonical JSON;
   a first parameter named ``self`` or ``cls`` is left out, and values with no
   canonical form count by type only);
2. ``store.claim(key, fingerprint, lease)``:

   * completed: the stored result is returned (``raise_on_duplicate=True``:
     ``DuplicateRequestError(key, cached_result)``);
   * in progress: the call waits for the holder's outcome, polling, up to
     ``wait_timeout`` seconds, then raises ``IdempotencyInProgressError``;
   * mismatch: ``IdempotencyMismatchError`` (the key came with other arguments);
   * failed (kept by ``on_error="keep"``): ``IdempotencyFailedError``;
   * claimed: the function runs while a background renewer extends the lease
     every ``lease / 3`` seconds; its result is stored for ``ttl`` seconds.
     A lease that could not be renewed (the store lost it) is logged at
     ERROR and counted (``lost_leases``): another caller may then execute.

3. If the function raises (or is cancelled), ``on_error="release"`` (default)
   frees the key so that a retry executes; ``on_error="keep"`` records it as
   failed, so that nothing re-executes until someone deletes the key (for
   money movements, where a half-done call must not be repeated blindly).

A store with only the design document's ``get``/``set``/``exists`` works too,
by check-then-set: two concurrent first calls can then both execute. A
one-time ``RuntimeWarning`` says so.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

from shared import _validation
from shared.observability import _events
from shared.resilience.exceptions import (
    DuplicateRequestError,
    IdempotencyError,
    IdempotencyFailedError,
    IdempotencyInProgressError,
    IdempotencyMismatchError,
    IdempotencyStoreError,
)
from shared.resilience.idempotency import codec
from shared.resilience.idempotency.canonical import canonical_json, sha256_hex, type_name
from shared.resilience.idempotency.store import Claim, ClaimState, OwnerToken

__all__ = ["idempotent"]

logger = logging.getLogger("shared.resilience.idempotency")

F = TypeVar("F", bound=Callable[..., Any])

ON_ERROR: Final = ("release", "keep")
_POLL_FIRST: Final = 0.001
_POLL_MAX: Final = 0.05
_MARK: Final = "$idempotent"

_CLAIMED = ClaimState.CLAIMED
_COMPLETED = ClaimState.COMPLETED
_IN_PROGRESS = ClaimState.IN_PROGRESS
_MISMATCH = ClaimState.MISMATCH


def _on_replay(key: str) -> None:
    """Called on every replayed call (a completed duplicate): a span event when tracing is on."""
    if _events.active:
        _events.idempotency_replay(key)


def _no_count(outcome: str, n: int = 1) -> None:
    pass


# -- the background lease renewer (sync functions) -----------------------------------


class _Watch:
    """A running call's lease, renewed until the call ends (then ``stopped``).

    A stopped watch lets go of its store and token at once: its heap entry stays
    until it comes due, and must not keep a dropped store alive until then.
    """

    __slots__ = ("due", "lease", "lost", "stopped", "store", "token")
    store: Any
    token: OwnerToken | None

    def __init__(self, store: Any, token: OwnerToken, lease: float, due: float) -> None:
        self.store = store
        self.token = token
        self.lease = lease
        self.due = due
        self.stopped = False
        self.lost = False


def _lost_lease(store: Any, token: OwnerToken, why: str) -> None:
    logger.error(
        "idempotency key %r: lease lost while the call ran (%s); its result cannot be "
        "recorded and a duplicate may execute",
        token.key,
        why,
    )
    count = getattr(store, "_count_outcome", None)
    if count is not None:
        count("lost_leases")


_LOST = threading.Lock()


def _report_lost(watch: _Watch, store: Any, token: OwnerToken, why: str) -> None:
    """Logs and counts a lost lease once, whether the renewer or the call notices first."""
    with _LOST:
        if watch.lost:
            return
        watch.lost = True
    _lost_lease(store, token, why)


class _Renewer:
    """One daemon thread renews the leases of every running sync call."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")
        # Stopped entries wait in the heap until due (lease / 3): rebuilt without
        # them when it grows past this, so a burst of short calls cannot pile up.
        self._compact_at = 64

    def watch(self, store: Any, token: OwnerToken, lease: float) -> _Watch:
        due = time.monotonic() + lease / 3
        watch = _Watch(store, token, lease, due)
        with self._cond:
            heap = self._heap
            heapq.heappush(heap, (due, next(self._seq), watch))
            if len(heap) > self._compact_at:
                heap[:] = [entry for entry in heap if not entry[2].stopped]
                heapq.heapify(heap)
                self._compact_at = max(64, 2 * len(heap))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="shared-idempotency-renewer", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                self._cond.notify()
        return watch

    @staticmethod
    def unwatch(watch: _Watch) -> None:
        # The heap entry is dropped lazily when it comes due (or at a compaction).
        watch.stopped = True
        watch.store = watch.token = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].stopped:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, watch = heapq.heappop(self._heap)
                        break
                    self._wake_at = self._heap[0][0] if self._heap else now + 60.0
                    self._cond.wait(self._wake_at - now)
                self._wake_at = float("inf")
            self._renew(watch)

    def _renew(self, watch: _Watch) -> None:
        store, token = watch.store, watch.token
        if store is None or token is None:
            return  # the call ended meanwhile
        try:
            renewed = store.extend(token, watch.lease)
        except Exception as exc:  # the store is unreachable: try again next period
            logger.warning("idempotency key %r: lease renewal failed: %r", token.key, exc)
            renewed = True
        if watch.stopped:
            return
        if not renewed:
            _report_lost(watch, store, token, "the store no longer holds its claim")
            return
        watch.due = time.monotonic() + watch.lease / 3
        with self._cond:
            heapq.heappush(self._heap, (watch.due, next(self._seq), watch))


_renewer = _Renewer()


# -- argument binding and fingerprints -------------------------------------------------


_SIMPLE: Final = frozenset({str, int, type(None)})
_CACHE_SIZE: Final = 4096


class _Binder:
    """Finds the key and fingerprints the other arguments of one function."""

    def __init__(self, func: Callable[..., Any], key_param: str) -> None:
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters.values())
        kinds = inspect.Parameter
        self.key_param = key_param
        self.name = getattr(func, "__qualname__", repr(func))
        self.skip = params[0].name if params and params[0].name in ("self", "cls") else None
        self.positional = [
            p.name for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        ]
        self.var_keyword = next((p.name for p in params if p.kind is kinds.VAR_KEYWORD), None)
        self.simple = all(p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD) for p in params)
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}
        self.required = {
            p.name
            for p in params
            if p.default is p.empty and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        }
        self.known = {p.name for p in params}
        # Calls whose arguments are all str, int or None (exact types, so equal
        # tuples mean equal canonical forms: 1 == True == 1.0 cannot meet here)
        # keep their key and fingerprint: a replay then skips JSON and SHA-256.
        self.cache: dict[Any, tuple[str, str]] = {}
        if key_param not in self.known and self.var_keyword is None:
            raise TypeError(f"key_param {key_param!r} is not a parameter of {self.name}")

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        """The key and the fingerprint of one call; TypeError/ValueError before anything runs."""
        simple = _SIMPLE
        start = 1 if self.skip is not None else 0
        cache_key: Any = None
        for i in range(start, len(args)):
            if type(args[i]) not in simple:
                break
        else:
            for value in kwargs.values():
                if type(value) not in simple:
                    break
            else:
                cache_key = (args[start:], tuple(kwargs.items())) if kwargs else args[start:]
                found = self.cache.get(cache_key)
                if found is not None:
                    return found
        answer = self._bind(args, kwargs)
        if cache_key is not None:
            if len(self.cache) >= _CACHE_SIZE:
                self.cache.clear()
            self.cache[cache_key] = answer
        return answer

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        bound: dict[str, Any]
        if (
            self.simple
            and len(args) <= len(self.positional)
            and all(name in self.known for name in kwargs)
        ):
            bound = dict(zip(self.positional, args, strict=False))
            bound.update(kwargs)
            if len(bound) != len(args) + len(kwargs) or not self.required <= bound.keys():
                self.signature.bind(*args, **kwargs)  # raises the TypeError Python would
            for name, default in self.defaults.items():
                bound.setdefault(name, default)
        else:
            arguments = self.signature.bind(*args, **kwargs)
            arguments.apply_defaults()
            bound = dict(arguments.arguments)
            if self.var_keyword is not None and self.key_param not in self.known:
                extra = dict(bound.get(self.var_keyword, {}))
                if self.key_param in extra:
                    bound[self.key_param] = extra.pop(self.key_param)
                bound[self.var_keyword] = extra
        if self.key_param not in bound:
            raise TypeError(f"{self.name}() needs the idempotency key argument {self.key_param!r}")
        key = bound.pop(self.key_param)
        if type(key) is not str:
            if not isinstance(key, str):
                raise TypeError(f"{self.key_param} must be a str, got {type(key).__name__}")
            key = str(key)
        if not key:
            raise ValueError(f"{self.key_param} must be a non-empty str")
        if self.skip is not None:
            bound.pop(self.skip, None)
        return key, sha256_hex(canonical_json(bound, "arguments", fallback=type_name))


# -- the decorator -------------------------------------------------------------------

_warned: set[type] = set()
_warned_lock = threading.Lock()

_ATOMIC = ("claim", "complete", "fail", "release", "extend")


def _fast_path(store: Any) -> Callable[[str, str, float], tuple[bool, Any]] | None:
    """The in-memory store's replay shortcut, unless a subclass changed its claim."""
    from shared.resilience.idempotency.memory_store import InMemoryIdempotencyStore

    if isinstance(store, InMemoryIdempotencyStore) and (
        type(store).claim is InMemoryIdempotencyStore.claim
    ):
        return store._claim_or_result
    return None


def _has(store: Any, names: tuple[str, ...]) -> bool:
    return all(callable(getattr(store, name, None)) for name in names)


def _warn_not_atomic(store: Any) -> None:
    with _warned_lock:
        if type(store) in _warned:
            return
        _warned.add(type(store))
    warnings.warn(
        f"{type(store).__qualname__} has no atomic claim (only get/set/exists): @idempotent "
        "checks whether a result exists and stores it after the call, so two concurrent "
        "first calls with one key can both execute. Use a store with claim() "
        "(InMemoryIdempotencyStore or a durable store) where that matters.",
        RuntimeWarning,
        stacklevel=3,
    )


def idempotent(
    key_param: str = "idempotency_key",
    store: Any = None,
    ttl: float = 86400,
    raise_on_duplicate: bool = False,
    *,
    wait_timeout: float = 10.0,
    lease: float = 60.0,
    on_error: str = "release",
) -> Callable[[F], F]:
    """Executes the decorated function once per idempotency key.

    Args:
        key_param: the name of the parameter holding the key (a non-empty str).
        store: where claims and results live (an ``AtomicIdempotencyStore``, or
            the document's ``IdempotencyStore``: check-then-set, not atomic).
        ttl: seconds a result (or a kept failure) is remembered (default 24 h).
        raise_on_duplicate: raise ``DuplicateRequestError`` on a completed
            duplicate instead of returning the stored result.
        wait_timeout: seconds a concurrent duplicate waits for the first call's
            outcome before ``IdempotencyInProgressError`` (0: do not wait).
        lease: seconds a claim holds without renewal; a crashed holder's key is
            free again after it. Running calls renew it every ``lease / 3``.
        on_error: ``"release"`` (an exception frees the key, a retry executes)
            or ``"keep"`` (the key is recorded as failed; nothing re-executes
            until the key is deleted from the store: for money movements).

    Raises:
        TypeError, ValueError: a bad argument, at decoration; a bad key, at call
            time, before anything runs.
    """
    if not isinstance(key_param, str) or not key_param:
        raise TypeError(f"key_param must be a non-empty str, got {key_param!r}")
    if store is None:
        raise TypeError("store is required (for example InMemoryIdempotencyStore())")
    ttl_value = _validation.positive_finite("ttl", ttl)
    lease_value = _validation.positive_finite("lease", lease)
    wait_value = _validation.non_negative_finite("wait_timeout", wait_timeout)
    if not isinstance(raise_on_duplicate, bool):
        raise TypeError(
            f"raise_on_duplicate must be a bool, got {type(raise_on_duplicate).__name__}"
        )
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'release' or 'keep', got {on_error!r}")
    keep = on_error == "keep"
    atomic = _has(store, _ATOMIC)
    if not atomic and not (
        _has(store, ("get", "set", "exists"))
        or _has(store, ("get_async", "set_async", "exists_async"))
    ):
        raise TypeError(
            f"store must implement claim/complete/fail/release/extend or get/set/exists, "
            f"got {type(store).__name__}"
        )
    count = getattr(store, "_count_outcome", None) or _no_count

    def decorate(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@idempotent decorates a callable, got {type(func).__name__}")
        binder = _Binder(func, key_param)
        is_async = inspect.iscoroutinefunction(func)
        if atomic:
            if is_async:
                wrapper = _atomic_async(func, binder, store, count)
            else:
                wrapper = _atomic_sync(func, binder, store, count)
        else:
            _warn_not_atomic(store)
            if is_async:
                if not _has(store, ("get_async", "set_async", "exists_async")):
                    raise TypeError(
                        f"{type(store).__name__} has no get_async/set_async/exists_async "
                        "for an async function"
                    )
                wrapper = _check_then_set_async(func, binder, store, count)
            else:
                if not _has(store, ("get", "set", "exists")):
                    raise TypeError(
                        f"{type(store).__name__} has only async methods: decorate an async "
                        "function, or give the store get/set/exists"
                    )
                wrapper = _check_then_set_sync(func, binder, store, count)
        wrapped = functools.wraps(func)(wrapper)
        wrapped.store = store  # type: ignore[attr-defined]
        return cast(F, wrapped)

    # -- atomic, sync -------------------------------------------------------------

    def replay(key: str, claim: Claim, count: Callable[..., None]) -> Any:
        if claim.state is _COMPLETED:
            count("replayed")
            _on_replay(key)
            if raise_on_duplicate:
                raise DuplicateRequestError(key, claim.result)
            return claim.result
        if claim.state is _MISMATCH:
            count("mismatch")
            raise IdempotencyMismatchError(key)
        if claim.state is _IN_PROGRESS:
            count("in_progress")
            raise IdempotencyInProgressError(key, claim.retry_after or 0.0)
        count("errors")
        raise IdempotencyFailedError(key, str(claim.result))

    def store_error(key: str, exc: Exception, executed: bool) -> IdempotencyStoreError:
        return IdempotencyStoreError(key, f"{type(exc).__name__}: {exc}", executed=executed)

    def claim_sync(store: Any, key: str, fingerprint: str, count: Callable[..., None]) -> Claim:
        deadline = None
        poll = _POLL_FIRST
        while True:
            try:
                claim: Claim = store.claim(key, fingerprint, lease_value)
            except IdempotencyError:
                raise
            except Exception as exc:
                raise store_error(key, exc, False) from exc
            if claim.state is not _IN_PROGRESS:
                return claim
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait_value
            if now >= deadline:
                return claim
            time.sleep(min(poll, deadline - now, max(claim.retry_after or poll, 1e-4)))
            poll = min(poll * 2, _POLL_MAX)

    def error_text(exc: BaseException) -> str:
        return f"{type(exc).__qualname__}: {exc}"

    def settle_error_sync(store: Any, token: OwnerToken, exc: BaseException) -> None:
        try:
            if keep:
                store.fail(token, error_text(exc), ttl_value)
            else:
                store.release(token)
        except Exception as settle_exc:
            logger.error(
                "idempotency key %r: could not %s the key after %s: %r",
                token.key,
                "keep" if keep else "release",
                type(exc).__name__,
                settle_exc,
            )

    def record_sync(
        store: Any, token: OwnerToken, result: Any, watch: _Watch | None, count: Callable[..., None]
    ) -> None:
        try:
            done = store.complete(token, result, ttl_value)
        except (TypeError, ValueError):
            # The result cannot be stored (the store names its type): free the key.
            settle_error_sync(store, token, RuntimeError("unstorable result"))
            raise
        except Exception as exc:
            raise store_error(token.key, exc, True) from exc
        if not done:
            if watch is None:
                _lost_lease(store, token, "the claim was gone when the result was recorded")
            else:
                _report_lost(watch, store, token, "the claim was gone when the result was recorded")

    def _atomic_sync(
        func: Callable[..., Any], binder: _Binder, store: Any, count: Callable[..., None]
    ) -> Callable[..., Any]:
        fast = _fast_path(store)

        def call(*args: Any, **kwargs: Any) -> Any:
            key, fingerprint = binder.bind(args, kwargs)
            if fast is not None:
                done, value = fast(key, fingerprint, lease_value)
                if done:
                    count("replayed")
                    _on_replay(key)
                    if raise_on_duplicate:
                        raise DuplicateRequestError(key, value)
                    return value
                claim = value
                if claim.state is _IN_PROGRESS:
                    claim = claim_sync(store, key, fingerprint, count)
            else:
                claim = claim_sync(store, key, fingerprint, count)
            if claim.state is not _CLAIMED:
                return replay(key, claim, count)
            token = cast(OwnerToken, claim.token)
            count("executed")
            watch = _renewer.watch(store, token, lease_value)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                _renewer.unwatch(watch)
                count("errors")
                settle_error_sync(store, token, exc)
                raise
            _renewer.unwatch(watch)
            record_sync(store, token, result, watch, count)
            return result

        return call

    # -- atomic, async --------------------------------------------------------------

    def _atomic_async(
        func: Callable[..., Any], binder: _Binder, store: Any, count: Callable[..., None]
    ) -> Callable[..., Any]:
        direct = bool(getattr(store, "nonblocking", False))

        async def s_claim(key: str, fingerprint: str) -> Claim:
            try:
                if direct:
                    return store.claim(key, fingerprint, lease_value)  # type: ignore[no-any-return]
                return await store.claim_async(key, fingerprint, lease_value)  # type: ignore[no-any-return]
            except IdempotencyError:
                raise
            except Exception as exc:
                raise store_error(key, exc, False) from exc

        async def claim(key: str, fingerprint: str) -> Claim:
            deadline = None
            poll = _POLL_FIRST
            while True:
                answer = await s_claim(key, fingerprint)
                if answer.state is not _IN_PROGRESS:
                    return answer
                now = time.monotonic()
                if deadline is None:
                    deadline = now + wait_value
                if now >= deadline:
                    return answer
                await asyncio.sleep(
                    min(poll, deadline - now, max(answer.retry_after or poll, 1e-4))
                )
                poll = min(poll * 2, _POLL_MAX)

        async def settle_error(token: OwnerToken, exc: BaseException) -> None:
            try:
                if direct:
                    if keep:
                        store.fail(token, error_text(exc), ttl_value)
                    else:
                        store.release(token)
                elif keep:
                    await store.fail_async(token, error_text(exc), ttl_value)
                else:
                    await store.release_async(token)
            except Exception as settle_exc:
                logger.error(
                    "idempotency key %r: could not %s the key after %s: %r",
                    token.key,
                    "keep" if keep else "release",
                    type(exc).__name__,
                    settle_exc,
                )

        def renew_later(token: OwnerToken, state: dict[str, Any]) -> None:
            loop = asyncio.get_running_loop()

            def fire() -> None:
                state["task"] = loop.create_task(renew())

            async def renew() -> None:
                try:
                    if direct:
                        renewed = store.extend(token, lease_value)
                    else:
                        renewed = await store.extend_async(token, lease_value)
                except Exception as exc:
                    logger.warning("idempotency key %r: lease renewal failed: %r", token.key, exc)
                    renewed = True
                if state["stopped"]:
                    return
                if not renewed:
                    state["lost"] = True
                    _lost_lease(store, token, "the store no longer holds its claim")
                    return
                state["handle"] = loop.call_later(lease_value / 3, fire)

            state["handle"] = loop.call_later(lease_value / 3, fire)

        def stop_renewal(state: dict[str, Any]) -> None:
            state["stopped"] = True
            handle = state.get("handle")
            if handle is not None:
                handle.cancel()
            task = state.get("task")
            if task is not None and not task.done():
                task.cancel()

        async def record(token: OwnerToken, result: Any, lost: bool) -> None:
            try:
                if direct:
                    done = store.complete(token, result, ttl_value)
                else:
                    done = await store.complete_async(token, result, ttl_value)
            except (TypeError, ValueError):
                await settle_error(token, RuntimeError("unstorable result"))
                raise
            except Exception as exc:
                raise store_error(token.key, exc, True) from exc
            if not done and not lost:
                _lost_lease(store, token, "the claim was gone when the result was recorded")

        fast = _fast_path(store)

        async def call(*args: Any, **kwargs: Any) -> Any:
            key, fingerprint = binder.bind(args, kwargs)
            if fast is not None:
                done, value = fast(key, fingerprint, lease_value)
                if done:
                    count("replayed")
                    _on_replay(key)
                    if raise_on_duplicate:
                        raise DuplicateRequestError(key, value)
                    return value
                answer = value
                if answer.state is _IN_PROGRESS:
                    answer = await claim(key, fingerprint)
            else:
                answer = await claim(key, fingerprint)
            if answer.state is not _CLAIMED:
                return replay(key, answer, count)
            token = cast(OwnerToken, answer.token)
            count("executed")
            state: dict[str, Any] = {"stopped": False, "lost": False}
            renew_later(token, state)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                stop_renewal(state)
                count("errors")
                await settle_error(token, exc)
                raise
            stop_renewal(state)
            await record(token, result, state["lost"])
            return result

        return call

    # -- check-then-set (the document's protocol only) ---------------------------------

    def envelope(fingerprint: str, result: Any = None, failed: str | None = None) -> str:
        body: dict[str, Any] = {_MARK: 1, "fp": fingerprint}
        if failed is None:
            body["result"] = result
        else:
            body["failed"] = failed
        return codec.encode(body)

    def unwrap(key: str, fingerprint: str, raw: Any, count: Callable[..., None]) -> Any:
        try:
            body = (
                codec.decode(bytes(raw) if isinstance(raw, bytearray) else raw)
                if isinstance(raw, (str, bytes, bytearray))
                else raw
            )
        except ValueError:
            body = raw
        if type(body) is dict and body.get(_MARK) == 1:
            if body.get("fp") != fingerprint:
                count("mismatch")
                raise IdempotencyMismatchError(key)
            if "failed" in body:
                count("errors")
                raise IdempotencyFailedError(key, str(body["failed"]))
            body = body.get("result")
        count("replayed")
        _on_replay(key)
        if raise_on_duplicate:
            raise DuplicateRequestError(key, body)
        return body

    def _check_then_set_sync(
        func: Callable[..., Any], binder: _Binder, store: Any, count: Callable[..., None]
    ) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            key, fingerprint = binder.bind(args, kwargs)
            if store.exists(key):
                return unwrap(key, fingerprint, store.get(key), count)
            count("executed")
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                count("errors")
                if keep:
                    store.set(key, envelope(fingerprint, failed=error_text(exc)), ttl)
                raise
            store.set(key, envelope(fingerprint, result), ttl)
            return result

        return call

    def _check_then_set_async(
        func: Callable[..., Any], binder: _Binder, store: Any, count: Callable[..., None]
    ) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            key, fingerprint = binder.bind(args, kwargs)
            if await store.exists_async(key):
                return unwrap(key, fingerprint, await store.get_async(key), count)
            count("executed")
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                count("errors")
                if keep:
                    await store.set_async(key, envelope(fingerprint, failed=error_text(exc)), ttl)
                raise
            await store.set_async(key, envelope(fingerprint, result), ttl)
            return result

        return call

    return decorate
