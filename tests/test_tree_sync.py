"""Folder sync end to end: real trackers and p2psync peers (the command's engine) on
loopback, on both backends: trees, deletions, the brake, conflicts, clashes,
ignore rules, modes, renames, races, and mixed networks with classic programs."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p2psync.config import DeleteLimit
from p2psync.errors import FolderGone
from p2psync.events import Event, Kind
from p2psync.ignore import IgnoreRules
from p2psync.local import STATE_DIR, TRASH_DIR, Folder, Index
from p2psync.paths import MAX_DEPTH
from p2psync.peer import FileSynchronizer, synchronizer
from p2psync.protocol import DirectoryEntry

from .classic_peer import ClassicPeer, recv_line
from .conftest import FAST
from .folders import tree
from .holders import Holder, sha
from .loopback import LOOPBACK, wait_until

pytestmark = pytest.mark.usefixtures("backend")


def trash(folder: Path) -> dict[str, bytes]:
    return tree(folder / STATE_DIR / TRASH_DIR) if (folder / STATE_DIR / TRASH_DIR).exists() else {}


def write(path: Path, data: str | bytes, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def converged(*folders: Path) -> Callable[[], bool]:
    return lambda: all(tree(f) == tree(folders[0]) for f in folders[1:])


# ------------------------------------------------------------------ trees


def test_three_peers_converge_from_different_trees(tmp_path: Path, start_tracker, engine) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(a / "docs/readme.txt", "read me")
    write(a / "tool.py", "print('synced too')")
    write(a / "big/blob.bin", os.urandom(3 << 20))  # large: the resumable, hashed-on-a-thread path
    os.chmod(a / "big/blob.bin", 0o750)
    write(b / "docs/notes/deep/n.txt", "deep")
    write(b / "run.sh", "#!/bin/sh\necho hi\n")
    os.chmod(b / "run.sh", 0o755)
    write(c / "c.txt", "from c")
    os.chmod(c / "c.txt", 0o4755)  # setuid never syncs
    tracker = start_tracker()
    for folder in (a, b, c):
        engine(folder, tracker.port)
    wait_until(lambda: len(tree(a)) == 6 and converged(a, b, c)(), 30, "three trees to become one")
    for folder in (a, b, c):
        assert stat.S_IMODE((folder / "big/blob.bin").stat().st_mode) == 0o750
        assert stat.S_IMODE((folder / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((a / "c.txt").stat().st_mode) == 0o755
    assert (c / "docs/notes/deep/n.txt").read_text() == "deep"


@pytest.mark.parametrize("how", ["once", "running"])
def test_starting_on_a_tree_takes_one_scan(tmp_path: Path, start_tracker, monkeypatch, how: str) -> None:
    """The first report to a tracker not yet known to be a p2psync one holds only
    classic names, so the whole tree goes out in a second round at once: that round
    reuses the scan the peer started with (100,000 files: ~0.7 s a scan) unless
    something wrote to the folder meanwhile."""
    a = tmp_path / "a"
    for i in range(3):
        write(a / f"sub{i}/f.txt", f"file {i}")
    write(a / "top.txt", "classic-shaped")
    scans = []
    original = Folder.scan
    monkeypatch.setattr(Folder, "scan", lambda self: scans.append(1) or original(self))
    tracker = start_tracker()
    settings = dataclasses.replace(FAST, interval=3600.0)  # no timed round: only the start's
    peer = FileSynchronizer("127.0.0.1", tracker.port, 0, "127.0.0.1", folder=a, settings=settings)
    try:
        if how == "once":
            assert peer.run_once().in_sync
        else:
            peer.start()
        wait_until(lambda: len(tracker.directory) == 4, 10, "the whole tree at the tracker")
        wait_until(lambda: peer.last_round is not None, 10, "the round on the whole tree")
    finally:
        peer.exit()
    assert len(scans) == 1
    write(a / "later.txt", "written after the start")  # a round after a wait still looks again
    peer = FileSynchronizer("127.0.0.1", tracker.port, 0, "127.0.0.1", folder=a, settings=FAST)
    try:
        peer.start()
        wait_until(lambda: "later.txt" in tracker.directory.entries(), 10, "a file written later to be reported")
    finally:
        peer.exit()


def test_a_round_decides_what_changed_not_the_whole_tree(tmp_path: Path, start_tracker, engine, monkeypatch) -> None:
    """Once in sync, a round decides only the paths whose file here, directory entry
    or deletions changed (a delta reply keeps the others' entries, a scan the others'
    files): one edit in a 100,000-file tree costs each peer a few paths, not all."""
    decided: list[int] = []
    original = synchronizer.decide_paths
    monkeypatch.setattr(
        synchronizer, "decide_paths", lambda paths, *rest: decided.append(len(paths)) or original(paths, *rest)
    )
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(40):
        write(a / f"d{i % 4}/f{i}.txt", f"file {i}")
    tracker = start_tracker()
    peers = [engine(a, tracker.port), engine(b, tracker.port)]
    wait_until(converged(a, b), 10, "b to have the tree")

    def settled_on_the_last_directory(peer: FileSynchronizer) -> bool:
        return peer._generation == tracker.directory.token and len(peer._as_decided) == 40

    wait_until(lambda: all(map(settled_on_the_last_directory, peers)), 10, "both to have settled every path")
    settled = len(decided)
    write(a / "d1/f5.txt", "edited on a")
    os.remove(a / "d2/f6.txt")
    wait_until(lambda: (b / "d1/f5.txt").read_text() == "edited on a" and not (b / "d2/f6.txt").exists(), 10, "b")
    wait_until(converged(a, b), 10, "the edit and the deletion everywhere")
    assert decided[settled:] and max(decided[settled:]) <= 4, decided[settled:]  # not the 40


def test_a_chmod_alone_reaches_the_other_peers(tmp_path: Path, start_tracker, engine) -> None:
    """A mode change moves no bytes and no mtime: the other peers take the new bits
    from the version vector that says it was made from theirs."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "bin/run.sh", "#!/bin/sh\necho hi\n")
    os.chmod(a / "bin/run.sh", 0o644)
    tracker = start_tracker()
    engine(a, tracker.port)
    peer_b = engine(b, tracker.port)
    wait_until(converged(a, b), 10, "b to have the script")
    seen: list[Event] = []
    peer_b.events.subscribe(seen.append)
    os.chmod(a / "bin/run.sh", 0o755)
    wait_until(lambda: stat.S_IMODE((b / "bin/run.sh").stat().st_mode) == 0o755, 10, "the chmod to reach b")
    wait_until(lambda: peer_b._local["bin/run.sh"].mode == 0o755, 10, "b to scan what it stamped")
    assert peer_b.folder.peer_id not in dict(peer_b._local["bin/run.sh"].vector)  # taken, not made, by b
    wait_until(lambda: any(e.kind is Kind.UPDATED for e in seen), 10, "b to say what it took")
    assert [(e.path, e.detail) for e in seen if e.kind is Kind.UPDATED] == [
        ("bin/run.sh", "mode 755 from another peer (the same bytes)")
    ]
    os.chmod(b / "bin/run.sh", 0o700)  # and back the other way
    wait_until(lambda: stat.S_IMODE((a / "bin/run.sh").stat().st_mode) == 0o700, 10, "b's chmod to reach a")
    assert tree(a) == tree(b) and not list(a.rglob("*sync-conflict*")) and not list(b.rglob("*sync-conflict*"))


