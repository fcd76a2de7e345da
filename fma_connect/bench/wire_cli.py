"""``python benchmarks/wire_speed.py``: the client and the reference server against bare peers.

Issue 13's measurements, in one run: every path of ours next to a peer that moves the
same bytes without being the bottleneck (a bare-socket HTTP server, a durable file write
from memory, the ASGI server's empty route), as a ratio, with the runs of the two paths
alternating and the best of ``--repeat`` kept (see :mod:`.wire`)::

    client upload, client download          WebClient  <->  bare-socket server (wire_servers)
    server ingest, egress, round trip       WebClient  <->  fma-connect serve (subprocess)
    small requests                          WebClient  <->  fma-connect serve / empty route

Each comparison runs in a worker process of its own (:mod:`.wire_ops`), each server in
its own process; ``fma-connect serve`` gets a fresh data directory under ``--data-root``
(the durable ceiling is written in its blob directory, so both meet the same disk), runs
with ``--auto-aggregate off`` (a round runs when the benchmark triggers it) and
``--max-connections-per-client 0`` (64 clients come from one address). ``--output DIR``
writes ``wire_speed.md`` and ``wire_speed.json``; ``--quick`` is a smoke run on a few MiB
whose report judges no target.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .extras import SERVER_MODULES, missing
from .wire_report import as_json, render

__all__ = ["add_arguments", "main"]

DEFAULT_MIB = 1024.0
QUICK_MIB = 4.0
#: Best of two even in a smoke run: one slow fsync must not make a ratio implausible.
QUICK_REPEAT = 2
#: The comparisons in the order they run: the client's first, on the bare peers only.
ORDER = (
    "client_upload",
    "client_download",
    "server_ingest",
    "server_egress",
    "round_trip",
    "small_requests",
)
#: Samples of the small requests: (poll latencies, update latencies, polls per thread).
FULL_SMALL = (400, 60, 30)
QUICK_SMALL = (16, 4, 2)
SERVE_OPTIONS = (
    "--auto-aggregate",
    "off",
    "--log-level",
    "warning",
    "--max-connections-per-client",
    "0",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_MIB:g} MiB, best of {QUICK_REPEAT}, no warm-up, no target judged",
    )
    parser.add_argument(
        "--size",
        type=float,
        default=None,
        metavar="MIB",
        help=f"payload in MiB (default {DEFAULT_MIB:g}; {QUICK_MIB:g} with --quick)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each path, best kept (default 3)"
    )
    parser.add_argument(
        "--output", type=Path, default=None, metavar="DIR", help="write wire_speed.md/json here"
    )
    parser.add_argument(
        "--crc32",
        choices=("auto", "zlib"),
        default="auto",
        help="auto: the fastest installed (isal, a dependency); zlib: with isal hidden "
        "from every process of the run, as where it cannot be installed",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the server's fresh data directory is made (default: the temp directory)",
    )


@contextlib.contextmanager
def _helper(*argv: str) -> Iterator[str]:
    """Run ``python -m fma_connect.bench.wire_servers ARGV``; yield its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fma_connect.bench.wire_servers", *argv],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"wire_servers {' '.join(argv)} did not start: {line!r}")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def _without_isal(root: Path) -> Iterator[None]:
    """Hide ``isal`` from the processes started in the block (as where it cannot be installed).

    A package of that name that fails to import comes first on their ``PYTHONPATH``: the
    codec then falls back to zlib's crc32, as it does where isal is not installed.
    """
    shim = root / "no-isal" / "isal"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        'raise ImportError("isal is hidden by the wire benchmark (--crc32 zlib)")\n'
    )
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim.parent), before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def _isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one comparison in a fresh worker process; return its figures."""
    done = subprocess.run(
        [sys.executable, "-m", "fma_connect.bench.wire_ops", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"{spec['op']} failed (exit status {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def collect(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Start the servers, run every comparison; return the figures by comparison."""
    from ..server.testing import running_server_process

    size = _size(args)
    polls, updates, calls = QUICK_SMALL if args.quick else FULL_SMALL
    repeat = QUICK_REPEAT if args.quick else max(args.repeat, 1)
    common: dict[str, Any] = {"size": size, "repeat": repeat, "warmup": not args.quick}
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="fma-wire-", dir=args.data_root) as root,
        _without_isal(Path(root)) if args.crc32 == "zlib" else contextlib.nullcontext(),
    ):
        data_dir = Path(root) / "serve"
        say(f"starting the peers and fma-connect serve (data in {data_dir})")
        with (
            _helper("bare", str(size), str(data_dir / "blobs")) as bare,
            _helper("empty") as empty,
            running_server_process(data_dir, args=SERVE_OPTIONS) as server,
        ):
            common.update(
                bare=bare,
                empty=empty,
                serve=server.url,
                token=server.admin_token,
                pid=server.process.pid,
                blobs=str(data_dir / "blobs"),
                polls=polls,
                updates=updates,
                calls=calls,
                batches=2 if args.quick else 2 * repeat,
            )
            for op in ORDER:
                say(f"{op}")
                results[op] = _isolated({**common, "op": op})
    return results


