"""Installed from their folders, the plugins are found, listed, and fail softly when broken."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from plugin_helpers import PLUGINS

from fma_connect import build_codec_registry, plugin_manager


def _cli_codecs(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fma_connect", "codecs"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_each_plugin_registers_its_codecs_under_its_distribution() -> None:
    registry = build_codec_registry(plugin_manager(strict=True))
    for distribution, names in PLUGINS.items():
        version = importlib.metadata.version(distribution)
        for name in names:
            info = registry.info(name)
            assert (info.distribution, info.version) == (distribution, version), name


def test_fma_connect_codecs_lists_each_plugin_codec_with_distribution_and_version() -> None:
    out = _cli_codecs()
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    for distribution, names in PLUGINS.items():
        version = importlib.metadata.version(distribution)
        for name in names:
            assert rows[name][-2:] == [distribution, version], rows.get(name)
    assert rows["quantize-int8"][2:4] == ["no", "no"]  # lossless, JSON-native
    assert rows["zstd+msgpack"][1] == "application/vnd.fma-connect.msgpack+zstd"


def test_a_broken_installed_plugin_is_a_warning_in_the_cli_not_a_crash(tmp_path: Path) -> None:
    # An installed distribution whose entry point names a module that does not exist.
    dist_info = tmp_path / "fma_connect_broken-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fma-connect-broken\n")
    (dist_info / "entry_points.txt").write_text("[fma_connect]\nbroken = no_such_module_xyz\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    out = _cli_codecs({"PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    assert "warning: plugin 'broken'" in out.stderr and "no_such_module_xyz" in out.stderr
    assert "safetensors" in out.stdout and "example-raw" in out.stdout
