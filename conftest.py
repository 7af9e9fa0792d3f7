"""Shared by tests/ and benchmarks/: every core test runs against both backends."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import pytest

from p2psync import transfer

BACKENDS = {"python": "p2psync._twin", "cython": "p2psync._speedups"}
REQUIRE_EXTENSIONS = os.environ.get("P2PSYNC_REQUIRE_EXTENSIONS") == "1"


def available_backends() -> list[str]:
    """Both backends where the extension is built; only the twin otherwise."""
    if importlib.util.find_spec(BACKENDS["cython"]) is not None:
        return ["python", "cython"]
    if REQUIRE_EXTENSIONS:
        raise ImportError("P2PSYNC_REQUIRE_EXTENSIONS=1 but p2psync._speedups is not built")
    return ["python"]


@pytest.fixture(scope="session", params=available_backends())  # one per run: hypothesis-safe
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The backend module under test: `p2psync._twin` or `p2psync._speedups`."""
    return importlib.import_module(BACKENDS[request.param])


def pytest_report_header(config: pytest.Config) -> str:
    where = sys.modules[transfer.LineSplitter.__module__].__file__
    return f"p2psync backend: {transfer.BACKEND} ({where})"