def _size(args: argparse.Namespace) -> int:
    mib = args.size if args.size is not None else (QUICK_MIB if args.quick else DEFAULT_MIB)
    return max(int(mib * 2**20), 1 << 16)


def _versions() -> str:
    names = (
        *("numpy", "requests", "urllib3", "msgpack", "isal"),
        *("uvicorn", "h11", "httptools", "uvloop", "starlette"),
    )
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def header(command: str, seconds: float, *, quick: bool, loads: Sequence[float], crc32: str) -> str:
    """The report's title, command, machine and library versions (``crc32``: the client's)."""
    from .measure import cpu_name

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "\n".join(
        [
            "# Wire speed (issue 13)" + (" (smoke run: no target judged)" if quick else ""),
            "",
            f"Command: `{command}` ({seconds / 60:.1f} minutes, "
            f"{time.strftime('%Y-%m-%d %H:%M')}).",
            "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, {memory / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
            f"load average {loads[0]:.2f} before, {loads[1]:.2f} after (1 min). On a shared "
            "machine only the ratios mean much: the two paths of each ran in alternation.",
            "",
            f"Libraries: {_versions()}. The msgpack codec's crc32 in the run's processes: {crc32}.",
            "",
            "MB/s are 10**6 bytes of payload (raw tensor bytes) per second of the best run; a "
            "ratio is ours over the peer's rate (for latencies, the peer's p50 over ours).",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the report and write it under ``--output``.

    Returns:
        0; 2 when the reference server's extra is not installed; 1 when a comparison
        failed (its error is printed).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python benchmarks/wire_speed.py",
        description="Wire speed of the client and the reference server against bare peers.",
    )
    add_arguments(parser)
    args = parser.parse_args(arguments)
    for module in SERVER_MODULES:
        why = missing(module)
        if why is not None:
            print(f"error: the benchmark runs the reference server, but {why}", file=sys.stderr)
            return 2
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {line}", file=sys.stderr, flush=True)

    before = os.getloadavg()[0]
    try:
        results = collect(args, say)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loads = (before, os.getloadavg()[0])
    command = " ".join(["python benchmarks/wire_speed.py", *arguments])
    results["size"] = _size(args)
    crc32 = results["client_upload"]["crc32"]
    report = header(
        command, time.perf_counter() - started, quick=args.quick, loads=loads, crc32=crc32
    )
    report += "\n" + render(results, judged=not args.quick)
    print(report)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "wire_speed.md").write_text(report, encoding="utf-8")
        document = {
            "command": command,
            "quick": args.quick,
            **as_json(results, judged=not args.quick),
        }
        (args.output / "wire_speed.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0
