"""The sync decision, without sockets or disks: unit cases, and a model of peers
and a tracker in which hypothesis interleaves edits, deletions and rounds."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2psync.sync import (
    MAX_VECTOR,
    Action,
    Deletion,
    Version,
    bump,
    clashes,
    conflict_name,
    covers,
    decide,
    is_conflict_copy,
    merge,
    pick,
    plan,
)

A = "a" * 64
B = "b" * 64
C = "c" * 64


def v(mtime: int, sha: str = A, **vector: int) -> Version:
    return Version(mtime, 1, sha, vector=tuple(sorted(vector.items())))


def m(mtime: int, mode: int, **vector: int) -> Version:
    """`v` with permission bits."""
    return Version(mtime, 1, A, mode, tuple(sorted(vector.items())))


@pytest.mark.parametrize(
    ("local", "base", "remote", "deleted", "action"),
    [
        (None, None, v(5, P=1), (), Action.FETCH),  # new elsewhere
        (v(5, P=1), v(5, P=1), v(5, P=1), (), Action.NOTHING),  # in sync
        (v(5, P=1), v(5, P=1), v(9, B, P=1, Q=2), (), Action.FETCH),  # changed there, from ours
        (v(5, P=1), v(5, P=1), v(3, B, P=1, Q=2), (), Action.FETCH),  # ... whatever the clocks say
        (v(9, B, P=2), v(5, P=1), v(5, P=1), (), Action.NOTHING),  # changed only here: ours goes out
        (v(7, B, P=2), v(5, P=1), v(9, C, P=1, Q=2), (), Action.CONFLICT),  # both changed, theirs newer
        (v(9, B, P=2), v(5, P=1), v(7, C, P=1, Q=2), (), Action.NOTHING),  # both, ours newer: they keep theirs
        (v(7, B, P=2), v(5, P=1), v(7, C, P=1, Q=2), (), Action.CONFLICT),  # a tie: the larger hash wins
        (v(7, C, P=2), v(5, P=1), v(7, B, P=1, Q=2), (), Action.NOTHING),
        (v(5, B, P=1), None, v(9, C, Q=1), (), Action.CONFLICT),  # made apart, never agreed: kept aside
        (v(5, P=1), None, v(9, P=1), (), Action.STAMP),  # the same bytes, newer stamp: no transfer
        (m(5, 0o644, P=1), m(5, 0o644, P=1), m(5, 0o755, P=1, Q=2), (), Action.STAMP),  # a chmod there
        (m(5, 0o755, P=2), m(5, 0o644, P=1), m(5, 0o644, P=1), (), Action.NOTHING),  # a chmod here goes out
        (m(5, 0o644, P=1), None, Version(5, 1), (), Action.NOTHING),  # a classic holder's: no mode to take
        (None, v(5, P=1), v(5, P=1), (Deletion(6, A, (("P", 6),)),), Action.NOTHING),  # deleted here: our tombstone
        (None, v(5, P=2), v(5, B, P=1), (), Action.NOTHING),  # an older version than the one deleted here
        (None, v(5, P=1), v(5, P=1), (), Action.FETCH),  # a tracker that lost the deletion: back, never lost
        (None, v(5, P=1), v(7, P=6, Q=9), (Deletion(6, A, (("P", 6),)),), Action.FETCH),  # made after: back
        (None, v(5, P=1), v(9, B, P=1, Q=2), (), Action.FETCH),  # deleted here, edited there: the edit wins
        (v(5, P=1), v(5, P=1), None, (Deletion(6, A),), Action.TRASH),  # deleted there
        (v(5, P=1), v(5, P=1), v(5, P=1), (Deletion(6, A),), Action.TRASH),  # ... still listed by a straggler
        (v(9, B, P=2), v(5, P=1), None, (Deletion(6, A),), Action.NOTHING),  # edited here after: the edit wins
        (v(5, B, P=1), v(5, P=1), None, (Deletion(6, A),), Action.NOTHING),  # another version than the deleted
        (v(7, P=1), v(7, P=1), None, (Deletion(6, A),), Action.NOTHING),  # newer than the deletion
        (None, None, v(5, P=1), (Deletion(6, A),), Action.NOTHING),  # never fetch a deleted version
        (v(5, P=1), v(5, P=1), None, (), Action.NOTHING),  # only here
    ],
)
def test_plan_cases(local, base, remote, deleted, action) -> None:
    assert plan(local, base, remote, deleted) is action


def test_pick_is_the_same_whatever_the_order() -> None:
    old, edit, apart = v(9, A, P=1), v(5, B, P=1, Q=2), v(7, C, R=1)
    for order in itertools.permutations([old, edit, apart]):
        assert pick(order) == apart  # `edit` replaces `old` despite its clock; `apart` is newer than `edit`
    assert pick([v(5, A), v(5, B)]) == v(5, B)  # a tie: the larger hash
    assert pick([]) is None


def test_bump_only_grows() -> None:
    first = bump((), "P", 100)
    assert first == (("P", 100),)
    again = bump(first, "P", 50)  # a clock that went back
    assert covers(again, first) and not covers(first, again)
    both = bump(again, "Q", 100)
    assert covers(both, again) and dict(both) == {"P": 101, "Q": 100}


@given(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 3)), min_size=1, max_size=300))
def test_a_vector_never_outgrows_what_receivers_take(edits: list[tuple[int, int]]) -> None:
    """However many peers edit a file in turn, its vector stays within MAX_VECTOR,
    keeps the peer that made the latest edit, and each edit still covers the one
    before it until the vector is full (past that, at worst a conflict copy)."""
    vector: tuple[tuple[str, int], ...] = ()
    for step, (peer, skew) in enumerate(edits):
        before = vector
        vector = bump(vector, f"p{peer}", 1_000 + step - skew)
        assert len(vector) <= MAX_VECTOR and f"p{peer}" in dict(vector)
        assert dict(vector)[f"p{peer}"] > dict(before).get(f"p{peer}", 0)
        if len(before) < MAX_VECTOR:
            assert covers(vector, before)
    assert len(merge(vector, tuple((f"q{i}", i) for i in range(MAX_VECTOR)))) <= MAX_VECTOR


def test_classic_versions_follow_the_classic_rule() -> None:
    """A classic holder's file has no hash and no vector: the newest mtime wins."""
    old, new = Version(5), Version(9)
    assert plan(old, old, new) is Action.FETCH
    assert plan(new, old, old) is Action.NOTHING
    assert plan(Version(5, 1, A, vector=(("P", 1),)), None, Version(9)) is Action.FETCH
    assert plan(Version(5, 1, A), None, Version(5)) is Action.NOTHING  # same mtime: taken as the same file


