"""The version agreed on with the network: what `Folder.agree` records (its shortcut
for a version agreed on before, most paths of most rounds of a large tree, must
leave every row exactly as the full computation would), and how the index keeps it."""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.local import Folder, Index, IndexRow
from p2psync.local.index import INDEX_FILE
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


V2_FILES = """CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
    inode INTEGER NOT NULL, sha256 TEXT NOT NULL, vector TEXT NOT NULL,
    base_mtime INTEGER, base_size INTEGER, base_sha256 TEXT, base_vector TEXT
)"""


def test_the_agreed_mode_is_kept_across_restarts_and_an_older_index_is_migrated(tmp_path: Path) -> None:
    """The index of the last release (schema 2) kept the agreed version without its
    mode: it opens migrated in place, its rows intact, and from then on the mode
    is kept, so a restart agrees on nothing anew (and a stamp's mode is no edit)."""
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / INDEX_FILE)
    db.executescript(f"CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); {V2_FILES};")
    db.execute("INSERT INTO meta VALUES ('schema', '2')")
    db.execute(
        "INSERT INTO files VALUES ('old.txt', 5, 100000000000, 420, 7, ?, 'PEERA:1', 100, 5, ?, 'PEERA:1')",
        (SHA[0], SHA[0]),
    )
    db.commit()
    db.close()
    assert Index.read_only(str(state)).rows()["old.txt"].base == Version(100, 5, SHA[0], None)  # read as it is
    index = Index(str(state))
    old = index.rows()["old.txt"]
    assert old.base == Version(100, 5, SHA[0], None) and old.base.vector == (("PEERA", 1),)
    agreed = Version(100, 5, SHA[0], 0o755, (("PEERA", 1),))
    index.update([dataclasses.replace(old, path="new.txt", base=agreed)])
    index.close()
    again = Index(str(state))
    assert again.rows()["new.txt"].base == agreed and again.rows()["old.txt"] == old
    again.close()
    assert Index.read_only(str(state)).rows()["new.txt"].base == agreed
