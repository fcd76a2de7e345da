"""Accuracy against bytes in a real federation: ``python benchmarks/federation.py [--quick]``.

Ten clients with non-IID shares of scikit-learn's digits train a 167k-parameter MLP over
20 rounds of fed_avg on the reference server, once per scheme (msgpack, zstd+msgpack,
quantize-int8, zstd+quantize-int8-sym by default; ``--schemes`` names others), with every
byte each way counted on the wire; then each scheme's codec is timed on a 100M-parameter
update against a 1 Gbit/s link. ``--output DIR`` writes federation.md, federation.png and
federation.json. ``--help`` lists the options. The logic is in
``fma_connect.bench.federation_cli``.
"""

from __future__ import annotations

import sys

from fma_connect.bench.federation_cli import main

if __name__ == "__main__":
    sys.exit(main())