def test_conflict_names() -> None:
    name = conflict_name("docs/report.txt", 1_780_000_000, "ABC1234")
    assert name.startswith("docs/report.sync-conflict-") and name.endswith("-ABC1234.txt")
    assert conflict_name(".bashrc", 0, "P1") == ".bashrc.sync-conflict-19700101-000000-P1"
    assert conflict_name("Makefile", 0, "P1") == "Makefile.sync-conflict-19700101-000000-P1"
    assert is_conflict_copy(name) and not is_conflict_copy("docs/report.txt")


def test_clashes_let_the_folder_win() -> None:
    move_aside, skip = clashes({"x", "a/b"}, {"x/y", "a"})
    assert move_aside == {"x"}  # a file here where the network has a folder
    assert skip == {"a"}  # a file there where this peer has a folder
    assert clashes({"a/b/c"}, {"a/b/c", "d"}) == (set(), set())


# ------------------------------------------------------------------ a model swarm


@dataclass
class ModelPeer:
    name: str
    files: dict[str, Version] = field(default_factory=dict)
    base: dict[str, Version] = field(default_factory=dict)
    tombstones: dict[str, Deletion] = field(default_factory=dict)
    trash: list[Version] = field(default_factory=list)
    reported: dict[str, Version] = field(default_factory=dict)  # what the tracker has from this peer
    left: dict[str, object] = field(default_factory=dict)  # incremental: what each path was left as it was on


