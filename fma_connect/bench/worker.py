"""Run one benchmark operation in this process: ``python -m fma_connect.bench.worker SPEC``.

SPEC is the operation's JSON spec; the figures are printed as one JSON line.
"""

from __future__ import annotations

import json
import sys

from .ops import run_op

if __name__ == "__main__":
    print(json.dumps(run_op(json.loads(sys.argv[1]))), flush=True)
