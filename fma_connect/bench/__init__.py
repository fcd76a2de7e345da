"""``fma-connect bench``: codec, transfer and round-trip benchmarks with baselines and ceilings.

For each payload size it measures every installed codec (encode, decode, wire size,
round trip through the reference server), the baselines (the original client's
``json=`` over ``tolist()``, Flower-style ``np.save`` per array, safetensors, pickle
protocol 5) and the ceilings (memcpy of the same bytes, bare-socket loopback POST and
GET), all in the same run, and prints markdown tables plus the issue's targets as
ratios. Each measurement runs in a fresh process and the servers run in their own
processes, so client and server memory are measured apart; ``--quick`` runs
everything in-process on a tiny payload as a smoke test, whose report says so and
judges only the targets that hold at any size. Without the ``bench`` extra, a missing
baseline library or chart is skipped with a note naming the extra; a missing server
stops the run before it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .extras import SERVER_MODULES, missing
from .measure import peak_reset, read_status
from .report import Results, machine_notes, render, write_chart
from .results import label

__all__ = ["main", "parse_size"]

DEFAULT_SIZES = ("1MB", "100MB", "1GB")
QUICK_SIZE = "256KB"
#: The original client's path and stdlib JSON take minutes and many GB beyond this.
ORIGINAL_MAX = 100_000_000
#: Baselines and transfer comparisons copy the payload several times: not beyond this.
BASELINE_MAX = 2_000_000_000
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_SKIP_CODECS = ("example-",)


def parse_size(text: str) -> int:
    """``"100MB"`` -> 100_000_000 (KB/MB/GB are decimal, KiB/MiB/GiB binary)."""
    upper = text.strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * _UNITS[unit])
    return int(upper)


class Runner:
    """Runs operations in fresh worker processes, or in this process for --quick."""

    def __init__(self, in_process: bool) -> None:
        self.in_process = in_process

    def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.in_process:
            from .ops import run_op

            try:
                return run_op(spec)
            except Exception as exc:  # one failed case must not lose the others
                return {"error": f"{type(exc).__name__}: {exc}"}
        done = subprocess.run(
            [sys.executable, "-m", "fma_connect.bench.worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = done.stderr.strip().splitlines()[-3:]
            return {"error": " / ".join(tail) or f"exit status {done.returncode}"}
        result: dict[str, Any] = json.loads(lines[-1])
        return result


class MemoryWatch:
    """Samples a server process's resident memory while a block runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_anon = 0
        self.peak_rss = 0
        self._stop = threading.Event()

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        if self.pid is None:
            yield
            return
        base = read_status(self.pid)
        exact = peak_reset(self.pid)
        self.peak_anon = 0
        self._stop.clear()
        sampler = threading.Thread(target=self._sample, args=(base.get("RssAnon", 0),))
        sampler.start()
        try:
            yield
        finally:
            self._stop.set()
            sampler.join()
            after = read_status(self.pid)
            high = after.get("VmHWM", 0) if exact else 0
            self.peak_rss = max(high - base.get("VmRSS", 0), 0)

    def _sample(self, base_anon: int) -> None:
        assert self.pid is not None
        while not self._stop.wait(0.005):
            anon = read_status(self.pid).get("RssAnon", 0)
            self.peak_anon = max(self.peak_anon, anon - base_anon)


