"""HealthCheck: the document's subclass pattern, sub-checks, timeouts, caching, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from shared.health import CheckResult, HealthCheck, HealthReport, HealthStatus
from shared.lifecycle import graceful_shutdown

pytestmark = pytest.mark.backend_independent


@pytest.fixture(autouse=True)
def _no_shutdown_in_progress() -> Iterator[None]:
    """Readiness reads the process-wide shutdown flag: keep it clear around each test."""
    graceful_shutdown._shutdown_started.clear()
    yield
    graceful_shutdown._shutdown_started.clear()


class _Flaky:
    """A stand-in for a database or Redis client whose health a test controls."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def execute(self, query: str) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("connection refused (password=hunter2)")

    def ping(self) -> bool:
        self.calls += 1
        if not self.up:
            raise ConnectionError("down")
        return True


class MyServiceHealthCheck(HealthCheck):
    """The design document's example, as written (no ``super().__init__()``)."""

    def __init__(self, db: _Flaky, redis: _Flaky, config: object) -> None:
        self.db = db
        self.redis = redis
        self.config = config

    def check(self) -> HealthStatus:
        if not self._check_database():
            return HealthStatus.UNHEALTHY
        if not self._check_redis():
            return HealthStatus.DEGRADED
        return HealthStatus.HEALTHY

    def liveness(self) -> HealthStatus:
        return HealthStatus.HEALTHY

    def readiness(self) -> HealthStatus:
        if not self._check_database():
            return HealthStatus.UNHEALTHY
        return HealthStatus.HEALTHY

    def _check_database(self) -> bool:
        try:
            self.db.execute("SELECT 1")
            return True
        except Exception:
            return False

    def _check_redis(self) -> bool:
        try:
            self.redis.ping()
            return True
        except Exception:
            return False


def test_status_values_http_codes_and_ietf_names() -> None:
    """HEALTHY and DEGRADED answer 200, UNHEALTHY 503; pass/warn/fail in the IETF format."""
    assert [s.value for s in HealthStatus] == ["healthy", "degraded", "unhealthy"]
    assert [s.http_status for s in HealthStatus] == [200, 200, 503]
    assert [s.ietf_status for s in HealthStatus] == ["pass", "warn", "fail"]
    assert HealthStatus.worst([]) is HealthStatus.HEALTHY
    assert HealthStatus.worst([HealthStatus.DEGRADED, HealthStatus.HEALTHY]) is (
        HealthStatus.DEGRADED
    )
    with pytest.raises(TypeError, match="statuses"):
        HealthStatus.worst(["healthy"])  # type: ignore[list-item]


def test_document_example_subclass_works_as_written() -> None:
    """The document's subclass: its methods answer directly and through evaluate()."""
    db, redis = _Flaky(), _Flaky()
    health = MyServiceHealthCheck(db, redis, config={})
    assert health.check() is HealthStatus.HEALTHY
    redis.up = False
    assert health.check() is HealthStatus.DEGRADED
    db.up = False
    assert health.check() is HealthStatus.UNHEALTHY
    assert health.readiness() is HealthStatus.UNHEALTHY
    assert health.liveness() is HealthStatus.HEALTHY
    report = asyncio.run(health.evaluate("readiness"))
    assert report.status is HealthStatus.UNHEALTHY
    assert asyncio.run(health.evaluate("liveness")).status is HealthStatus.HEALTHY


def test_subclass_without_liveness_gets_a_dependency_free_default() -> None:
    """The Step 6 pattern defines check and readiness only: liveness and startup are HEALTHY."""

    class ProphetHealthCheck(HealthCheck):
        def __init__(self, db: _Flaky) -> None:
            self.db = db

        def readiness(self) -> HealthStatus:
            return HealthStatus.UNHEALTHY if not self.db.up else HealthStatus.HEALTHY

    db = _Flaky()
    db.up = False
    health = ProphetHealthCheck(db)
    assert health.liveness() is HealthStatus.HEALTHY
    assert health.startup() is HealthStatus.HEALTHY
    assert asyncio.run(health.evaluate("liveness")).status is HealthStatus.HEALTHY
    assert asyncio.run(health.evaluate("readiness")).status is HealthStatus.UNHEALTHY


def test_registered_checks_affect_only_their_probes() -> None:
    """Readiness checks by default; liveness depends on none unless asked."""
    health = HealthCheck()
    health.add_check("db", lambda: False)
    health.add_check("loop_lag", lambda: True, affects="liveness")
    health.add_check("warmup", lambda: HealthStatus.UNHEALTHY, affects="startup")
    assert health.readiness() is HealthStatus.UNHEALTHY
    assert health.liveness() is HealthStatus.HEALTHY
    assert health.startup() is HealthStatus.UNHEALTHY
    assert health.check() is HealthStatus.UNHEALTHY
    report = health.report("liveness")
    assert list(report.checks) == ["loop_lag"]
    assert set(health.report("health").checks) == {"db", "loop_lag", "warmup"}
    assert health.check_names == ("db", "loop_lag", "warmup")