def test_a_symlink_is_never_followed_or_synced(tmp_path: Path, start_tracker, engine) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside the folder")
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "real/file.txt", "real")
    os.symlink(outside, a / "linked")  # a folder symlink in a
    b.mkdir()
    os.symlink(outside, b / "real")  # b has a symlink where a has a folder
    tracker = start_tracker()
    engine(a, tracker.port)
    peer_b = engine(b, tracker.port)
    wait_until(lambda: "real/file.txt" in tracker.directory.entries(), 20, "a's report")
    wait_until(lambda: peer_b._tracker_extended and not peer_b._first_round, 10, "b's rounds")
    peer_b.sync()
    assert sorted(os.listdir(outside)) == ["secret.txt"]  # nothing was written through b's symlink
    assert "linked/secret.txt" not in tracker.directory.entries()  # nor served through a's


def test_a_scan_says_once_what_it_passes_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Symlinks, FIFOs and folders too deep do not sync: one log line says which,
    each path once; what the ignore rules leave out is not mentioned."""
    root = tmp_path / "f"
    write(root / "real.txt", "real")
    os.symlink(tmp_path, root / "to-outside")
    os.symlink("real.txt", root / "ignored-link")
    os.mkfifo(root / "pipe")
    deep = root.joinpath(*["d"] * MAX_DEPTH)
    write(deep / "far.txt", "too deep")
    synced = Folder(root, IgnoreRules.tree(["ignored-link"]), state=True)
    try:
        with caplog.at_level(logging.INFO, logger="p2psync"):
            assert set(synced.scan()) == {"real.txt"}
        said = [r.getMessage() for r in caplog.records if "not syncing" in r.getMessage()]
        assert len(said) == 1, said
        assert "1 FIFO, 1 folder too deep, 1 symlink" in said[0] and f"at most {MAX_DEPTH} deep" in said[0]
        assert "to-outside" in said[0] and "pipe" in said[0] and "/".join(["d"] * MAX_DEPTH) + "/" in said[0]
        assert "ignored-link" not in said[0]
        caplog.clear()
        os.symlink("real.txt", root / "second-link")
        with caplog.at_level(logging.INFO, logger="p2psync"):
            synced.scan()
            synced.scan()
        said = [r.getMessage() for r in caplog.records if "not syncing" in r.getMessage()]
        assert len(said) == 1 and "1 symlink in" in said[0] and said[0].endswith(": second-link"), said
    finally:
        synced.close()


def test_a_file_the_scan_cannot_read_is_said_once_and_never_taken_for_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unreadable (permissions, a bad disk) or changing while hashed: a file that
    synced before keeps its last version and makes no tombstone; one that cannot
    be read at all gets one warning."""
    root = tmp_path / "f"
    write(root / "known.txt", "synced before")
    write(root / "other.txt", "fine")
    synced = Folder(root, IgnoreRules.tree(), state=True)
    try:
        before = synced.scan()["known.txt"]
        write(root / "known.txt", "edited, then unreadable")
        write(root / "locked.txt", "never readable")
        hash_file = synced._hash
        unreadable = {"known.txt": errno.EACCES, "locked.txt": errno.EACCES}

        def failing_hash(path: str, key):  # root reads every file: the failure is made here
            if path in unreadable:
                raise OSError(unreadable[path], os.strerror(unreadable[path]))
            return hash_file(path, key)

        synced._hash = failing_hash  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="p2psync"):
            for _ in range(2):
                found = synced.scan()
        assert found["known.txt"] == before and "locked.txt" not in found and "other.txt" in found
        assert synced.own_deletions() == {}
        assert synced.not_synced == [
            ("known.txt", "cannot be read: Permission denied"),
            ("locked.txt", "cannot be read: Permission denied"),
        ]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 2 and all("cannot read" in w and "Permission denied" in w for w in warned), warned
        caplog.clear()
        unreadable["known.txt"] = errno.EAGAIN  # changing while hashed: no word, the last version stands
        with caplog.at_level(logging.INFO, logger="p2psync"):
            assert synced.scan()["known.txt"] == before
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        del unreadable["known.txt"]
        assert synced.scan()["known.txt"].sha256 == sha(b"edited, then unreadable")
    finally:
        synced.close()


