"""A simulated exchange: latency with spikes, transient errors and an outage window.

Nothing leaves the process. The exchange keeps its own ledger of executions
per idempotency key, which is what the demo's summary checks: an order is
executed when its fill is recorded, and a call cancelled before that (a
timeout) executes nothing, as with an exchange that accepts a client order id.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "ExchangeError",
    "ExchangeOutageError",
    "ExchangeProfile",
    "Fill",
    "Order",
    "SimulatedExchange",
]


class ExchangeError(ConnectionError):
    """A transient failure (connection reset, 502): worth a retry."""


class ExchangeOutageError(ConnectionError):
    """The exchange is down: every call fails until the outage ends."""


@dataclass(frozen=True)
class Order:
    """An order a client places, identified by its idempotency key."""

    user: str
    key: str
    symbol: str
    side: str
    quantity: int

    def fingerprint(self) -> str:
        """What must match for a duplicate to be the same order (not a reused key)."""
        text = f"{self.user}|{self.symbol}|{self.side}|{self.quantity}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fill:
    """The exchange's answer: one per executed order."""

    key: str
    fill_id: int
    price: float
    quantity: int


@dataclass(frozen=True)
class ExchangeProfile:
    """How the exchange misbehaves (durations in seconds).

    ``outage_start`` / ``outage_length`` place one outage window after start;
    with ``outage_every`` it repeats every that many seconds.
    """

    base_latency: float = 0.003
    latency_jitter: float = 0.004
    spike_probability: float = 0.02
    spike_latency: float = 0.25
    error_rate: float = 0.04
    outage_start: float = 12.0
    outage_length: float = 6.0
    outage_every: float | None = 30.0

    @classmethod
    def for_duration(cls, duration: float | None) -> ExchangeProfile:
        """One outage in the middle of a timed run, or one every 30 s without an end."""
        if duration is None:
            return cls()
        return cls(outage_start=0.4 * duration, outage_length=0.2 * duration, outage_every=None)


@dataclass
class SimulatedExchange:
    profile: ExchangeProfile = field(default_factory=ExchangeProfile)
    seed: int = 0
    fill_base: int = 0  # a replica's index: fill ids stay unique across replicas
    clock: Callable[[], float] = time.monotonic
    calls: int = 0
    errors: int = 0
    spikes: int = 0
    outage_rejections: int = 0
    executions: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._started = self.clock()
        self._next_fill_id = self.fill_base * 1_000_000_000

    def start(self) -> None:
        """Starts the outage schedule's clock now."""
        self._started = self.clock()

    def in_outage(self) -> bool:
        profile = self.profile
        elapsed = self.clock() - self._started - profile.outage_start
        if profile.outage_every is not None and elapsed > 0:
            elapsed %= profile.outage_every
        return 0 <= elapsed < profile.outage_length

    async def execute(self, order: Order) -> Fill:
        """Executes ``order`` after a latency; may raise ``ConnectionError`` first."""
        self.calls += 1
        profile, rng = self.profile, self._rng
        if self.in_outage():
            self.outage_rejections += 1
            await asyncio.sleep(profile.base_latency)
            raise ExchangeOutageError("exchange unavailable (outage)")
        latency = profile.base_latency + rng.random() * profile.latency_jitter
        if rng.random() < profile.spike_probability:
            self.spikes += 1
            latency = profile.spike_latency
        failing = rng.random() < profile.error_rate
        await asyncio.sleep(latency)
        if failing:
            self.errors += 1
            raise ExchangeError("connection reset by exchange")
        # Executed: recorded with no await in between, so a cancellation lands
        # before this point (nothing executed) or not at all.
        self._next_fill_id += 1
        self.executions[order.key] += 1
        price = round(100.0 + rng.random(), 2)
        return Fill(order.key, self._next_fill_id, price, order.quantity)
