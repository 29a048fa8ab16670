# The contract of the Rust extension `shared._native` (checked by mypy.stubtest).
# `shared._pure` implements the same names with the same signatures.
from typing import Any, Callable, Final, Optional, Protocol, TypeVar, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "ABI3",
    "BUILD_PROFILE",
    "Backoff",
    "CircuitBreakerCore",
    "RetryBudget",
    "RetryCore",
    "RetryingCall",
    "__version__",
    "monotonic_ns",
]

_T = TypeVar("_T")

__version__: Final[str]
BUILD_PROFILE: Final[str]
ABI3: Final[bool]

def monotonic_ns() -> int: ...

class _Clock(Protocol):
    def now_ns(self) -> int: ...

@final
class Backoff:
    def __new__(
        cls,
        strategy: str = "exponential",
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        exponential_base: float = 2.0,
        jitter: str = "none",
        seed: Optional[int] = None,
    ) -> Backoff: ...
    def delay(self, attempt: int, previous: float = 0.0) -> float: ...

@disjoint_base
class RetryBudget:
    def __new__(
        cls,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        ttl: float = 10.0,
        *,
        clock: Optional[_Clock] = None,
    ) -> Self: ...
    def record_call(self) -> None: ...
    def try_retry(self) -> bool: ...
    def available(self) -> float: ...

@disjoint_base
class RetryCore:
    def __new__(
        cls,
        *,
        budget: Optional[RetryBudget] = None,
        clock: Optional[_Clock] = None,
        track_start: bool = False,
    ) -> Self: ...
    def execute(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...
    def begin_call(self) -> int: ...
    def now_ns(self) -> int: ...
    def record_retry(self) -> None: ...
    def record_give_up(self) -> None: ...
    @property
    def calls(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def give_ups(self) -> int: ...
    @property
    def budget(self) -> Optional[RetryBudget]: ...
    @property
    def clock(self) -> Optional[_Clock]: ...

@disjoint_base
class RetryingCall:
    def __new__(cls, retry: RetryCore, func: Callable[..., Any]) -> Self: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    @property
    def retry(self) -> RetryCore: ...

@disjoint_base
class CircuitBreakerCore:
    def __new__(
        cls,
        name: str,
        *,
        failure_threshold: int = 5,
        success_threshold: int = 2,
        timeout: float = 60.0,
        expected_exceptions: tuple[type[BaseException], ...] | None = None,
        ignore_exceptions: tuple[type[BaseException], ...] | None = None,
        half_open_max_calls: int = 1,
        sliding_window: float | None = None,
        minimum_calls: int = 100,
        failure_rate_threshold: float = 0.5,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        is_failure_result: Callable[[Any], object] | None = None,
        on_state_change: Callable[[Any, str, str], object] | None = None,
        clock: _Clock | None = None,
    ) -> Self: ...
    def call(self, func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T: ...
    def _admit(self) -> int: ...
    def _record_success(self, permit: int) -> None: ...
    def _record_result(self, permit: int, result: object) -> None: ...
    def _record_error(self, permit: int, error: BaseException) -> None: ...
    def reset(self) -> None: ...
    def force_open(self) -> None: ...
    def counters(self) -> dict[str, int]: ...
    @property
    def name(self) -> str: ...
    @property
    def _state_name(self) -> str: ...
    @property
    def is_forced_open(self) -> bool: ...
    @property
    def failure_count(self) -> int: ...
    @property
    def success_count(self) -> int: ...
    @property
    def last_failure_time(self) -> float | None: ...
    @property
    def timeout(self) -> float: ...
    @property
    def expected_exceptions(self) -> tuple[type[BaseException], ...]: ...
    @property
    def ignore_exceptions(self) -> tuple[type[BaseException], ...]: ...
    @property
    def clock(self) -> _Clock | None: ...
