"""``python -m fma_connect`` runs the ``fma-connect`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
