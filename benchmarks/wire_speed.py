"""Wire speed against bare-socket peers (issue 13): ``python benchmarks/wire_speed.py [--quick]``.

Measures, in one run, the client's upload and download against a bare-socket HTTP server,
``fma-connect serve``'s ingest (against a durable file write and a discarding socket),
egress, a round trip against the sum of its stages' ceilings, and small requests (poll and
1 MB update latency, polls/s with 64 clients) against the ASGI server's empty route; each as
a ratio to its peer, the two paths alternating, best of ``--repeat``. ``--size`` is the
payload in MiB (default 1024), ``--output DIR`` writes wire_speed.md and wire_speed.json,
``--help`` lists the options. The logic is in ``fma_connect.bench.wire_cli``.
"""

from __future__ import annotations

import sys

from fma_connect.bench.wire_cli import main

if __name__ == "__main__":
    sys.exit(main())
