"""Run the fma_connect benchmark suite: ``python benchmarks/run.py [--quick] [--sizes ...]``.

Writes the report to ``benchmarks/RESULTS.md`` and the chart to ``benchmarks/results.png``
(unless ``--markdown``/``--chart`` say otherwise) and prints it. The same suite runs as
``fma-connect bench``. When the plugin codecs' own benchmark (``codecs/bench_plugins.py``)
and its plugins are installed, its table (extra payloads: float16, a sparse delta, the
quantize codecs' error bounds) is appended to the report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from fma_connect.bench import add_arguments, run_bench

HERE = Path(__file__).resolve().parent
PLUGINS_BENCH = HERE.parent / "codecs" / "bench_plugins.py"


def plugin_table(megabytes: int) -> str | None:
    """The plugin codecs' benchmark table, or None when it cannot run here."""
    if not PLUGINS_BENCH.exists():
        return None
    done = subprocess.run(
        [sys.executable, str(PLUGINS_BENCH), "--mb", str(megabytes), "--repeat", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def main() -> int:
    """Parse the options, run the suite, write the report and chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--no-plugin-table", action="store_true", help="skip codecs/bench_plugins.py"
    )
    args = parser.parse_args()
    if args.markdown is None and not args.quick:
        args.markdown = HERE / "RESULTS.md"
    if args.chart is None and not args.quick:
        args.chart = HERE / "results.png"
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    status = run_bench(args, command)
    if args.quick or args.no_plugin_table:
        return status
    table = plugin_table(100)
    if table and args.markdown is not None:
        with args.markdown.open("a", encoding="utf-8") as report:
            report.write("\n## Plugin codecs (codecs/bench_plugins.py --mb 100)\n\n" + table)
        print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
