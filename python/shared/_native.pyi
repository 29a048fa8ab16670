# The contract of the Rust extension `shared._native` (checked by mypy.stubtest).
# `shared._pure` implements the same names with the same signatures.
from typing import Any, Callable, Final, Optional, Protocol, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "ABI3",
    "BUILD_PROFILE",
    "Backoff",
    "RetryBudget",
    "RetryCore",
    "RetryingCall",
    "__version__",
    "monotonic_ns",
]

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
