"""``python -m shared``: doctor, bench and demo (see ``shared._cli``)."""

from __future__ import annotations

from shared._cli import main

raise SystemExit(main())
