"""``python benchmarks/federation.py``: accuracy against bytes in a real federation.

Runs the federation of :mod:`.federation` once per scheme, then times each scheme's
codec on a large synthetic update (:mod:`.codec_speed`), prints a line per scheme as it
finishes and the tables at the end, and with ``--output DIR`` writes
``federation.md``, ``federation.png`` (with matplotlib) and ``federation.json`` (every
figure, for later comparison). ``--quick`` is a smoke run for CI: 3 rounds and a
1M-parameter speed update unless told otherwise.

Exit status: 0; 1 when no scheme ran, one failed, or a lossless one did not come back bit for
bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..exceptions import ConfigurationError
from ..plugins import default_codec_registry
from .codec_speed import SpeedResult, measure_speeds
from .extras import SERVER_MODULES, missing
from .federation import FederationConfig, FederationData, SchemeRun, run_scheme
from .federation_report import plot_problem, render, speed_table, summary_table, write_plot
from .mlp import LAYERS, TrainingConfig
from .schemes import DEFAULT_SCHEMES, parse_schemes

__all__ = ["add_arguments", "main"]

QUICK_ROUNDS = 3
QUICK_SPEED_PARAMS = 1_000_000
DEFAULT_SPEED_PARAMS = 100_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    defaults = FederationConfig()
    training = TrainingConfig()
    parser.add_argument("--quick", action="store_true", help="a smoke run (CI): few rounds, small")
    parser.add_argument(
        "--schemes",
        nargs="+",
        metavar="SCHEME",
        help="schemes to run: presets "
        # Labels hold "%", which argparse reads as a format: doubled.
        f"({'; '.join(s.label.replace('%', '%%') for s in DEFAULT_SCHEMES)}: the default), "
        "installed codec names, "
        "or LABEL=module:Callable(key=value, ...) for a codec object with parameters",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        help=f"federated rounds (default {defaults.rounds}; {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument(
        "--clients", type=_positive, default=defaults.clients, help="clients (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed (default %(default)s)"
    )
    parser.add_argument(
        "--epochs",
        type=_positive,
        default=training.epochs,
        help="local epochs per round (default %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=training.learning_rate,
        help="SGD learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--momentum",
        type=float,
        default=training.momentum,
        help="SGD momentum (default %(default)s)",
    )
    parser.add_argument(
        "--speed-params",
        type=int,
        help="parameters of the synthetic update timed per codec; 0 skips it "
        f"(default {DEFAULT_SPEED_PARAMS:_}; {QUICK_SPEED_PARAMS:_} with --quick)",
    )
    parser.add_argument(
        "--output", type=Path, help="write federation.md, federation.png and federation.json here"
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "benchmarks/federation.py") -> int:
    """Parse the options, run the benchmark, print and write the report."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Accuracy against bytes in a real federation, per codec scheme."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    for module in SERVER_MODULES:
        problem = missing(module)
        if problem is not None:
            parser.exit(2, f"{prog}: the federation needs the reference server: {problem}\n")
    try:
        schemes = parse_schemes(args.schemes) if args.schemes else list(DEFAULT_SCHEMES)
    except ConfigurationError as exc:
        parser.error(str(exc))
    started = time.perf_counter()
    config = _config(args)
    registry = default_codec_registry()
    data = FederationData.load(config)
    say(f"{config.clients} clients, {config.rounds} rounds, {len(schemes)} schemes")
    runs: list[SchemeRun] = []
    for scheme in schemes:
        begun = time.perf_counter()
        try:
            run = run_scheme(scheme, data, config, registry)
        except Exception as exc:  # one failed scheme must not lose the others' figures
            run = SchemeRun(scheme.label, error=f"{type(exc).__name__}: {exc}")
        runs.append(run)
        say(_progress(run, time.perf_counter() - begun))
    speeds: list[SpeedResult] = []
    speed_params = args.speed_params
    if speed_params is None:
        speed_params = QUICK_SPEED_PARAMS if args.quick else DEFAULT_SPEED_PARAMS
    if speed_params > 0:
        say(f"encode + decode of a {speed_params:,}-parameter float32 update:")
        speeds = measure_speeds(
            schemes,
            registry,
            speed_params,
            repeat=1 if args.quick else 2,
            seed=config.seed,
            on_result=lambda s: say(_speed_progress(s)),
        )
    print()
    print(summary_table(runs))
    if speeds:
        print()
        print(speed_table(speeds))
    if args.output is not None:
        command = " ".join(["python", prog, *(argv if argv is not None else sys.argv[1:])])
        seconds = time.perf_counter() - started
        _write(args.output, runs, speeds, config, command, seconds, args.quick)
    failed = any(r.error is not None or r.exact is False for r in runs)
    return 0 if any(r.ran for r in runs) and not failed else 1


