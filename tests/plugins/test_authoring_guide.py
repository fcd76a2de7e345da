"""codecs/README.md quotes the example plugin's three files verbatim."""

from __future__ import annotations

import re
from pathlib import Path

CODECS = Path(__file__).resolve().parents[2] / "codecs"
EXAMPLE = CODECS / "example-plugin"
_QUOTED = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<text>.*?)```\n", re.DOTALL)
_BUILD_LEFTOVERS = (".egg-info", "__pycache__", ".pytest_cache", "build")


def test_the_guide_quotes_each_file_of_the_example_plugin_verbatim() -> None:
    quoted = {m["path"]: m["text"] for m in _QUOTED.finditer((CODECS / "README.md").read_text())}
    assert sorted(quoted) == [
        "example-plugin/pyproject.toml",
        "example-plugin/src/fma_connect_example.py",
        "example-plugin/tests/test_example_codec.py",
    ]
    for path, text in quoted.items():
        assert text == (CODECS / path).read_text(), f"codecs/README.md is out of date: {path}"


def test_the_example_plugin_is_those_three_files() -> None:
    files = sorted(
        str(path.relative_to(EXAMPLE))
        for path in EXAMPLE.rglob("*")
        if path.is_file() and not any(part.endswith(_BUILD_LEFTOVERS) for part in path.parts)
    )
    assert files == ["pyproject.toml", "src/fma_connect_example.py", "tests/test_example_codec.py"]
