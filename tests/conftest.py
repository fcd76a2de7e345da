"""Shared test setup: a reproducible hypothesis profile and fresh codec registries."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from fma_connect import CodecRegistry, build_codec_registry, plugin_manager

# CI runs are reproducible: derandomized examples, no example database, no deadline.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def registry() -> CodecRegistry:
    """A registry of the built-in codecs only, built fresh for the test."""
    return build_codec_registry(plugin_manager(autoload=False))
