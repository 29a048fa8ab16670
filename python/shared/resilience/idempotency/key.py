"""``IdempotencyKey``: the design document's key formats.

* ``from_user_request(**params)``: SHA-256 (64 hex digits) of the canonical
  JSON of the parameters (``canonical.py``): the same parameters give the same
  key in any order, in any process, on any supported Python and platform;
  ``amount=1000``, ``amount=1000.0`` and ``amount=Decimal("1000.00")`` give
  the same key.
* ``from_trade(strategy_id, signal_hash, timestamp)``:
  ``"trade_{strategy_id}_{timestamp}_{signal_hash}"``.
* ``from_blockchain_tx(operation, chain, params_hash)``:
  ``"blockchain_{operation}_{chain}_{params_hash}"``.
* ``from_event(event_id)``: ``"event_{event_id}"``.

The joined formats are the document's, exactly; their parts are joined with
``_``, so two different part lists can give one key when the parts themselves
contain ``_`` (``("a_b", "c")`` and ``("a", "b_c")``). Keep such ids free of
``_`` or hash them (``from_user_request``) when that can happen.
"""

from __future__ import annotations

from typing import Any

from shared.resilience.idempotency.canonical import canonical_json, sha256_hex

__all__ = ["IdempotencyKey"]


def _part(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str")
    return value


class IdempotencyKey:
    """Builders of idempotency keys (the design document's formats)."""

    __slots__ = ()

    @staticmethod
    def from_user_request(**params: Any) -> str:
        """SHA-256 hex digest of the canonical JSON of ``params`` (for user operations).

        Raises:
            ValueError: no parameters, or a NaN/infinite number.
            TypeError: a value with no canonical form (the error names it).
        """
        if not params:
            raise ValueError("from_user_request needs at least one parameter")
        return sha256_hex(canonical_json(params, "params"))

    @staticmethod
    def from_trade(strategy_id: str, signal_hash: str, timestamp: int) -> str:
        """``"trade_{strategy_id}_{timestamp}_{signal_hash}"`` (autonomous trades)."""
        _part("strategy_id", strategy_id)
        _part("signal_hash", signal_hash)
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise TypeError(f"timestamp must be an int, got {type(timestamp).__name__}")
        return f"trade_{strategy_id}_{int(timestamp)}_{signal_hash}"

    @staticmethod
    def from_blockchain_tx(operation: str, chain: str, params_hash: str) -> str:
        """``"blockchain_{operation}_{chain}_{params_hash}"`` (chain transactions)."""
        _part("operation", operation)
        _part("chain", chain)
        _part("params_hash", params_hash)
        return f"blockchain_{operation}_{chain}_{params_hash}"

    @staticmethod
    def from_event(event_id: str) -> str:
        """``"event_{event_id}"`` (event processing)."""
        _part("event_id", event_id)
        return f"event_{event_id}"