NFD_FILE, NFC_FILE = "cafe\u0301.txt", "caf\u00e9.txt"
NFD_FOLDER, NFC_FOLDER = "re\u0301sume\u0301", "r\u00e9sum\u00e9"


def test_names_in_another_form_than_nfc_are_renamed_to_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Names travel in NFC: a file or folder named in NFD (as macOS writes them)
    is renamed to its NFC form and synced, never over a name that is taken."""
    root = tmp_path / "f"
    write(root / NFD_FILE, "from a mac")
    write(root / NFD_FOLDER / "cv.txt", "cv")
    write(root / "nai\u0308ve.txt", "nfd twin")  # its NFC form is taken: both stay as they are
    write(root / "na\u00efve.txt", "nfc twin")
    write(root / "build" / NFD_FILE, "ignored")  # left as it is: the rules leave it out
    write(root / "interrupted-e\u0301.txt", "a rename cut off by a kill -9")
    os.link(root / "interrupted-e\u0301.txt", root / "interrupted-\u00e9.txt")  # linked, not yet unlinked
    write(root / "ignored-e\u0301.log", "ignored")
    looking = Folder(root, IgnoreRules.tree(), read_only=True)
    try:
        assert NFC_FILE not in looking.scan() and (root / NFD_FILE).exists()  # `status` renames nothing
    finally:
        looking.close()
    synced = Folder(root, IgnoreRules.tree(["build/", "*.log"]), state=True)
    try:
        with caplog.at_level(logging.INFO, logger="p2psync"):
            found = set(synced.scan())
        assert found == {NFC_FILE, f"{NFC_FOLDER}/cv.txt", "na\u00efve.txt", "interrupted-\u00e9.txt"}
        assert "interrupted-e\u0301.txt" not in os.listdir(root)  # the interrupted rename is finished
        names = set(os.listdir(root))
        assert {NFC_FILE, NFC_FOLDER, "nai\u0308ve.txt", "na\u00efve.txt"} <= names
        assert NFD_FILE not in names and NFD_FOLDER not in names
        assert os.listdir(root / "build") == [NFD_FILE] and "ignored-e\u0301.log" in names
        assert (root / NFC_FILE).read_text() == "from a mac" and (root / NFC_FOLDER / "cv.txt").read_text() == "cv"
        assert (root / "nai\u0308ve.txt").read_text() == "nfd twin" and (
            root / "na\u00efve.txt"
        ).read_text() == "nfc twin"
        renamed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("renamed")]
        assert len(renamed) == 3, renamed
    finally:
        synced.close()


def test_a_file_named_in_nfd_reaches_the_other_peers_in_nfc(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / NFD_FOLDER / NFD_FILE, "nfd")
    b.mkdir()
    tracker = start_tracker()
    engine(a, tracker.port)
    engine(b, tracker.port)
    wait_until(lambda: tree(b) == {f"{NFC_FOLDER}/{NFC_FILE}": b"nfd"}, 20, "the file, named in NFC")
    assert tree(a) == tree(b)


def test_ignore_rules_and_the_defaults(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / ".p2psyncignore", "*.log\nbuild/\n!keep.log\n")
    for name in ("app.log", "keep.log", "build/out.bin", "src/main.py", "notes.txt~", ".#lock", "x.swp", "ok.txt"):
        write(a / name, name)
    tracker = start_tracker()
    engine(a, tracker.port)
    engine(b, tracker.port)
    wait_until(lambda: {"keep.log", "src/main.py", "ok.txt"} <= set(tree(b)), 20, "what a syncs")
    assert set(tracker.directory.entries()) == {"keep.log", "src/main.py", "ok.txt"}
    assert set(tree(b)) == {"keep.log", "src/main.py", "ok.txt"}  # the ignore file itself stays local


def test_a_sync_folder_nested_in_another_keeps_its_state_to_itself(tmp_path: Path, start_tracker, engine) -> None:
    """A folder synced on its own inside a synced folder: its files sync with the
    outer one, its `.p2psync` (peer id, index, trash) never does."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "inner/notes.txt", "inner file")
    write(a / "inner/.p2psync/trash/old.txt", "the inner folder's trash")
    Folder(a / "inner", IgnoreRules.tree(), state=True).close()  # its peer id and index, as its own sync leaves them
    assert (a / "inner" / STATE_DIR / "index.sqlite3").exists()
    b.mkdir()
    tracker = start_tracker()
    engine(a, tracker.port)
    engine(b, tracker.port)
    wait_until(lambda: "inner/notes.txt" in tree(b), 20, "the inner folder's file")
    assert set(tracker.directory.entries()) == {"inner/notes.txt"}
    assert set(tree(b)) == {"inner/notes.txt"}
    rules = IgnoreRules.tree()
    assert rules.why_not("inner/.p2psync/peer-id") == "p2psync's own state"
    assert not rules.descends("inner/.p2psync") and rules.descends("inner/.p2psync-not")
    assert rules.syncs("inner/x.p2psync/f") and rules.syncs(".p2psync-notes/f")


