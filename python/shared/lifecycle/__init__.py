"""Service lifecycle: ``graceful_shutdown`` (signal handling, ordered shutdown).

Not built yet: no issue for it is open. The package exists so that the
shutdown issue fills in its module rather than inventing a place.
"""

from __future__ import annotations

__all__: list[str] = []