def test_both_and_iterables_of_probes() -> None:
    """``affects="both"`` is liveness and readiness; an iterable names any set."""
    health = HealthCheck()
    health.add_check("a", lambda: False, affects="both")
    health.add_check("b", lambda: False, affects=("startup", "readiness"))
    assert set(health.report("liveness").checks) == {"a"}
    assert set(health.report("readiness").checks) == {"a", "b"}
    assert set(health.report("startup").checks) == {"b"}


def test_outcomes_map_to_statuses() -> None:
    """None and True are healthy, False unhealthy, a status itself; anything else is an error."""
    health = HealthCheck(cache_ttl=0)
    health.add_check("none", lambda: None)
    health.add_check("true", lambda: True)
    health.add_check("degraded", lambda: HealthStatus.DEGRADED)
    health.add_check("odd", lambda: "yes")
    report = health.report()
    statuses = {name: r.status for name, r in report.checks.items()}
    assert statuses == {
        "none": HealthStatus.HEALTHY,
        "true": HealthStatus.HEALTHY,
        "degraded": HealthStatus.DEGRADED,
        "odd": HealthStatus.UNHEALTHY,
    }
    assert "returned str" in (report.checks["odd"].output or "")
    assert report.checks["none"].output is None


def test_non_critical_failure_degrades_instead_of_failing() -> None:
    """critical=False: the entry says unhealthy, the probe only DEGRADED (still 200)."""
    health = HealthCheck()
    health.add_check("cache", lambda: False, critical=False)
    health.add_check("db", lambda: True)
    report = health.report("readiness")
    assert report.checks["cache"].status is HealthStatus.UNHEALTHY
    assert report.status is HealthStatus.DEGRADED
    assert report.status.http_status == 200


def test_checks_run_concurrently() -> None:
    """Three 0.5 s checks (two sync, one async) answer in about 0.5 s, not 1.5 s."""

    async def slow_async() -> bool:
        await asyncio.sleep(0.5)
        return True

    health = HealthCheck()
    health.add_check("a", lambda: time.sleep(0.5) or True, timeout=2)
    health.add_check("b", lambda: time.sleep(0.5) or True, timeout=2)
    health.add_check("c", slow_async, timeout=2)
    started = time.monotonic()
    report = health.report()
    elapsed = time.monotonic() - started
    assert report.status is HealthStatus.HEALTHY
    # sequential would be 1.5 s; the rest of the margin is for a loaded 2-core host
    assert 0.49 <= elapsed < 1.3


def test_results_are_cached_for_the_ttl() -> None:
    """Probes inside the TTL reuse the result: a dependency is not hammered."""
    db = _Flaky()
    health = HealthCheck(cache_ttl=0.3)
    health.add_check("db", db.ping)
    for _ in range(20):
        assert health.readiness() is HealthStatus.HEALTHY
    assert db.calls == 1
    db.up = False
    assert health.readiness() is HealthStatus.HEALTHY  # cached
    time.sleep(0.35)
    assert health.readiness() is HealthStatus.UNHEALTHY
    assert db.calls == 2


def test_a_hanging_check_times_out_and_never_starts_twice() -> None:
    """A hung sync check holds one thread; later probes answer at once and say it timed out."""
    release = threading.Event()
    calls = []

    def hang() -> bool:
        calls.append(1)
        release.wait(10)
        return True

    health = HealthCheck(cache_ttl=0.05)
    health.add_check("hang", hang, timeout=0.6)
    try:
        started = time.monotonic()
        report = health.report("readiness")
        assert 0.59 <= time.monotonic() - started < 2.0
        assert report.status is HealthStatus.UNHEALTHY
        assert report.checks["hang"].output == "timed out after 0.6 s"
        time.sleep(0.1)
        for _ in range(5):
            started = time.monotonic()
            assert health.readiness() is HealthStatus.UNHEALTHY
            # not its 0.6 s timeout again (the margin is for a loaded 2-core host)
            assert time.monotonic() - started < 0.5
        threads = [t for t in threading.enumerate() if t.name == "shared-health-check:hang"]
        assert len(threads) == 1
        assert len(calls) == 1
    finally:
        release.set()
    deadline = time.monotonic() + 2
    while health.readiness() is not HealthStatus.HEALTHY:
        assert time.monotonic() < deadline, "the recovered check's result never replaced it"
        time.sleep(0.02)