# ------------------------------------------------------------------ deletions


def test_a_deletion_reaches_a_peer_that_was_away_and_does_not_come_back(tmp_path, start_tracker, engine) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(a / "sub/gone.txt", "delete me")
    write(a / "stays.txt", "keep me")
    tracker = start_tracker()
    peers = [engine(f, tracker.port) for f in (a, b, c)]
    wait_until(converged(a, b, c), 20, "the first sync")
    wait_until(lambda: (c / "sub/gone.txt").exists(), 20, "c to have the file")
    peers[2].exit()  # c goes away
    (b / "sub/gone.txt").unlink()  # deleted on b
    wait_until(lambda: not (a / "sub/gone.txt").exists(), 20, "the deletion to reach a")
    assert trash(a) == {"sub/gone.txt": b"delete me"}
    # A folder emptied by the network's deletions goes too (just after the file: wait for it).
    wait_until(lambda: not (a / "sub").exists(), 20, "the emptied folder to go")
    peers[1].exit()  # b, which deleted it, leaves: the tracker still knows
    assert "sub/gone.txt" in tracker.directory.deletions()
    engine(c, tracker.port)  # c comes back holding the deleted version
    wait_until(lambda: not (c / "sub/gone.txt").exists(), 20, "c to apply the deletion")
    assert trash(c) == {"sub/gone.txt": b"delete me"}
    assert "sub/gone.txt" not in tracker.directory.entries()
    assert not (a / "sub/gone.txt").exists() and tree(a) == tree(c) == {"stays.txt": b"keep me"}


def test_a_newer_edit_wins_over_a_deletion(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "f.txt", "v1")
    tracker = start_tracker()
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(converged(a, b), 20, "the first sync")
    wait_until(lambda: (b / "f.txt").exists(), 20, "b to have it")
    pb.exit()
    write(b / "f.txt", "edited on b while away")
    (a / "f.txt").unlink()
    wait_until(lambda: "f.txt" in tracker.directory.deletions(), 20, "a's deletion")
    engine(b, tracker.port)
    wait_until(lambda: (a / "f.txt").exists(), 20, "the edit to come back to a")
    assert (a / "f.txt").read_text() == "edited on b while away"
    assert pa.is_alive()


def test_the_brake_holds_a_mass_deletion_until_confirmed(tmp_path: Path, start_tracker, engine, caplog) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(20):
        write(a / f"d/f{i:02}.txt", f"file {i}")
    tracker = start_tracker()
    engine(a, tracker.port)
    pb = engine(b, tracker.port)
    wait_until(lambda: len(tree(b)) == 20, 20, "the first sync")
    for i in range(15):
        (a / f"d/f{i:02}.txt").unlink()
    with caplog.at_level(logging.WARNING, "p2psync"):
        wait_until(lambda: pb.held_back == 15, 20, "the brake to hold the deletions")
    assert len(tree(b)) == 20  # nothing deleted ...
    assert any("not deleting 15" in r.getMessage() and "--max-delete" in r.getMessage() for r in caplog.records)
    write(a / "d/new.txt", "syncing goes on")  # ... and everything else still syncs
    wait_until(lambda: (b / "d/new.txt").exists(), 20, "a new file despite the brake")
    pb.exit()
    engine(b, tracker.port, max_delete=DeleteLimit.parse("100%"))  # the confirmation
    wait_until(lambda: len(tree(b)) == 6, 20, "the confirmed deletions")
    assert len(trash(b)) == 15 and tree(a) == tree(b)


# ------------------------------------------------------------------ conflicts


