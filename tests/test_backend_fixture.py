"""The `backend` fixture really switches every module that uses the core, so the
peer and tracker tests run on both backends, not twice on one."""

from __future__ import annotations

from types import ModuleType

from p2psync import _core, transfer
from p2psync.local import folder, partial
from p2psync.peer import fetch, server, synchronizer
from p2psync.tracker import loop

from .conftest import CORE_NAMES

USERS = (_core, fetch, folder, partial, synchronizer, server, loop, transfer)


def test_every_user_of_the_core_is_switched(backend: str, impl: ModuleType) -> None:
    switched = set()
    for module in USERS:
        for name in CORE_NAMES:
            if hasattr(module, name):
                assert getattr(module, name) is getattr(impl, name), f"{module.__name__}.{name}"
                switched.add(f"{module.__name__}.{name}")
    assert {
        "p2psync.local.folder.link_new_files",
        "p2psync.transfer.read_small_file",
        "p2psync.transfer.recv_to_file",
        "p2psync._core.Buffer",
    } <= switched
    assert len(switched) >= 12
    assert backend == {"p2psync._twin": "python", "p2psync._speedups": "cython"}[impl.__name__]