def test_an_async_check_that_hangs_is_cancelled_at_its_timeout() -> None:
    """An async check past its timeout is cancelled: the next probe after the TTL reruns it."""
    cancelled = []
    runs = []

    async def hang() -> bool:
        runs.append(1)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return True

    health = HealthCheck(cache_ttl=0.05)
    health.add_check("hang", hang, timeout=0.1)
    report = health.report("readiness")
    assert report.checks["hang"].output == "timed out after 0.1 s"
    assert cancelled == [1]
    time.sleep(0.08)
    health.report("readiness")
    assert len(runs) == 2


def test_a_raising_check_reports_the_type_only_unless_verbose() -> None:
    """No stack trace or message (which may hold secrets) unless verbose=True."""
    db = _Flaky()
    db.up = False
    quiet = HealthCheck()
    quiet.add_check("db", db.ping)
    entry = quiet.report().checks["db"]
    assert entry.status is HealthStatus.UNHEALTHY
    assert entry.output == "raised ConnectionError"
    loud = HealthCheck(verbose=True)
    loud.add_check("db", db.ping)
    output = loud.report().checks["db"].output or ""
    assert "ConnectionError: down" in output
    assert "Traceback" in output


def test_a_raising_subclass_method_is_unhealthy_with_an_entry() -> None:
    """An overridden probe method that raises or hangs: UNHEALTHY, and the entry says why."""

    class Broken(HealthCheck):
        probe_timeout = 0.1

        def readiness(self) -> HealthStatus:
            raise RuntimeError("boom")

        def liveness(self) -> HealthStatus:
            time.sleep(2.0)  # far beyond probe_timeout: the bound below has room
            return HealthStatus.HEALTHY

    health = Broken()
    ready = asyncio.run(health.evaluate("readiness"))
    assert ready.status is HealthStatus.UNHEALTHY
    assert ready.checks["readiness"].output == "raised RuntimeError"
    started = time.monotonic()
    live = asyncio.run(health.evaluate("liveness"))
    assert time.monotonic() - started < 1.5
    assert live.checks["liveness"].output == "timed out after 0.1 s"


def test_async_subclass_methods_are_awaited() -> None:
    """An ``async def readiness`` override is awaited on the serving loop."""

    class AsyncHealth(HealthCheck):
        async def readiness(self) -> HealthStatus:  # type: ignore[override]
            await asyncio.sleep(0)
            return HealthStatus.DEGRADED

    report = asyncio.run(AsyncHealth().evaluate("readiness"))
    assert report.status is HealthStatus.DEGRADED


def test_sync_callable_returning_an_awaitable_is_awaited_on_the_loop() -> None:
    """``lambda: client.ping()`` on an asyncio client: the coroutine runs on the asking loop."""

    async def ping() -> bool:
        return False

    health = HealthCheck()
    health.add_check("redis", lambda: ping())
    assert asyncio.run(health.evaluate("readiness")).status is HealthStatus.UNHEALTHY


def test_readiness_is_unhealthy_during_shutdown_but_liveness_is_not() -> None:
    """The process-wide shutdown flag makes readiness 503 with a ``shutdown`` entry."""
    health = HealthCheck()
    health.add_check("db", lambda: True)
    graceful_shutdown._shutdown_started.set()
    ready = asyncio.run(health.evaluate("readiness"))
    assert ready.status is HealthStatus.UNHEALTHY
    assert ready.checks["shutdown"].output == "the service is shutting down"
    assert asyncio.run(health.evaluate("liveness")).status is HealthStatus.HEALTHY