def test_a_conflict_made_apart_keeps_both_versions_everywhere(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "doc/plan.txt", "base", 1_700_000_000)
    tracker = start_tracker()
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(lambda: (b / "doc/plan.txt").exists(), 20, "the first sync")
    wait_until(lambda: pb.folder.base("doc/plan.txt") is not None, 20, "b to agree on it")
    pa.exit()
    pb.exit()
    write(a / "doc/plan.txt", "a's edit", 1_700_000_100)
    write(b / "doc/plan.txt", "b's edit, newer", 1_700_000_200)
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(lambda: len(tree(a)) == 2 and converged(a, b)(), 30, "both versions on both peers")
    files = tree(a)
    assert files["doc/plan.txt"] == b"b's edit, newer"
    (copy,) = [p for p in files if p != "doc/plan.txt"]
    assert copy.startswith("doc/plan.sync-conflict-20231114-") and copy.endswith(f"-{pa.folder.peer_id}.txt")
    assert files[copy] == b"a's edit"


def test_a_folder_copied_with_its_state_becomes_a_peer_of_its_own(
    tmp_path: Path, start_tracker, engine, caplog: pytest.LogCaptureFixture
) -> None:
    """`cp -a` of a synced folder, .p2psync and all (seeding another machine):
    the copy gets a peer id of its own (ids name conflict copies and sign
    version vectors), and edits made apart on the two are a conflict with both
    versions kept. Moved, a folder stays the peer it was."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "plan.txt", "base", 1_700_000_000)
    tracker = start_tracker()
    pa = engine(a, tracker.port)
    wait_until(lambda: pa.folder.base("plan.txt") is not None, 20, "a to agree with the network")
    original = pa.folder.peer_id
    pa.exit()
    shutil.copytree(a, b, symlinks=True)
    write(a / "plan.txt", "a's edit", 1_700_000_100)
    write(b / "plan.txt", "b's edit, newer", 1_700_000_200)
    with caplog.at_level(logging.INFO, logger="p2psync"):
        pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    assert pa.folder.peer_id == original and pb.folder.peer_id != original
    assert any("was copied from another folder" in r.getMessage() for r in caplog.records)
    wait_until(lambda: len(tree(a)) == 2 and converged(a, b)(), 30, "both versions on both peers")
    files = tree(a)
    assert files["plan.txt"] == b"b's edit, newer"
    (copy,) = [p for p in files if p != "plan.txt"]
    assert files[copy] == b"a's edit" and copy.endswith(f"-{original}.txt")
    pa.exit()
    pb.exit()
    moved = tmp_path / "moved"
    os.rename(b, moved)
    assert engine(moved, tracker.port).folder.peer_id == pb.folder.peer_id


def test_an_index_keeps_its_peer_id_unless_it_was_made_somewhere_else() -> None:
    index = Index(None)
    first = index.peer_id()
    assert not index.settle_place(100, "laptop", "/home/me/docs")  # first start: noted
    assert not index.settle_place(200, "laptop", "/home/me/docs") and index.peer_id() == first  # remounted, restored
    assert not index.settle_place(200, "laptop", "/home/me/moved") and index.peer_id() == first  # moved (same inode)
    assert index.settle_place(300, "desktop", "/home/me/moved")  # copied to another machine
    assert index.peer_id() != first
    assert not index.settle_place(300, "desktop", "/home/me/moved")
    index.close()


def test_the_same_bytes_on_both_sides_are_no_conflict(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "same.txt", "identical", 1_700_000_000)
    write(b / "same.txt", "identical", 1_700_000_500)
    tracker = start_tracker()
    engine(a, tracker.port)
    pb = engine(b, tracker.port)
    wait_until(lambda: int((a / "same.txt").stat().st_mtime) == 1_700_000_500, 20, "the newer stamp")
    pb.sync()
    assert set(tree(a)) == set(tree(b)) == {"same.txt"}


def test_a_copy_placed_on_two_peers_then_edited_on_one_is_no_conflict(tmp_path: Path, start_tracker, engine) -> None:
    """The same bytes placed on two peers before they ever met carry two lineages. The
    peer that agrees takes the network's; an edit made from it elsewhere then simply
    replaces its copy (it was never changed here), with no conflict copy."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "same.txt", "identical", 1_700_000_000)
    write(b / "same.txt", "identical", 1_700_000_500)  # b's is listed (newer); a agrees by a stamp
    tracker = start_tracker()
    rare = dataclasses.replace(FAST, interval=3600.0)  # b rounds only when the test says so
    pb = engine(b, tracker.port, rare)
    wait_until(lambda: pb.folder.base("same.txt") is not None, 20, "b's first round")
    wait_until(lambda: "same.txt" in tracker.directory.entries(), 20, "the tracker to list b's copy")
    pa = engine(a, tracker.port)
    wait_until(lambda: pa.folder.base("same.txt") is not None, 20, "a to agree on b's copy")
    assert int((a / "same.txt").stat().st_mtime) == 1_700_000_500  # stamped, not fetched
    write(b / "same.txt", "b's edit", 1_700_001_000)
    pb.sync()  # b reports its edit, made from its own copy, before it ever heard of a's lineage
    wait_until(lambda: (a / "same.txt").read_bytes() == b"b's edit", 20, "the edit to reach a")
    assert set(tree(a)) == {"same.txt"}  # a conflict copy would be made before the fetch
    assert trash(a) == {}


