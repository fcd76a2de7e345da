"""``python -m fma_connect.bench``: see :mod:`fma_connect.bench`."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
