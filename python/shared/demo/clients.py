"""Clients that behave like real ones: they retry, and send duplicates on purpose.

Each client places orders with fresh idempotency keys. Some orders are sent
twice at once (a double click, a proxy retry); some are sent again after the
acknowledgement (the ack was lost); a failed or rate-limited order is sent
again with the same key after a pause. Once the service stops, a client
finishes the order in hand and places no new one.

With replicas, every replica runs the same simulated clients (the same seed,
so the same orders with the same keys) and serves the orders a load balancer
would route to it (``Route``): an order goes to one replica chosen by its key,
and a duplicate sent on purpose goes to the next replica as well, so that
duplicates meet across processes.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from dataclasses import dataclass

from shared.demo.exchange import Order
from shared.demo.service import OrderService, ServiceStoppingError
from shared.demo.stats import Stats
from shared.resilience import CircuitBreakerOpenError, RateLimitExceeded
from shared.resilience.exceptions import IdempotencyInProgressError, IdempotencyStoreError

__all__ = ["ClientProfile", "Route", "run_client"]

SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")


@dataclass(frozen=True)
class ClientProfile:
    think_time: float = 0.01
    duplicate_rate: float = 0.1
    resend_after_ack_rate: float = 0.05
    max_backoff: float = 0.25


@dataclass(frozen=True)
class Route:
    """Which copies of an order this process receives (``index`` of ``count`` replicas)."""

    run_id: str
    index: int = 0
    count: int = 1

    def copies(self, key: str, duplicate: bool) -> tuple[int, bool]:
        """``(copies sent here, whether one of them is the duplicate)``: the order goes
        to replica ``crc32(key) % count``, its duplicate to the next one."""
        primary = zlib.crc32(key.encode()) % self.count
        secondary = (primary + 1) % self.count
        copies = (self.index == primary) + (duplicate and self.index == secondary)
        return copies, duplicate and self.index == secondary


async def _submit(
    service: OrderService, order: Order, stats: Stats, stop: asyncio.Event, profile: ClientProfile
) -> int | None:
    """Sends ``order`` until it is acknowledged; returns its fill id, or None if
    the client gave up because the service is stopping."""
    pause = 0.01
    while True:
        try:
            result = await service.place_order(order)
        except ServiceStoppingError:
            return None
        except RateLimitExceeded as exc:
            wait = exc.retry_after
        except CircuitBreakerOpenError as exc:
            stats.breaker_rejections += 1
            wait = min(max(exc.retry_after, 0.01), profile.max_backoff)
        except IdempotencyInProgressError as exc:  # the first copy is still executing
            stats.in_progress_waits += 1
            wait = min(max(exc.retry_after or 0.01, 0.01), profile.max_backoff)
        except (ConnectionError, TimeoutError, IdempotencyStoreError):
            stats.failures += 1
            wait = pause
            pause = min(pause * 2, profile.max_backoff)
        else:
            return result.fill.fill_id
        if stop.is_set():
            return None
        stats.client_retries += 1
        await asyncio.sleep(wait)


async def run_client(
    client_id: int,
    users: int,
    service: OrderService,
    stats: Stats,
    stop: asyncio.Event,
    profile: ClientProfile,
    seed: int,
    route: Route,
) -> None:
    rng = random.Random(seed * 1_000_003 + client_id)
    user = f"user-{client_id % users}"
    sequence = 0
    while not stop.is_set():
        sequence += 1
        # Every draw is made for every order, so that replicas agree on each one.
        order = Order(
            user=user,
            key=f"{route.run_id}:{user}:c{client_id}:{sequence}",
            symbol=rng.choice(SYMBOLS),
            side=rng.choice(("buy", "sell")),
            quantity=rng.randint(1, 10),
        )
        duplicate = rng.random() < profile.duplicate_rate
        resend = rng.random() < profile.resend_after_ack_rate
        think = rng.uniform(0.5, 1.5) * profile.think_time
        copies, duplicated_here = route.copies(order.key, duplicate)
        if not copies:
            continue  # routed to other replicas
        stats.keys_sent.add(order.key)
        if duplicated_here:
            stats.duplicates_sent += 1
        outcomes = await asyncio.gather(
            *(_submit(service, order, stats, stop, profile) for _ in range(copies))
        )
        fill_id = next((o for o in outcomes if o is not None), None)
        if fill_id is None:
            if order.key not in stats.acknowledged:
                stats.gave_up += 1
            continue
        if resend and not stop.is_set():
            stats.resent_after_ack += 1
            await _submit(service, order, stats, stop, profile)
        await asyncio.sleep(think)