def test_concurrent_probes_share_one_run() -> None:
    """Twenty threads probing at once run a slow check once (single flight)."""
    runs = []

    def slow() -> bool:
        runs.append(1)
        time.sleep(0.1)
        return True

    health = HealthCheck()
    health.add_check("slow", slow)
    results: list[HealthReport] = []
    threads = [
        threading.Thread(target=lambda: results.append(health.report("readiness")))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(results) == 20
    assert all(r.status is HealthStatus.HEALTHY for r in results)
    assert runs == [1]


def test_remove_check() -> None:
    """A removed check no longer counts."""
    health = HealthCheck()
    health.add_check("db", lambda: False)
    health.remove_check("db")
    assert health.readiness() is HealthStatus.HEALTHY
    with pytest.raises(KeyError):
        health.remove_check("db")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "", "fn": bool}, TypeError, "name"),
        ({"name": 3, "fn": bool}, TypeError, "name"),
        ({"name": "x", "fn": 3}, TypeError, "fn must be callable"),
        ({"name": "x", "fn": bool, "timeout": 0}, ValueError, "timeout"),
        ({"name": "x", "fn": bool, "timeout": float("nan")}, ValueError, "timeout"),
        ({"name": "x", "fn": bool, "timeout": float("inf")}, ValueError, "timeout"),
        ({"name": "x", "fn": bool, "affects": "everything"}, ValueError, "affects"),
        ({"name": "x", "fn": bool, "affects": ()}, ValueError, "affects"),
        ({"name": "x", "fn": bool, "affects": 3}, TypeError, "affects"),
        ({"name": "x", "fn": bool, "critical": 1}, TypeError, "critical"),
        ({"name": "x", "fn": bool, "cache_ttl": -1}, ValueError, "cache_ttl"),
    ],
)
def test_bad_registrations_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """Bad input to add_check is a clear error naming the parameter."""
    name = kwargs.pop("name")
    fn = kwargs.pop("fn")
    with pytest.raises(error, match=match):
        HealthCheck().add_check(name, fn, **kwargs)  # type: ignore[arg-type]


def test_duplicate_names_and_bad_config_are_refused() -> None:
    """A name registers once; the constructor validates its fields; probes are named."""
    health = HealthCheck()
    health.add_check("db", bool)
    with pytest.raises(ValueError, match="already registered"):
        health.add_check("db", bool)
    with pytest.raises(ValueError, match="cache_ttl"):
        HealthCheck(cache_ttl=-1)
    with pytest.raises(ValueError, match="probe_timeout"):
        HealthCheck(probe_timeout=0)
    with pytest.raises(TypeError, match="verbose"):
        HealthCheck(verbose=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probe"):
        health.report("ready")  # type: ignore[arg-type]


def test_check_result_defaults() -> None:
    """A CheckResult carries its observation time."""
    before = time.time()
    result = CheckResult("db", HealthStatus.HEALTHY)
    assert result.output is None
    assert before <= result.observed_at <= time.time()


def test_overridden_method_and_registered_checks_combine() -> None:
    """A subclass's readiness and its registered checks both count: the worst wins."""

    class Service(HealthCheck):
        def readiness(self) -> HealthStatus:
            return HealthStatus.DEGRADED

    health = Service()
    health.add_check("db", lambda: True)
    report = asyncio.run(health.evaluate("readiness"))
    assert report.status is HealthStatus.DEGRADED
    assert set(report.checks) == {"db", "readiness"}  # the method's own entry: not healthy
    assert report.checks["readiness"].output == "reported degraded"
    health.add_check("cache", lambda: False)
    report = asyncio.run(health.evaluate("readiness"))
    assert report.status is HealthStatus.UNHEALTHY
    assert report.checks["cache"].status is HealthStatus.UNHEALTHY


def test_a_cancelled_probe_leaves_the_check_running_for_the_next_one() -> None:
    """Cancelling a probe that waits does not cancel the shared run; the next probe gets it."""
    runs: list[int] = []

    async def slow() -> bool:
        runs.append(1)
        await asyncio.sleep(0.1)
        return True

    health = HealthCheck()
    health.add_check("slow", slow, timeout=2)

    async def main() -> HealthReport:
        first = asyncio.create_task(health.evaluate("readiness"))
        await asyncio.sleep(0.02)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await health.evaluate("readiness")

    report = asyncio.run(main())
    assert report.status is HealthStatus.HEALTHY
    assert runs == [1]


def test_a_check_calling_sys_exit_is_a_failure_not_a_crash() -> None:
    """``sys.exit()`` in a sync or async check is UNHEALTHY; the next run starts normally."""
    import sys

    async def exits_async() -> bool:
        sys.exit(2)

    health = HealthCheck(cache_ttl=0)
    health.add_check("sync", lambda: sys.exit(1))
    health.add_check("async", exits_async)
    for _ in range(2):
        report = health.report()
        assert report.checks["sync"].output == "raised SystemExit"
        assert report.checks["async"].output == "raised SystemExit"


def test_registering_while_probing_from_threads() -> None:
    """add_check and remove_check while other threads probe: no error, each probe consistent."""
    health = HealthCheck(cache_ttl=0)
    health.add_check("base", lambda: True)
    errors: list[BaseException] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            try:
                report = health.report("readiness")
                assert "base" in report.checks
            except BaseException as exc:
                errors.append(exc)
                return

    probers = [threading.Thread(target=probe) for _ in range(4)]
    for prober in probers:
        prober.start()
    for index in range(50):
        health.add_check(f"extra{index}", lambda: True)
        health.remove_check(f"extra{index}")
    stop.set()
    for prober in probers:
        prober.join(5)
    assert errors == []
