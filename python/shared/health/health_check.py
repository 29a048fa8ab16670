"""``HealthCheck``: the base class (and protocol) behind the probes.

Two ways to use it, which combine:

* subclass it and override ``check()``, ``liveness()``, ``readiness()`` or
  ``startup()`` (the design document's pattern); the server runs an
  overridden method in a worker thread, bounded by ``probe_timeout``;
* register named sub-checks, sync or async callables, with ``add_check(name,
  fn, timeout=..., affects=...)``. The probes run the checks they concern
  concurrently, each bounded by its timeout, and cache each result for
  ``cache_ttl`` seconds so that frequent probes cannot hammer a dependency.

A check in flight is never started twice: a check that hangs holds one thread
(or one task), and every probe after its timeout answers at once with an entry
that says it timed out. When it finally returns, its result replaces the
timeout in the cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias, runtime_checkable

from shared import _validation
from shared.health.health_status import HealthStatus

__all__ = [
    "PROBES",
    "CheckFunction",
    "CheckResult",
    "HealthCheck",
    "HealthCheckProtocol",
    "HealthReport",
    "Probe",
]

logger = logging.getLogger("shared.health")

Probe: TypeAlias = Literal["health", "liveness", "readiness", "startup"]
#: The probes a sub-check can affect (``/health`` runs every registered check).
PROBES: Final = ("liveness", "readiness", "startup")
_ALL_PROBES: Final = ("health", *PROBES)
_METHOD_OF: Final = {
    "health": "check",
    "liveness": "liveness",
    "readiness": "readiness",
    "startup": "startup",
}

#: What a sub-check may return: a status, a bool (False is a failure) or None
#: (healthy). Raising is a failure too.
CheckOutcome: TypeAlias = "HealthStatus | bool | None"
CheckFunction: TypeAlias = Callable[[], "CheckOutcome | Awaitable[CheckOutcome]"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one sub-check: its status and, when it failed, why.

    ``output`` says why a check is not healthy ("timed out after 0.5 s",
    "raised ConnectionError"); it carries the exception's message and stack
    trace only when the health check is ``verbose``. ``duration`` is in
    seconds; ``observed_at`` is a ``time.time()`` timestamp.
    """

    name: str
    status: HealthStatus
    output: str | None = None
    duration: float = 0.0
    observed_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """A probe's answer: the combined status and the sub-checks behind it."""

    status: HealthStatus
    checks: Mapping[str, CheckResult]
    timestamp: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    fn: Callable[[], Any]
    is_async: bool
    timeout: float
    probes: frozenset[str]
    critical: bool
    cache_ttl: float | None
    visible: bool = True