class Swarm:
    """Peers and a tracker that follow the real rules: the tracker lists, per path,
    the winning version of those its deletions do not kill, and every deletion,
    of what the peers reported (each reports its scan as its round begins)."""

    def __init__(self, peers: int, incremental: bool = False) -> None:
        self.peers = [ModelPeer(f"P{i}") for i in range(peers)]
        self.incremental = incremental  # a round passes over paths left as they were (the engine's way)
        self.clock = 1000
        self.shas = (f"{n:064x}" for n in itertools.count(1))
        self.replaced: set[str] = set()  # versions a later edit on the same peer replaced
        self.written: set[str] = set()
        self.deleted: set[str] = set()  # versions a user deleted
        self.last_deleted: dict[str, str] = {}

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def edit(self, peer: ModelPeer, path: str) -> None:
        self._write(peer, path, next(self.shas))

    def restore(self, peer: ModelPeer, path: str) -> None:
        """Bring back the bytes last deleted at `path` (from a backup): a new version."""
        if path in self.last_deleted:
            self._write(peer, path, self.last_deleted[path])

    def _write(self, peer: ModelPeer, path: str, sha: str) -> None:
        # What a real scan starts the new version's vector from: the file there, or
        # what the last scan saw (an edit after a deletion it never saw), or its tombstone.
        old = peer.files.get(path) or peer.reported.get(path) or peer.tombstones.get(path)
        self.written.add(sha)
        now = self.tick()  # a new version: the scan bumps this peer's counter in its vector
        peer.files[path] = Version(now, 1, sha, vector=bump(old.vector if old else (), peer.name, now))
        if isinstance(old, Version) and old.sha256 != sha:
            self.replaced.add(old.sha256 or "")  # the user's own edit replaced it

    def copy(self, peer: ModelPeer, path: str, other: ModelPeer) -> None:
        """Place on `peer` the bytes `other` holds at `path` (copied by hand, before
        or after the two ever met): a new version here, the same content."""
        if path in other.files and other is not peer:
            self._write(peer, path, other.files[path].sha256 or "")

    def delete(self, peer: ModelPeer, path: str) -> None:
        if path in peer.files:
            gone = peer.files.pop(path).sha256 or ""
            self.deleted.add(gone)
            self.last_deleted[path] = gone

    def listing(self) -> tuple[dict[str, Version], dict[str, list[Deletion]]]:
        deleted: dict[str, list[Deletion]] = {}
        for peer in self.peers:
            for path, tomb in peer.tombstones.items():
                deleted.setdefault(path, []).append(tomb)
        live: dict[str, Version] = {}
        for path in {p for peer in self.peers for p in peer.reported}:
            versions = [peer.reported[path] for peer in self.peers if path in peer.reported]
            alive = [x for x in versions if not any(d.kills(x) for d in deleted.get(path, ()))]
            chosen = pick(alive or versions)
            assert chosen is not None
            live[path] = chosen
        return live, deleted

    def round(self, peer: ModelPeer) -> bool:
        """One sync round of `peer` (scan, report, plan, act); whether it did anything."""
        acted = False
        for path, was in list(peer.base.items()):  # the scan: what is gone since we agreed
            if path not in peer.files and (path not in peer.tombstones or peer.tombstones[path].sha256 != was.sha256):
                now = self.tick()
                peer.tombstones[path] = Deletion(now, was.sha256, bump(was.vector, peer.name, now))
                acted = True  # reported: the others have something new to act on
        for path in list(peer.tombstones):
            if path in peer.files:
                del peer.tombstones[path]  # the name is back here: no longer a deletion of ours
        acted |= peer.reported != peer.files
        peer.reported = dict(peer.files)
        live, deleted = self.listing()
        for path in sorted(set(peer.files) | set(live) | set(peer.base)):
            local, remote = peer.files.get(path), live.get(path)
            if self.incremental and peer.left.get(path) == _inputs(local, remote, deleted.get(path, ())):
                continue  # left as it was on these very versions: the engine does not decide it again
            action = plan(local, peer.base.get(path), remote, deleted.get(path, ()))
            if action is not Action.NOTHING:
                acted = True
            if action is Action.CONFLICT:  # ours aside as a new file; the winner covers both
                assert local is not None and remote is not None
                now = self.tick()
                aside = replace(local, vector=bump((), peer.name, now))
                peer.files[conflict_name(path, local.mtime, peer.name)] = aside
                peer.files[path] = replace(remote, vector=merge(remote.vector, local.vector))
            elif action in (Action.FETCH, Action.STAMP):
                assert remote is not None
                peer.files[path] = remote
            elif action is Action.TRASH:
                assert local is not None
                peer.trash.append(peer.files.pop(path))
            if peer.files.get(path) is not None and remote is not None and peer.files[path].same_content(remote):
                # Agreeing as Folder.agree does: the first time, the network's lineage; after, both.
                here = peer.files[path]
                first = path not in peer.base and bool(remote.vector)
                peer.files[path] = replace(here, vector=remote.vector if first else merge(here.vector, remote.vector))
                peer.base[path] = peer.files[path]
            elif path not in peer.files and remote is None:
                peer.base.pop(path, None)
            if action is Action.NOTHING:  # as the engine notes it: after agreeing, which may renew the file here
                peer.left[path] = _inputs(peer.files.get(path), remote, deleted.get(path, ()))
            else:
                peer.left.pop(path, None)
        return acted


