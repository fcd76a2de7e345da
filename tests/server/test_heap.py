"""The server keeps freed memory in its heap (glibc), so body pieces do not fault new memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

#: Prints whether a 4 MiB block (a body piece's size) lies in the heap or is mapped alone.
_WHERE_A_PIECE_GOES = """
import ctypes, sys
from fma_connect.server.heap import keep_heap
if sys.argv[1] == "keep":
    print(keep_heap())
piece = bytearray(4 << 20)
address = ctypes.addressof(ctypes.c_char.from_buffer(piece))
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    start, end = (int(part, 16) for part in span.split("-"))
    if start <= address < end:
        print("heap" if rest[-1] == "[heap]" else "mapped")
"""


def _where(mode: str, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _WHERE_A_PIECE_GOES, mode],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def test_a_body_piece_comes_from_the_heap_once_it_is_kept() -> None:
    assert _where("default") == ["mapped"]  # glibc's default: mapped, and unmapped when freed
    assert _where("keep") == ["True", "heap"]


def test_the_operators_own_thresholds_stand() -> None:
    assert _where("keep", MALLOC_MMAP_THRESHOLD_=str(1 << 30)) == ["False", "heap"]
    assert _where("keep", MALLOC_TRIM_THRESHOLD_="0") == ["False", "mapped"]
