"""Pure-Python twin of ``rust/backoff.rs``: the backoff calculator.

Same float operations in the same order as the Rust core, and the same
splitmix64 stream (draw ``k`` is ``mix(seed + k * GAMMA)``), so both give
bit-identical delays for the same seed. Python's ``random`` module is not
used: its internals are not part of the contract.
"""

from __future__ import annotations

import itertools
import os

__all__ = ["Backoff"]

_MASK = 2**64 - 1
_GAMMA = 0x9E3779B97F4A7C15
_UNIT = 1.0 / 9007199254740992.0  # 2**-53
_INF = float("inf")
_STRATEGIES = ("exponential", "linear", "constant")
_JITTERS = ("none", "equal", "full", "decorrelated")


def _u64(name: str, value: object) -> int:
    # What PyO3 accepts for a u64: an int (or index) in [0, 2**64).
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    if value < 0 or value > _MASK:
        raise OverflowError(f"{name} out of range for an unsigned 64-bit integer")
    return value


def _float(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"must be real number, not {type(value).__name__}")


class Backoff:
    """The backoff calculator (twin of ``shared._native.Backoff``)."""

    __slots__ = ("_base", "_cap", "_counter", "_initial", "_jitter", "_seed", "_strategy")

    _base: float
    _cap: float
    _counter: itertools.count[int]
    _initial: float
    _jitter: str
    _seed: int
    _strategy: str

    # Built in __new__ like the native class (no __init__), so signatures match.
    def __new__(
        cls,
        strategy: str = "exponential",
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        exponential_base: float = 2.0,
        jitter: str = "none",
        seed: int | None = None,
    ) -> Backoff:
        # Argument types first, then values: the order in which the native class checks them.
        for value in (strategy, jitter):
            if not isinstance(value, str):
                raise TypeError(f"expected str, got {type(value).__name__}")
        initial, cap, base = _float(initial_delay), _float(max_delay), _float(exponential_base)
        seed = int.from_bytes(os.urandom(8), "little") if seed is None else _u64("seed", seed)
        if strategy not in _STRATEGIES:
            raise ValueError(
                f"strategy must be 'exponential', 'linear' or 'constant', got {strategy!r}"
            )
        if jitter not in _JITTERS:
            raise ValueError(
                f"jitter must be 'none', 'equal', 'full' or 'decorrelated', got {jitter!r}"
            )
        if not (0.0 <= initial < float("inf")):
            raise ValueError(f"initial_delay must be a finite number >= 0, got {initial!r}")
        if not (initial <= cap < float("inf")):
            raise ValueError(f"max_delay must be a finite number >= initial_delay, got {cap!r}")
        if not (1.0 <= base < float("inf")):
            raise ValueError(f"exponential_base must be a finite number >= 1, got {base!r}")
        self = super().__new__(cls)
        self._seed = seed
        self._strategy = strategy
        self._jitter = jitter
        self._initial, self._cap, self._base = initial, cap, base
        # next() on a count is atomic under the GIL: concurrent callers never share a draw.
        self._counter = itertools.count(1)
        return self

    def _next_unit(self) -> float:
        state = (self._seed + next(self._counter) * _GAMMA) & _MASK
        # splitmix64's output function (inline: this is the twin's hot path).
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((state ^ (state >> 31)) >> 11) * _UNIT

    def _capped(self, attempt: int) -> float:
        if self._strategy == "constant":
            raw = self._initial
        elif self._strategy == "linear":
            raw = self._initial * float(attempt)
        elif self._initial == 0.0:
            raw = 0.0
        else:
            try:
                raw = self._initial * self._base ** float(attempt - 1)
            except OverflowError:  # Rust's powf gives inf here; the cap applies
                raw = _INF
        return min(raw, self._cap)

    def delay(self, /, attempt: int, previous: float = 0.0) -> float:
        """The delay in seconds after failed attempt ``attempt`` (>= 1)."""
        # Fast path for the usual int and float; the slow path gives PyO3's errors.
        if type(attempt) is not int or not 0 < attempt <= _MASK:
            attempt = _u64("attempt", attempt)
            if attempt == 0:
                raise ValueError("attempt must be >= 1, got 0")
        if type(previous) is not float:
            previous = _float(previous)
        if not 0.0 <= previous < _INF:
            raise ValueError(f"previous must be a finite number >= 0, got {previous!r}")
        jitter = self._jitter
        if jitter == "none":
            return self._capped(attempt)
        if jitter == "equal":
            half = self._capped(attempt) * 0.5
            return half + self._next_unit() * half
        if jitter == "full":
            return self._next_unit() * self._capped(attempt)
        upper = max(min(previous * 3.0, self._cap), self._initial)
        return self._initial + self._next_unit() * (upper - self._initial)
