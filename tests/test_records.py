"""quick_frozen: the same records as the dataclass's own __init__ makes, only quicker to build."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync.protocol.messages import DirectoryEntry
from p2psync.records import quick_frozen
from p2psync.sync.versions import Version


@dataclass(frozen=True)
class _Plain:
    a: int
    b: str = "b"
    c: tuple[int, ...] = field(default=(), compare=False)


@quick_frozen
@dataclass(frozen=True)
class _Quick:
    a: int
    b: str = "b"
    c: tuple[int, ...] = field(default=(), compare=False)


@given(st.integers(), st.text(), st.tuples(st.integers()))
def test_builds_what_the_dataclass_builds(a: int, b: str, c: tuple[int, ...]) -> None:
    for args, kwargs in (((a,), {}), ((a, b), {}), ((a,), {"c": c}), ((), {"a": a, "b": b, "c": c})):
        plain, quick = _Plain(*args, **kwargs), _Quick(*args, **kwargs)
        assert dataclasses.astuple(plain) == dataclasses.astuple(quick)
        assert repr(quick) == repr(plain).replace("_Plain", "_Quick")
        assert quick == _Quick(*args, **kwargs) and hash(quick) == hash(_Quick(*args, **kwargs))
        assert dataclasses.replace(quick, b="other").b == "other"
        with pytest.raises(dataclasses.FrozenInstanceError):
            quick.a = 1  # type: ignore[misc]


def test_the_records_of_a_round_still_behave() -> None:
    entry = DirectoryEntry("127.0.0.1", 9, 5, size=3, sha256="a" * 64)
    assert entry.sources == () and entry.mode is None and entry.version() == Version(5, 3, "a" * 64)
    assert Version(5, 3, "a" * 64, vector=(("p", 1),)) == Version(5, 3, "a" * 64)  # the vector is not compared
    with pytest.raises(TypeError):
        DirectoryEntry("127.0.0.1")  # type: ignore[call-arg]  # required fields are still required
    with pytest.raises(TypeError):
        DirectoryEntry("127.0.0.1", 9, 5, nonsense=1)  # type: ignore[call-arg]


def test_refuses_what_it_cannot_keep() -> None:
    @dataclass
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None: ...

    @dataclass(frozen=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    for cls in (Mutable, Checked, Factory):
        with pytest.raises(TypeError):
            quick_frozen(cls)
