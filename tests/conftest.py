"""Fixtures for tests that run trackers and peers on loopback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import p2psync.cli  # noqa: F401  (every module loaded, so the backend fixture reaches all)
from p2psync import transfer
from p2psync.config import PeerSettings
from p2psync.peer import FileSynchronizer
from p2psync.tracker import Tracker

CORE_NAMES = ("Buffer", "LineSplitter", "link_new_files", "read_small_file", "recv_to_file", "send_from_file")


@pytest.fixture
def backend(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the tracker and peer code of this test on `impl`'s core (both backends):
    every p2psync module that took a core name from `transfer` gets `impl`'s."""
    chosen = {name: getattr(transfer, name) for name in CORE_NAMES}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("p2psync.") or module_name in ("p2psync._twin", "p2psync._speedups"):
            continue
        for name, default in chosen.items():
            if getattr(module, name, None) is default:
                monkeypatch.setattr(module, name, getattr(impl, name))
    return "cython" if impl.__name__.endswith("_speedups") else "python"


@pytest.fixture
def start_tracker() -> Iterator[Callable[..., Tracker]]:
    """Start trackers on 127.0.0.1 (port from the OS unless given); all stopped after the test."""
    started: list[Tracker] = []

    def start(port: int = 0, **kwargs: object) -> Tracker:
        t = Tracker(port, "127.0.0.1", **kwargs)  # type: ignore[arg-type]
        t.start()
        started.append(t)
        return t

    yield start
    for t in started:
        t.exit()


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """The classic API serves the working directory at construction: enter, then leave."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture
def make_peer() -> Iterator[Callable[..., FileSynchronizer]]:
    """Build peers serving a given folder on 127.0.0.1; all stopped after the test."""
    made: list[FileSynchronizer] = []

    def make(folder: Path, tracker_port: int, port: int = 0, **kwargs: object) -> FileSynchronizer:
        with inside(folder):
            p = FileSynchronizer("127.0.0.1", tracker_port, port, "127.0.0.1", **kwargs)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make
    for p in made:
        p.exit()


FAST = PeerSettings(interval=0.2, first_delay=0.0, max_backoff=0.5, classic=False)


@pytest.fixture
def engine() -> Iterator[Callable[..., FileSynchronizer]]:
    """Start p2psync peers as the `p2psync sync` command runs them; all stopped after the test."""
    made: list[FileSynchronizer] = []

    def start(folder: Path, tracker_port: int, settings: PeerSettings = FAST, **kwargs: object) -> FileSynchronizer:
        folder.mkdir(exist_ok=True)
        peer = FileSynchronizer("127.0.0.1", tracker_port, 0, "127.0.0.1", folder=folder, settings=settings, **kwargs)
        peer.start()
        made.append(peer)
        return peer

    yield start
    for peer in made:
        peer.exit()


@pytest.fixture
def env(impl: ModuleType) -> dict[str, str]:
    """The environment that makes a child process use `impl`'s backend."""
    child = dict(os.environ)
    child.pop("P2PSYNC_NO_EXTENSIONS", None)
    if impl.__name__.endswith("_twin"):
        child["P2PSYNC_NO_EXTENSIONS"] = "1"
    return child
