"""The `backend` fixture really switches every module that uses the core, so the
peer and tracker tests run on both backends, not twice on one."""

from __future__ import annotations

from types import ModuleType

from p2psync import fetch, peer, server, tracker, transfer

USERS = (fetch, peer, server, tracker, transfer)


def test_every_user_of_the_core_is_switched(backend: str, impl: ModuleType) -> None:
    switched = 0
    for module in USERS:
        for name in ("Buffer", "LineSplitter", "recv_to_file", "send_from_file"):
            if hasattr(module, name):
                assert getattr(module, name) is getattr(impl, name), f"{module.__name__}.{name}"
                switched += 1
    assert switched >= 8
    assert backend == {"p2psync._twin": "python", "p2psync._speedups": "cython"}[impl.__name__]