class _Flight:
    __slots__ = ("future", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.future: concurrent.futures.Future[CheckResult] = concurrent.futures.Future()


class _State:
    """Per-instance state, created on first use (subclasses need not call ``__init__``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.specs: dict[str, _Spec] = {}
        self.cache: dict[str, tuple[CheckResult, float]] = {}
        self.flights: dict[str, _Flight] = {}
        self.method_specs: dict[str, _Spec] = {}


_STATE_LOCK = threading.Lock()


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(type(fn).__call__)


def _probes_of(affects: str | Iterable[str]) -> frozenset[str]:
    if isinstance(affects, str):
        items: tuple[str, ...] = ("liveness", "readiness") if affects == "both" else (affects,)
    else:
        try:
            items = tuple(affects)
        except TypeError:
            raise TypeError(
                f"affects must be a probe name or an iterable of them, got {affects!r}"
            ) from None
    if not items:
        raise ValueError("affects must name at least one probe")
    for item in items:
        if item not in PROBES:
            raise ValueError(f"affects must name probes among {PROBES} (or 'both'), got {item!r}")
    return frozenset(items)


@runtime_checkable
class HealthCheckProtocol(Protocol):
    """What a health server needs: the document's three probe methods.

    ``HealthServer`` serves any object with them (wrapped in a ``HealthCheck``
    that calls them); subclassing ``HealthCheck`` adds sub-checks, caching
    and ``startup()``.
    """

    def check(self) -> HealthStatus: ...

    def liveness(self) -> HealthStatus: ...

    def readiness(self) -> HealthStatus: ...


class HealthCheck:
    """Base class of a service's health: override the probe methods, register checks, or both.

    Args (all keyword-only, all optional; None keeps the class attribute, so a
    subclass may set them as class attributes and need not call
    ``super().__init__()``):
        cache_ttl: seconds a sub-check's result is reused (default 1.0; 0 disables).
        verbose: put exception messages and stack traces in failed entries
            (default False: only the exception's type).
        probe_timeout: seconds the server waits for an overridden probe method
            (default 0.9, under Kubernetes' default ``timeoutSeconds: 1``).

    The default ``liveness()`` runs only the checks registered with
    ``affects="liveness"`` (none by default), so it never depends on a
    dependency; ``readiness()`` runs the checks that affect readiness (the
    default of ``add_check``), ``startup()`` those that affect startup, and
    ``check()`` all of them.
    """

    cache_ttl: float = 1.0
    verbose: bool = False
    probe_timeout: float = 0.9

    def __init__(
        self,
        *,
        cache_ttl: float | None = None,
        verbose: bool | None = None,
        probe_timeout: float | None = None,
    ) -> None:
        # None keeps the class attribute, so a subclass may set its defaults there.
        if cache_ttl is not None:
            self.cache_ttl = _validation.non_negative_finite("cache_ttl", cache_ttl)
        if verbose is not None:
            if not isinstance(verbose, bool):
                raise TypeError(f"verbose must be a bool, got {type(verbose).__name__}")
            self.verbose = verbose
        if probe_timeout is not None:
            self.probe_timeout = _validation.positive_finite("probe_timeout", probe_timeout)

    # -- registration -----------------------------------------------------------------

    def _health_state(self) -> _State:
        state: _State | None = self.__dict__.get("_shared_health_state")
        if state is None:
            with _STATE_LOCK:
                state = self.__dict__.setdefault("_shared_health_state", _State())
        assert state is not None
        return state

    def add_check(
        self,
        name: str,
        fn: CheckFunction,
        *,
        timeout: float = 0.5,
        affects: str | Iterable[str] = "readiness",
        critical: bool = True,
        cache_ttl: float | None = None,
    ) -> CheckFunction:
        """Registers a named sub-check; returns ``fn``.

        Args:
            name: the key of its entry in the response's ``checks``.
            fn: a sync or async callable with no arguments returning a
                ``HealthStatus``, a bool (False is UNHEALTHY) or None (HEALTHY);
                raising is UNHEALTHY. Sync checks run in a worker thread.
            timeout: seconds before the probe stops waiting and reports it
                UNHEALTHY ("timed out"); an async check is also cancelled.
            affects: ``"readiness"`` (default), ``"liveness"``, ``"startup"``,
                ``"both"`` (liveness and readiness) or an iterable of probes.
            critical: when False, a failure makes the probe DEGRADED (200)
                instead of UNHEALTHY (503); the entry still says unhealthy.
            cache_ttl: seconds its result is reused; None means the health
                check's ``cache_ttl``.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        seconds = _validation.positive_finite("timeout", timeout)
        probes = _probes_of(affects)
        if not isinstance(critical, bool):
            raise TypeError(f"critical must be a bool, got {type(critical).__name__}")
        ttl = None if cache_ttl is None else _validation.non_negative_finite("cache_ttl", cache_ttl)
        spec = _Spec(name, fn, _is_async_callable(fn), seconds, probes, critical, ttl)
        state = self._health_state()
        with state.lock:
            if name in state.specs:
                raise ValueError(f"a check named {name!r} is already registered")
            state.specs[name] = spec
        return fn

    def remove_check(self, name: str) -> None:
        """Unregisters a sub-check (KeyError if there is none of that name)."""
        state = self._health_state()
        with state.lock:
            del state.specs[name]
            state.cache.pop(name, None)

    @property
    def check_names(self) -> tuple[str, ...]:
        """The registered sub-checks, in registration order."""
        state = self._health_state()
        with state.lock:
            return tuple(state.specs)

    # -- the document's probe methods ---------------------------------------------------

    def check(self) -> HealthStatus:
        """Overall health: the worst of every registered check (HEALTHY if none)."""
        return self._run_registered("health").status

    def liveness(self) -> HealthStatus:
        """Is the process alive? Only checks registered with ``affects="liveness"``."""
        return self._run_registered("liveness").status

    def readiness(self) -> HealthStatus:
        """Can it take traffic? The checks that affect readiness."""
        return self._run_registered("readiness").status

    def startup(self) -> HealthStatus:
        """Has it started? The checks that affect startup (HEALTHY if none)."""
        return self._run_registered("startup").status

    # -- evaluation ---------------------------------------------------------------------

    def report(self, probe: Probe = "health") -> HealthReport:
        """A probe's full answer, from any thread (runs async checks on a helper loop)."""
        _check_probe(probe)
        return _run_on_helper_loop(self.evaluate(probe))

    async def evaluate(self, probe: Probe = "health") -> HealthReport:
        """A probe's full answer on the running loop: what the server serves.

        An overridden probe method runs in a worker thread (bounded by
        ``probe_timeout``, cached like a sub-check) while the registered checks
        of the probe run here, concurrently; the report's status is the worst
        of them. During a graceful shutdown,
        ``readiness`` is UNHEALTHY with a ``shutdown`` entry.
        """
        _check_probe(probe)
        method_name = _METHOD_OF[probe]
        overridden = getattr(type(self), method_name) is not getattr(HealthCheck, method_name)
        if overridden:
            # The overridden method and the registered checks of this probe, together.
            spec = self._method_spec(probe, method_name)
            method_result, registered = await asyncio.gather(
                self._result_for(spec), self._evaluate_registered(probe)
            )
            checks = dict(registered.checks)
            if method_result.output is not None:
                checks[probe] = method_result
            status = method_result.status
            if registered.status.severity > status.severity:
                status = registered.status
            report = HealthReport(status, checks)
        else:
            report = await self._evaluate_registered(probe)
        if probe == "readiness" and _shutdown_in_progress():
            checks = dict(report.checks)
            checks["shutdown"] = CheckResult(
                "shutdown", HealthStatus.UNHEALTHY, "the service is shutting down"
            )
            report = HealthReport(HealthStatus.UNHEALTHY, checks, report.timestamp)
        return report

    def _run_registered(self, probe: Probe) -> HealthReport:
        state = self._health_state()
        with state.lock:
            empty = not any(probe == "health" or probe in s.probes for s in state.specs.values())
        if empty:
            return HealthReport(HealthStatus.HEALTHY, {})
        return _run_on_helper_loop(self._evaluate_registered(probe))

    async def _evaluate_registered(self, probe: str) -> HealthReport:
        state = self._health_state()
        with state.lock:
            specs = [s for s in state.specs.values() if probe == "health" or probe in s.probes]
        if not specs:
            return HealthReport(HealthStatus.HEALTHY, {})
        if len(specs) == 1:
            results: list[CheckResult] = [await self._result_for(specs[0])]
        else:
            results = list(await asyncio.gather(*(self._result_for(s) for s in specs)))
        status = HealthStatus.HEALTHY
        for spec, result in zip(specs, results, strict=True):
            effect = result.status
            if not spec.critical and effect is HealthStatus.UNHEALTHY:
                effect = HealthStatus.DEGRADED
            if effect.severity > status.severity:
                status = effect
        return HealthReport(status, {r.name: r for r in results})

    def _method_spec(self, probe: str, method_name: str) -> _Spec:
        state = self._health_state()
        spec = state.method_specs.get(probe)
        timeout = _validation.positive_finite("probe_timeout", self.probe_timeout)
        if spec is None or spec.timeout != timeout:
            fn = getattr(self, method_name)
            spec = _Spec(probe, fn, _is_async_callable(fn), timeout, frozenset(), True, None, False)
            state.method_specs[probe] = spec
        return spec

    async def _result_for(self, spec: _Spec) -> CheckResult:
        state = self._health_state()
        key = spec.name if spec.visible else f"\0{spec.name}"
        ttl = self.cache_ttl if spec.cache_ttl is None else spec.cache_ttl
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        with state.lock:
            cached = state.cache.get(key)
            if cached is not None and now - cached[1] < ttl:
                return cached[0]
            flight = state.flights.get(key)
            if flight is None:
                flight = _Flight()
                state.flights[key] = flight
                start = True
            else:
                start = False
        if start:
            self._start_flight(spec, key, flight, loop)
        remaining = flight.started + spec.timeout - time.monotonic()
        if not flight.future.done() and remaining > 0:
            await asyncio.wait([_waiter(flight.future, loop)], timeout=remaining)
        if flight.future.done():
            return flight.future.result()
        running_for = time.monotonic() - flight.started
        output = f"timed out after {spec.timeout:g} s"
        if running_for > spec.timeout * 1.5:
            output += f" (still running after {running_for:.1f} s)"
        result = CheckResult(spec.name, HealthStatus.UNHEALTHY, output, running_for)
        with state.lock:
            if flight.future.done():
                return flight.future.result()
            previous = state.cache.get(key)
            state.cache[key] = (result, time.monotonic())
        if previous is None or previous[0].status is not HealthStatus.UNHEALTHY:
            logger.warning("health check %r %s", spec.name, output)
        return result

    def _start_flight(
        self, spec: _Spec, key: str, flight: _Flight, loop: asyncio.AbstractEventLoop
    ) -> None:
        def finish(result: CheckResult) -> None:
            state = self._health_state()
            with state.lock:
                previous = state.cache.get(key)
                state.cache[key] = (result, time.monotonic())
                if state.flights.get(key) is flight:
                    del state.flights[key]
                # Under the lock: a waiter that saw the flight unfinished caches its
                # "timed out" entry only while the future is still pending.
                flight.future.set_result(result)
            old = None if previous is None else previous[0].status
            if result.status is not old and (
                old is not None or result.status is not HealthStatus.HEALTHY
            ):
                logger.log(
                    logging.INFO if result.status is HealthStatus.HEALTHY else logging.WARNING,
                    "health check %r is %s%s",
                    spec.name,
                    result.status.value,
                    "" if result.output is None else f": {result.output.splitlines()[0]}",
                )

        if spec.is_async:
            task = loop.create_task(self._run_async(spec, flight.started))
            handle = loop.call_at(loop.time() + spec.timeout, task.cancel)

            def done(task: asyncio.Task[CheckResult]) -> None:
                handle.cancel()
                finish(task.result())

            task.add_done_callback(done)
        else:
            thread = threading.Thread(
                target=lambda: finish(self._run_sync(spec, flight.started, loop)),
                name=f"shared-health-check:{spec.name}",
                daemon=True,
            )
            thread.start()

    async def _run_async(self, spec: _Spec, started: float) -> CheckResult:
        try:
            outcome = await spec.fn()
        except asyncio.CancelledError:
            return CheckResult(
                spec.name,
                HealthStatus.UNHEALTHY,
                f"timed out after {spec.timeout:g} s",
                time.monotonic() - started,
            )
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A check's sys.exit() is its failure: it must not end the server's loop
            # or leave its run unfinished (which would report "timed out" forever).
            return self._failure(spec, exc, started)
        return self._interpret(spec, outcome, started)

    def _run_sync(
        self, spec: _Spec, started: float, loop: asyncio.AbstractEventLoop
    ) -> CheckResult:
        try:
            outcome = spec.fn()
            if inspect.isawaitable(outcome):
                # A sync callable that returned an awaitable (``lambda: client.ping()``
                # on an asyncio client): await it on the loop that asked.
                remaining = max(0.0, started + spec.timeout - time.monotonic())
                future = asyncio.run_coroutine_threadsafe(_await(outcome), loop)
                try:
                    outcome = future.result(timeout=remaining)
                except concurrent.futures.TimeoutError:
                    future.cancel()
                    return CheckResult(
                        spec.name,
                        HealthStatus.UNHEALTHY,
                        f"timed out after {spec.timeout:g} s",
                        time.monotonic() - started,
                    )
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            # A check's sys.exit() is its failure: it must not end the server's loop
            # or leave its run unfinished (which would report "timed out" forever).
            return self._failure(spec, exc, started)
        return self._interpret(spec, outcome, started)

    def _failure(self, spec: _Spec, exc: BaseException, started: float) -> CheckResult:
        if self.verbose:
            output = "".join(traceback.format_exception(exc)).rstrip()
        else:
            output = f"raised {type(exc).__name__}"
        if self.verbose or logger.isEnabledFor(logging.DEBUG):
            logger.debug("health check %r raised", spec.name, exc_info=exc)
        return CheckResult(spec.name, HealthStatus.UNHEALTHY, output, time.monotonic() - started)

    def _interpret(self, spec: _Spec, outcome: object, started: float) -> CheckResult:
        duration = time.monotonic() - started
        if isinstance(outcome, HealthStatus):
            output = None if outcome is HealthStatus.HEALTHY else f"reported {outcome.value}"
            return CheckResult(spec.name, outcome, output, duration)
        if outcome is None or outcome is True:
            return CheckResult(spec.name, HealthStatus.HEALTHY, None, duration)
        if outcome is False:
            return CheckResult(spec.name, HealthStatus.UNHEALTHY, "returned False", duration)
        return CheckResult(
            spec.name,
            HealthStatus.UNHEALTHY,
            f"returned {type(outcome).__name__}, not a HealthStatus, bool or None",
            duration,
        )


def _waiter(
    future: concurrent.futures.Future[CheckResult], loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    """An asyncio future on ``loop`` done when ``future`` is (quietly, if the loop closed)."""
    waiter: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def done(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while it waited
            loop.call_soon_threadsafe(resolve)

    future.add_done_callback(done)
    return waiter


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _check_probe(probe: object) -> None:
    if probe not in _ALL_PROBES:
        raise ValueError(f"probe must be one of {_ALL_PROBES}, got {probe!r}")


def _shutdown_in_progress() -> bool:
    # Imported on first use: shared.lifecycle does not import shared.health.
    from shared.lifecycle.graceful_shutdown import _shutdown_started

    global _shutdown_in_progress
    _shutdown_in_progress = _shutdown_started.is_set
    return _shutdown_started.is_set()


# -- a helper event loop for the sync API ---------------------------------------------------

_helper_lock = threading.Lock()
_helper_loop: asyncio.AbstractEventLoop | None = None


def _helper() -> asyncio.AbstractEventLoop:
    global _helper_loop
    with _helper_lock:
        if _helper_loop is None or _helper_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="shared-health-loop", daemon=True
            ).start()
            _helper_loop = loop
        return _helper_loop


def _run_on_helper_loop(coro: Any) -> HealthReport:
    loop = _helper()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("a health check's sync API cannot be called from an async check")
    result: HealthReport = asyncio.run_coroutine_threadsafe(coro, loop).result()
    return result


class _Delegating(HealthCheck):
    """A ``HealthCheck`` over an object that only follows ``HealthCheckProtocol``."""

    def __init__(self, target: HealthCheckProtocol) -> None:
        self._target = target

    def check(self) -> HealthStatus:
        return self._target.check()

    def liveness(self) -> HealthStatus:
        return self._target.liveness()

    def readiness(self) -> HealthStatus:
        return self._target.readiness()


def as_health_check(target: object) -> HealthCheck:
    """``target`` itself if it is a ``HealthCheck``, else a wrapper calling its probe methods."""
    if isinstance(target, HealthCheck):
        return target
    if isinstance(target, HealthCheckProtocol):
        return _Delegating(target)
    raise TypeError(
        "health_check must be a HealthCheck or have check(), liveness() and readiness(), "
        f"got {type(target).__name__}"
    )