def test_a_file_and_a_folder_of_one_name_end_in_a_conflict_copy(tmp_path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x", "x is a file here")
    write(b / "x/inside.txt", "x is a folder here")
    tracker = start_tracker()
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(lambda: (a / "x/inside.txt").exists() and len(tree(b)) == 2, 30, "the clash to resolve")
    wait_until(converged(a, b), 20, "the same tree")
    (copy,) = [p for p in tree(a) if p != "x/inside.txt"]
    assert copy.startswith("x.sync-conflict-") and tree(a)[copy] == b"x is a file here"
    for _ in range(3):  # and it stays resolved: no loop
        pa.sync()
        pb.sync()
    assert tree(a) == tree(b)


def test_an_edit_racing_a_download_is_never_overwritten(tmp_path: Path, engine) -> None:
    """The install compares the file with what the decision saw: a local edit made
    while the download ran wins, and is kept."""
    folder = tmp_path / "b"
    write(folder / "race.txt", "old", 1_700_000_000)
    new = b"remote version"
    edited = threading.Event()

    def slow_answer(conn: socket.socket, line: bytes) -> None:
        conn.sendall(b"Content-Length: %d\n" % len(new) + new[:4])
        write(folder / "race.txt", "local edit during the download")  # the user edits meanwhile
        edited.set()
        conn.sendall(new[4:])

    holder = Holder(slow_answer)
    entry = DirectoryEntry(LOOPBACK, holder.port, 1_800_000_000, len(new), sha(new), vector=(("HOLDER", 1),))
    tracker = _tracker_answering(lambda: json.dumps({"p2psync": 1, "files": {"race.txt": entry.to_json()}}))
    try:
        peer = engine(folder, tracker.getsockname()[1])
        wait_until(edited.is_set, 20, "the download to start")
        wait_until(lambda: not peer._fetcher._in_flight, 20, "the download to end")
        peer.sync()
        assert (folder / "race.txt").read_text() == "local edit during the download"
    finally:
        holder.close()
        tracker.close()


def _tracker_answering(reply: Callable[[], str]) -> socket.socket:
    """A hand-made tracker answering every message with `reply()`."""
    server = socket.create_server((LOOPBACK, 0))

    def serve(conn: socket.socket) -> None:
        held = b""
        with conn:
            try:
                while True:
                    _, held = recv_line(conn, held)
                    conn.sendall(reply().encode() + b"\n")
            except OSError:
                return

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def test_one_bad_entry_poisons_nothing(tmp_path: Path, engine, caplog) -> None:
    good = b"still fetched"
    holder = Holder(lambda conn, line: conn.sendall(b"Content-Length: %d\n" % len(good) + good))
    entries = {
        "bad-port": {"ip": LOOPBACK, "port": "x", "mtime": 1},
        "bad-mtime": {"ip": LOOPBACK, "port": holder.port, "mtime": "yesterday"},
        "not-an-object": 5,
        "good.txt": {
            "ip": LOOPBACK,
            "port": holder.port,
            "mtime": 1_800_000_000,
            "size": len(good),
            "sha256": sha(good),
        },
    }
    tracker = _tracker_answering(lambda: json.dumps(entries))  # a classic-shaped relay
    try:
        with caplog.at_level(logging.WARNING, "p2psync"):
            engine(tmp_path / "b", tracker.getsockname()[1])
            wait_until(lambda: (tmp_path / "b/good.txt").exists(), 20, "the good entry")
        assert (tmp_path / "b/good.txt").read_bytes() == good
        assert holder.requests and all(r.startswith(b"good.txt") for r in holder.requests)  # nothing else asked
        warned = " ".join(r.getMessage() for r in caplog.records)
        assert all(name in warned for name in ("bad-port", "bad-mtime", "not-an-object"))
    finally:
        holder.close()
        tracker.close()


def test_a_rename_is_copied_locally_not_fetched(tmp_path: Path, start_tracker, engine, caplog) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(200_000)
    write(a / "old/name.bin", data)
    tracker = start_tracker()
    engine(a, tracker.port)
    pb = engine(b, tracker.port)
    wait_until(lambda: (b / "old/name.bin").exists(), 20, "the first sync")
    with caplog.at_level(logging.INFO, "p2psync"):
        (a / "new").mkdir()
        (a / "old/name.bin").rename(a / "new/name.bin")
        wait_until(lambda: tree(b) == {"new/name.bin": data}, 20, "the rename at b")
        wait_until(
            lambda: any("copied new/name.bin from old/name.bin" in r.getMessage() for r in caplog.records),
            20,
            "the copy's log line",
        )
    assert trash(b) == {"old/name.bin": data}
    assert pb.is_alive()


# ------------------------------------------------------------------ the index


def test_the_index_survives_a_restart_and_a_corrupt_one_is_rebuilt(tmp_path: Path, monkeypatch, caplog) -> None:
    from p2psync.local import folder as files

    folder = tmp_path / "f"
    for i in range(10):
        write(folder / f"sub/{i}.bin", os.urandom(1000))
    reads: list[int] = []
    real = files.hash_fd
    monkeypatch.setattr(files, "hash_fd", lambda fd: reads.append(fd) or real(fd))
    first = files.Folder(folder, files.IgnoreRules.tree(), state=True)
    scanned = first.scan()
    first.close()
    assert len(reads) == 10
    again = files.Folder(folder, files.IgnoreRules.tree(), state=True)
    assert again.scan() == scanned and len(reads) == 10  # a restart rehashes nothing
    again.close()
    (folder / STATE_DIR / "index.sqlite3").write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        rebuilt = files.Folder(folder, files.IgnoreRules.tree(), state=True)
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1
    assert {p: f.sha256 for p, f in rebuilt.scan().items()} == {p: f.sha256 for p, f in scanned.items()}
    assert rebuilt.own_deletions() == {}  # nothing in the folder taken for deleted
    rebuilt.close()
    assert tree(folder).keys() == {f"sub/{i}.bin" for i in range(10)}


# ------------------------------------------------------------------ mixed networks


def test_a_classic_peer_on_a_p2psync_tracker_sees_only_what_it_could_have_made(
    tmp_path: Path, start_tracker, engine
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write(ours / "flat.txt", "flows both ways")
    write(ours / "sub/nested.txt", "p2psync peers only")
    write(ours / "script.py", "never offered to a classic peer")
    theirs.mkdir()
    write(theirs / "classic.txt", "from the classic peer")
    tracker = start_tracker()
    engine(ours, tracker.port)
    wait_until(lambda: "sub/nested.txt" in tracker.directory.entries(), 20, "our report")
    classic = ClassicPeer(theirs, (LOOPBACK, tracker.port))
    directory = classic.report()
    assert set(directory) == {"flat.txt", "classic.txt"}  # its own, and ours but no '/', no *.py, no deletions
    entry = directory["flat.txt"]
    assert classic.fetch("flat.txt", entry["ip"], entry["port"], entry["mtime"]) == b"flows both ways"
    wait_until(lambda: (ours / "classic.txt").exists(), 20, "the classic peer's file at ours")
    assert (ours / "classic.txt").read_text() == "from the classic peer"


def test_a_p2psync_peer_on_a_classic_tracker_reports_only_classic_names(tmp_path: Path, engine) -> None:
    from .test_peer import _classic_tracker

    a = tmp_path / "a"
    write(a / "flat.txt", "flat")
    write(a / "sub/nested.txt", "nested")
    write(a / "tool.py", "program")
    seen: list[bytes] = []
    stop = threading.Event()
    with socket.create_server((LOOPBACK, 0)) as server:
        thread = threading.Thread(target=_classic_tracker, args=(server, stop, seen), daemon=True)
        thread.start()
        try:
            peer = engine(a, server.getsockname()[1])
            wait_until(lambda: len(seen) >= 3, 20, "a few rounds")
            assert peer._tracker_extended is False
        finally:
            stop.set()
            thread.join(5)
    names = {f["name"] for line in seen for f in json.loads(line).get("files", [])}
    assert names == {"flat.txt"}
    assert all("deleted" not in json.loads(line) for line in seen)  # no tombstones for a classic tracker


def test_old_trash_and_old_own_deletions_are_let_go(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "one.txt", "one")
    write(a / "two.txt", "two")
    tracker = start_tracker()
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(lambda: len(tree(b)) == 2, 20, "the first sync")
    (b / "one.txt").unlink()
    (b / "two.txt").unlink()
    wait_until(lambda: len(trash(a)) == 2, 20, "both in a's trash")
    pa.exit()
    pb.exit()
    folder = Folder(a, IgnoreRules.tree(), state=True)  # as a restarted peer opens it
    try:
        day = 86400
        folder.expire(30 * day, now=time.time() + 29 * day)
        assert len(trash(a)) == 2 and set(folder.own_deletions()) == {"one.txt", "two.txt"}  # kept, and reported
        folder.expire(30 * day, now=time.time() + 31 * day)
        assert trash(a) == {} and folder.own_deletions() == {}
    finally:
        folder.close()


def test_watching_sees_changes_in_subfolders(tmp_path: Path, start_tracker, engine) -> None:
    pytest.importorskip("watchdog.observers", reason="the watch extra is not installed")
    a = tmp_path / "a"
    write(a / "deep/er/first.txt", "first")
    tracker = start_tracker()
    engine(a, tracker.port, interval=3600, watch=True)  # no timed round for an hour: only the watcher
    wait_until(lambda: "deep/er/first.txt" in tracker.directory.entries(), 20, "the first report")
    write(a / "deep/er/new.txt", "written later, two folders down")
    wait_until(lambda: "deep/er/new.txt" in tracker.directory.entries(), 20, "the watched change")
    (a / "deep/new-folder").mkdir()
    write(a / "deep/new-folder/inside.txt", "in a folder made after the watch began")
    wait_until(lambda: "deep/new-folder/inside.txt" in tracker.directory.entries(), 20, "a new folder's file")


def test_a_file_brought_back_is_copied_from_the_trash(tmp_path: Path, start_tracker, engine, caplog) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    data = os.urandom(300_000)
    write(a / "photos/cat.jpg", data)
    tracker = start_tracker()
    engine(a, tracker.port)
    engine(b, tracker.port)
    wait_until(lambda: (b / "photos/cat.jpg").exists(), 20, "the first sync")
    (a / "photos/cat.jpg").unlink()
    wait_until(lambda: trash(b) == {"photos/cat.jpg": data}, 20, "the deletion at b")
    with caplog.at_level(logging.INFO, "p2psync"):
        write(a / "photos/cat.jpg", data)  # brought back from a backup: a new version, the same bytes
        wait_until(lambda: (b / "photos/cat.jpg").exists(), 20, "the file back at b")
        # The event is said just after the copy is in place: wait for it, do not race it.
        wait_until(
            lambda: any(
                "copied photos/cat.jpg from .p2psync/trash/photos/cat.jpg" in r.getMessage() for r in caplog.records
            ),
            20,
            "the copy's log line",
        )
    assert (b / "photos/cat.jpg").read_bytes() == data


def test_the_trash_never_overwrites_an_earlier_copy(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    tracker = start_tracker()
    engine(a, tracker.port)
    engine(b, tracker.port)
    for n, text in enumerate(["first life", "second life"]):
        write(a / "notes/n.txt", text)
        wait_until(lambda text=text: (b / "notes/n.txt").exists() and (b / "notes/n.txt").read_text() == text, 20, text)
        (a / "notes/n.txt").unlink()
        wait_until(lambda n=n: len(trash(b)) == n + 1, 20, f"deletion {n + 1} at b")
    assert trash(b) == {"notes/n.txt": b"first life", "notes/n.txt.1": b"second life"}


def test_a_second_p2psync_on_one_folder_is_refused_and_a_missing_index_is_said(tmp_path: Path, caplog) -> None:
    from p2psync.errors import ConfigError

    folder = tmp_path / "f"
    write(folder / "x.txt", "x")
    first = Folder(folder, IgnoreRules.tree(), state=True)
    try:
        with pytest.raises(ConfigError, match="already syncing"):
            Folder(folder, IgnoreRules.tree(), state=True)
    finally:
        first.close()
    again = Folder(folder, IgnoreRules.tree(), state=True)  # the lock went with the first
    again.close()
    for name in os.listdir(folder / STATE_DIR):
        if name.startswith("index.sqlite3"):
            os.unlink(folder / STATE_DIR / name)
    with caplog.at_level(logging.WARNING):
        rebuilt = Folder(folder, IgnoreRules.tree(), state=True)
    assert sum("missing; rebuilding" in r.getMessage() for r in caplog.records) == 1
    assert set(rebuilt.scan()) == {"x.txt"} and rebuilt.own_deletions() == {}
    rebuilt.close()


def test_small_files_from_many_holders_all_arrive(tmp_path: Path, start_tracker, engine) -> None:
    """More holders than fetch workers: every holder's small files are fetched in one round."""
    tracker = start_tracker()
    holders = [tmp_path / f"h{i}" for i in range(5)]
    for i, folder in enumerate(holders):
        for j in range(3):
            write(folder / f"from-{i}/f{j}.txt", f"{i}.{j}")
        engine(folder, tracker.port, interval=3600)
    wait_until(lambda: len(tracker.directory) == 15, 20, "every holder's report")
    receiver = engine(tmp_path / "r", tracker.port, interval=3600)
    wait_until(lambda: not receiver._first_round, 20, "the receiver's first round")
    receiver.sync()
    assert len(tree(tmp_path / "r")) == 15


def test_peers_follow_the_directory_by_deltas(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "one.txt", "1")
    tracker = start_tracker()
    pa, pb = engine(a, tracker.port), engine(b, tracker.port)
    wait_until(converged(a, b), 20, "the first sync")
    # Both now say which generation they hold, so their idle rounds get deltas of a few bytes.
    conns = tracker._connections
    wait_until(lambda: all(c.since == tracker.directory.token for c in list(conns.values())), 20, "deltas")
    write(a / "sub/two.txt", "2")
    (a / "one.txt").unlink()
    wait_until(lambda: tree(b) == {"sub/two.txt": b"2"}, 20, "the change, by a delta")
    assert trash(b) == {"one.txt": b"1"}
    assert pb._listing is not None and set(pb._listing.files) == {"sub/two.txt"}
    assert set(pb._listing.deleted) == {"one.txt"} and pa.is_alive()


def test_a_scan_refuses_a_folder_whose_state_was_removed_or_replaced(tmp_path: Path) -> None:
    """The state folder is the marker: its files missing with it (an emptied
    folder, an empty mount point) are not deletions, nor are they under another
    `.p2psync` (a different drive mounted there)."""
    folder = tmp_path / "f"
    write(folder / "x.txt", "x")
    synced = Folder(folder, IgnoreRules.tree(), state=True)
    try:
        assert set(synced.scan()) == {"x.txt"}
        os.rename(folder / STATE_DIR, tmp_path / "elsewhere")
        (folder / STATE_DIR).mkdir()
        with pytest.raises(FolderGone, match="not the one this peer opened"):
            synced.scan()
        (folder / STATE_DIR).rmdir()
        (folder / "x.txt").unlink()
        with pytest.raises(FolderGone, match="was removed"):
            synced.scan()
        assert synced.own_deletions() == {}  # x.txt was never taken for deleted
    finally:
        synced.close()