def _config(args: argparse.Namespace) -> FederationConfig:
    return FederationConfig(
        clients=args.clients,
        rounds=args.rounds or (QUICK_ROUNDS if args.quick else FederationConfig().rounds),
        seed=args.seed,
        layers=LAYERS,
        training=TrainingConfig(args.epochs, args.learning_rate, args.momentum),
    )


def _write(
    output: Path,
    runs: Sequence[SchemeRun],
    speeds: Sequence[SpeedResult],
    config: FederationConfig,
    command: str,
    seconds: float,
    smoke: bool,
) -> None:
    """Write federation.md, federation.json and (with matplotlib) federation.png."""
    output.mkdir(parents=True, exist_ok=True)
    plot = plot_problem()
    note = f"PNG skipped: {plot}." if plot else "![accuracy against cumulative MB](federation.png)"
    report = render(
        runs, speeds, config, command=command, seconds=seconds, smoke=smoke, notes=[note]
    )
    (output / "federation.md").write_text(report, encoding="utf-8")
    figures = _figures(runs, speeds, config)
    (output / "federation.json").write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if plot is None:
        write_plot(runs, output / "federation.png")
    else:
        say(f"PNG skipped: {plot}")
    say(f"wrote {output / 'federation.md'}")


def say(line: str) -> None:
    """Print a progress line now (the run takes minutes)."""
    print(line, flush=True)


def _progress(run: SchemeRun, seconds: float) -> str:
    if run.skipped is not None:
        return f"{run.label}: skipped: {run.skipped}"
    if run.error is not None:
        return f"{run.label}: FAILED: {run.error}"
    total = run.total
    exact = {True: ", bit-exact", False: ", NOT bit-exact", None: ""}[run.exact]
    return (
        f"{run.label}: {len(run.rounds)} rounds, accuracy {run.final_accuracy:.3f}, "
        f"up {total.up / 1e6:,.2f} MB, down {total.down / 1e6:,.2f} MB{exact} ({seconds:.1f} s)"
    )


def _speed_progress(result: SpeedResult) -> str:
    if result.skipped is not None:
        return f"  {result.label}: skipped: {result.skipped}"
    return (
        f"  {result.label}: {result.seconds:.3f} s ({result.throughput:,.0f} MB/s, "
        f"{result.memcpy_ratio:.1f}x two memcpys of its bytes, "
        f"{result.link_ratio:.2f}x the 1 Gbit/s link time)"
    )


def _figures(
    runs: Sequence[SchemeRun], speeds: Sequence[SpeedResult], config: FederationConfig
) -> dict[str, object]:
    def run_json(run: SchemeRun) -> dict[str, object]:
        return {
            **dataclasses.asdict(run),
            "final_accuracy": run.final_accuracy,
            "up": run.total.up,
            "down": run.total.down,
        }

    return {
        "config": dataclasses.asdict(config),
        "schemes": [run_json(r) for r in runs],
        "speed": [dataclasses.asdict(s) for s in speeds],
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