def _inputs(local: Version | None, remote: Version | None, deleted: list[Deletion]) -> object:
    """What a path was decided on, vectors included (the engine compares the very objects,
    which is stricter still: equal values in new objects are decided again)."""
    return (
        None if local is None else (local, local.vector),
        None if remote is None else (remote, remote.vector),
        tuple((d, d.vector) for d in deleted),
    )


PATHS = ["a", "b", "d/c"]
OPS = st.lists(
    st.tuples(
        st.sampled_from(["edit", "delete", "restore", "copy", "sync"]), st.integers(0, 2), st.sampled_from(PATHS)
    ),
    max_size=60,
)


@pytest.mark.parametrize("incremental", [False, True], ids=["deciding-every-path", "deciding-what-changed"])
@settings(max_examples=3000, deadline=None)
@given(OPS, st.integers(2, 3))
def test_any_interleaving_converges_and_loses_nothing(
    incremental: bool, ops: list[tuple[str, int, str]], peers: int
) -> None:
    swarm = Swarm(peers, incremental)
    for op, who, path in ops:
        peer = swarm.peers[who % peers]
        if op == "edit":
            swarm.edit(peer, path)
        elif op == "delete":
            swarm.delete(peer, path)
        elif op == "restore":
            swarm.restore(peer, path)
        elif op == "copy":
            swarm.copy(peer, path, swarm.peers[(who + 1) % peers])
        else:
            swarm.round(peer)
    for _ in range(12):  # everyone online again: rounds until nothing moves
        if not any([swarm.round(peer) for peer in swarm.peers]):
            break
    else:
        pytest.fail("the swarm did not settle")
    trees = [{p: x.sha256 for p, x in peer.files.items()} for peer in swarm.peers]
    assert all(tree == trees[0] for tree in trees), trees
    # Every version that no later edit replaced and no user deleted is still somewhere:
    # current under its name, a conflict copy, or in a trash.
    superseded = swarm.replaced | swarm.deleted
    kept = {x.sha256 for peer in swarm.peers for x in [*peer.files.values(), *peer.trash]}
    assert swarm.written - superseded <= kept


PATHS = st.lists(st.sampled_from(["a", "a/b", "a/b/c", "b", "c/d", "x.txt"]), unique=True)


@given(PATHS, PATHS)
def test_decide_settles_every_path_once_and_clashes_first(here: list[str], there: list[str]) -> None:
    ours = {p: Version(100, 1, "1" * 64, 0o644, (("AAA", 1),)) for p in here}
    theirs = {p: Version(200, 1, "2" * 64, 0o644, (("BBB", 1),)) for p in there}
    steps = decide(ours, theirs, {}, lambda path: None)
    assert [path for path, _ in steps] == sorted(set(here) | set(there))
    move_aside, skip = clashes(ours.keys(), theirs.keys())
    for path, action in steps:
        if path in move_aside:
            assert action is Action.ASIDE
        elif path in skip:
            assert action is Action.KEEP_FOLDER
        else:
            assert action is plan(ours.get(path), None, theirs.get(path))