@contextlib.contextmanager
def _helper(kind: str, quick: bool) -> Iterator[str]:
    """Start a helper server (raw or discard); yield its URL."""
    from . import servers

    if quick:
        sock = servers._listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        if kind == "raw":
            threading.Thread(target=servers.serve_raw, args=(sock,), daemon=True).start()
            yield url
            return
        import uvicorn

        server = uvicorn.Server(uvicorn.Config(servers.discard_app(), log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            yield url
        finally:
            server.should_exit = True
            thread.join(10)
        return
    process = subprocess.Popen(
        [sys.executable, "-m", "fma_connect.bench.servers", kind],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        yield line.split("listening on ", 1)[1].strip()
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _reference(quick: bool, data_dir: str) -> Iterator[tuple[str, str, int | None]]:
    """Start the reference server; yield its URL, admin token and pid (None in-thread)."""
    if quick:
        from ..server.testing import running_server

        with running_server(data_dir) as server:
            yield server.url, server.admin_token, None
        return
    from ..server.testing import running_server_process

    with running_server_process(data_dir, args=("--log-level", "warning")) as process:
        yield process.url, process.admin_token, process.process.pid


def _codec_names(only: Sequence[str] | None) -> list[str]:
    from ..plugins import default_codec_registry

    names = [info.codec.name for info in default_codec_registry()]
    names = [n for n in names if not any(skip in n for skip in _SKIP_CODECS)]
    return [n for n in names if n in only] if only else names


def _new_model(url: str, token: str, name: str) -> tuple[int, str]:
    from ..admin import AdminClient
    from ..clients import WebClient

    with AdminClient(url, token) as admin:
        model_id = int(
            admin.create_model(name, requirement="require_x_updates", requirement_args=[1])["id"]
        )
    with WebClient(model_id, url=url) as client:
        return model_id, client.register()


def _drop_model(url: str, token: str, model_id: int) -> None:
    from ..admin import AdminClient

    with AdminClient(url, token) as admin:
        admin.delete_model(model_id)


def collect(sizes: Sequence[int], args: argparse.Namespace, say: Any) -> Results:
    """Run every measurement; ``say`` reports progress lines (to stderr)."""
    run = Runner(in_process=args.quick)
    repeat = 1 if args.quick else args.repeat
    warmup = not args.quick
    results = Results(sizes=list(sizes), smoke=args.quick)
    codecs = _codec_names(args.codecs)
    with (
        tempfile.TemporaryDirectory(prefix="fma-bench-") as data_dir,
        _reference(args.quick, data_dir) as (url, token, pid),
        _helper("raw", args.quick) as raw_url,
        _helper("discard", args.quick) as discard_url,
    ):
        watch = MemoryWatch(pid)
        for size in sizes:
            tag = label(size)
            big = size >= 10**9
            runs = 1 if big else repeat
            common = {"size": size, "repeat": runs, "warmup": warmup}
            # Past 2 GB only the binary codec: JSON-native ones are refused (or worse) there.
            codecs_here = codecs if size <= BASELINE_MAX else [n for n in codecs if n == "msgpack"]
            for name in codecs_here:
                say(f"{tag}: codec {name}")
                results.codec[(size, name)] = run({"op": "codec", "codec": name, **common})
            for kind in ("original", "np.save", "safetensors", "pickle5", "memcpy"):
                if size > (ORIGINAL_MAX if kind == "original" else BASELINE_MAX):
                    continue
                say(f"{tag}: baseline {kind}")
                results.baseline[(size, kind)] = run({"op": "baseline", "kind": kind, **common})
            say(f"{tag}: loopback ceilings")
            moves = {**common, "repeat": repeat}
            results.transfer[(size, "raw")] = run({"op": "raw", "url": raw_url, **moves})
            say(f"{tag}: upload to a discarding endpoint")
            results.transfer[(size, "upload")] = run({"op": "upload", "url": discard_url, **moves})
            model_id, uuid = _new_model(url, token, f"bench-download-{tag}")
            say(f"{tag}: download from the reference server")
            with watch.watching():
                spec = {"op": "download", "url": url, "model": model_id, "uuid": uuid, **moves}
                results.transfer[(size, "download")] = run(spec)
            _drop_model(url, token, model_id)
            cases = codecs_here + (["original"] if size <= ORIGINAL_MAX else [])
            for name in cases:
                say(f"{tag}: round trip {name}")
                model_id, uuid = _new_model(url, token, f"bench-{name}-{tag}")
                spec = {"url": url, "model": model_id, "uuid": uuid, **common}
                with watch.watching():
                    if name == "original":
                        figures = run({**spec, "op": "original_roundtrip", "repeat": 1})
                    else:
                        figures = run({**spec, "op": "roundtrip", "codec": name})
                figures["server_anon"] = watch.peak_anon
                figures["server_rss"] = watch.peak_rss
                results.roundtrip[(size, name)] = figures
                _drop_model(url, token, model_id)
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fma-connect bench", description="Benchmark codecs, transfers and round trips."
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser`` (shared by the CLI and benchmarks/run.py)."""
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help=f"payload sizes (default {' '.join(DEFAULT_SIZES)}); e.g. 10MB 5GiB",
    )
    parser.add_argument(
        "--add-sizes", nargs="+", default=(), metavar="SIZE", help="sizes to add to the default"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny in-process smoke run: checks every path, judges no speed or memory target",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs below 1 GB (best)")
    parser.add_argument("--codecs", nargs="+", default=None, help="only these codecs")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    parser.add_argument("--chart", type=Path, default=None, help="write a PNG chart here")


def run_bench(args: argparse.Namespace, command: str) -> int:
    """Run the benchmark the parsed ``args`` describe; print the report.

    Args:
        args: Options from :func:`add_arguments`.
        command: The command line, for the markdown report.

    Returns:
        The exit status: 0, or 2 when the reference server's extra is not installed
        (nothing can round-trip without it; the message names the extra).
    """
    for module in SERVER_MODULES:
        why = missing(module)
        if why is not None:
            print(f"error: the benchmark runs the reference server, but {why}", file=sys.stderr)
            return 2
    chart = args.chart
    no_chart = missing("matplotlib") if chart is not None else None
    if no_chart is not None:
        # Said before the run, which can take an hour, and again after its report.
        print(f"chart skipped: {no_chart}", file=sys.stderr)
        chart = None
    if args.quick:
        sizes = [parse_size(s) for s in (args.sizes or [QUICK_SIZE])]
    else:
        sizes = [parse_size(s) for s in (args.sizes or DEFAULT_SIZES)]
    sizes = sorted(set(sizes + [parse_size(s) for s in args.add_sizes]))
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {line}", file=sys.stderr, flush=True)

    results = collect(sizes, args, say)
    report = render(results)
    print(report)
    if args.markdown is not None:
        notes = machine_notes(command, time.perf_counter() - started, smoke=args.quick)
        args.markdown.write_text(notes + "\n" + report, encoding="utf-8")
    if chart is not None:
        write_chart(results, chart)
    elif no_chart is not None:
        print(f"chart skipped: {no_chart}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fma_connect.bench``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(arguments)
    return run_bench(args, " ".join(["python -m fma_connect.bench", *arguments]))
