"""Options for the benchmark suite."""

from __future__ import annotations

import os

import pytest

# Measure p2psync as a user has it installed: pip compiles its bytecode at
# install time. An environment that forbids writing bytecode would charge
# every process the benchmarks start ~35 ms of compiling p2psync's modules
# (measured: import 105 ms -> 71 ms), which no installed copy pays.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--big", action="store_true", help="include the 1 GiB transfer cases")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--big"):
        return
    skip = pytest.mark.skip(reason="1 GiB case: run with --big")
    for item in items:
        if "big" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "big: a 1 GiB case, only with --big")
