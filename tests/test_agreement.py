"""`Folder.agree`: what a round records as agreed with the network. Its shortcut for a
version agreed on before (most paths of most rounds of a large tree) must leave
every row exactly as the full computation would."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.local import Folder, IndexRow
from p2psync.sync.versions import Version, merge

SHA = ("a" * 64, "b" * 64)
vectors = st.dictionaries(st.sampled_from(["PEERA", "PEERB", "PEERC"]), st.integers(1, 3), max_size=3).map(
    lambda counters: tuple(sorted(counters.items()))  # as every vector is made: sorted, one counter a peer
)
versions = st.builds(
    Version,
    mtime=st.integers(100, 101),
    size=st.just(5),
    sha256=st.sampled_from(SHA),
    mode=st.sampled_from([0o644, 0o600]),
    vector=vectors,
)


def reference(row: IndexRow, version: Version) -> IndexRow:
    """The row `agree` leaves, computed in full (its docstring's rule)."""
    first = row.base is None and bool(version.vector)
    vector = version.vector if first else merge(row.vector, version.vector)
    base = Version(version.mtime, version.size, version.sha256, version.mode, vector)
    if row.base == base and row.base is not None and row.base.vector == vector and row.vector == vector:
        return row
    return dataclasses.replace(row, vector=vector, base=base)


def _folder() -> Iterator[Folder]:
    with tempfile.TemporaryDirectory() as root:
        folder = Folder(root, state=True)
        try:
            yield folder
        finally:
            folder.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), versions), vectors, versions, st.booleans()), min_size=1, max_size=6))
def test_agree_leaves_each_row_as_the_full_rule_does(cases: list[tuple[Version | None, tuple, Version, bool]]) -> None:
    for folder in _folder():
        rows, agreed = {}, []
        for i, (base, row_vector, network, same) in enumerate(cases):
            if same and base is not None:  # the usual case: the very version agreed before, nothing since
                network, row_vector = base, base.vector
            row = IndexRow(f"f{i}", 5, 100 * 10**9, 0o644, i + 1, SHA[0], row_vector, base)
            rows[row.path] = row
            agreed.append((row.path, network))
        folder._rows.update(rows)
        folder.agree(agreed)
        changed = set()
        for path, network in agreed:
            want, got = reference(rows[path], network), folder._rows[path]
            assert got == want and got.vector == want.vector
            assert (got.base is None) == (want.base is None)
            assert got.base is None or want.base is None or got.base.vector == want.base.vector
            if want is not rows[path]:
                changed.add(path)
        assert set(folder.index.rows()) == changed  # only what changed is written
