"""Health checks: ``health_check`` (protocol and base class), ``health_status``
(the status enum) and ``health_server`` (the HTTP probe server).

Not built yet: no issue for it is open. The package exists so that the health
issue fills in these modules rather than inventing places.
"""

from __future__ import annotations

__all__: list[str] = []
