"""`p2psync sync --once` and `p2psync status`, as a script runs them: child processes
against real trackers and peers on loopback, on both backends, in each state
(in sync, behind, failing, held back by the brake, unreachable)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2psync.status import SCHEMA_VERSION, schema_keys

from .loopback import LOOPBACK, free_port, wait_until

pytestmark = pytest.mark.usefixtures("backend")

P2PSYNC = [sys.executable, "-m", "p2psync.cli"]


def write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*P2PSYNC, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    return run


@pytest.fixture
def holder_of_nothing() -> Iterator[Callable[[int, list[str]], socket.socket]]:
    """A classic-shaped peer that tells the tracker it holds files, on a port where nothing
    serves: whoever fetches them from it fails."""
    made: list[socket.socket] = []

    def report(tracker_port: int, names: list[str]) -> socket.socket:
        sock = socket.create_connection((LOOPBACK, tracker_port))
        files = [{"name": n, "mtime": 1_700_000_000} for n in names]
        sock.sendall(json.dumps({"port": free_port(), "files": files}).encode() + b"\n")
        sock.recv(65536)
        made.append(sock)
        return sock

    yield report
    for sock in made:
        sock.close()


def status(cli, folder: Path, *extra: str) -> tuple[int, dict]:
    result = cli("status", str(folder), "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    doc = json.loads(result.stdout)
    assert set(schema_keys()) <= doc.keys() and doc["schema"] == SCHEMA_VERSION
    for key in ("behind", "only_local"):
        assert all({"path", "why"} <= item.keys() for item in doc[key])
    assert all(isinstance(p, str) for p in doc["conflicts"] + doc["trash"])
    return result.returncode, doc


# ------------------------------------------------------------------ --once


def test_once_in_sync_exits_0_with_the_files(cli, tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "docs/report.txt", "from a")
    tracker = start_tracker()
    engine(a, tracker.port)
    wait_until(lambda: "docs/report.txt" in tracker.directory.entries(), 20, "a to report")
    result = cli("sync", str(b), "--once", "--port", "0", "--tracker", f"{LOOPBACK}:{tracker.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (b / "docs/report.txt").read_text() == "from a"
    assert "in sync with" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr  # not a terminal: no control codes
    assert "fetched docs/report.txt" in result.stderr  # one plain line per file ...
    assert "round: 1 fetched" in result.stderr  # ... and one for the round


def test_once_with_a_failing_holder_exits_1_naming_the_path(
    cli, tmp_path: Path, start_tracker, holder_of_nothing
) -> None:
    tracker = start_tracker()
    holder_of_nothing(tracker.port, ["gone.txt"])
    result = cli("sync", str(tmp_path / "b"), "--once", "--port", "0", "--tracker", f"{LOOPBACK}:{tracker.port}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not in sync: gone.txt: failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_once_held_back_by_the_brake_exits_1_until_confirmed(cli, tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(12):
        write(a / f"f{i:02}.txt", f"file {i}")
    tracker = start_tracker()
    pa = engine(a, tracker.port)
    wait_until(lambda: len(tracker.directory.entries()) == 12, 20, "a to report")
    join = ("--port", "0", "--tracker", f"{LOOPBACK}:{tracker.port}")
    assert cli("sync", str(b), "--once", *join).returncode == 0
    for i in range(12):
        (a / f"f{i:02}.txt").unlink()
    wait_until(lambda: not tracker.directory.entries(), 20, "the deletions to reach the tracker")
    held = cli("sync", str(b), "--once", *join)
    assert held.returncode == 1, held.stdout + held.stderr
    assert "deletion held back by the brake" in held.stdout and "--max-delete" in held.stderr
    assert len(list(b.glob("*.txt"))) == 12
    code, doc = status(cli, b, "--tracker", f"{LOOPBACK}:{tracker.port}")
    assert code == 1 and doc["held_back"] == 12
    confirmed = cli("sync", str(b), "--once", "--max-delete", "100%", *join)
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert not list(b.glob("*.txt")) and len(list((b / ".p2psync/trash").glob("*.txt"))) == 12
    assert pa.is_alive()


def test_once_errors_exit_2_in_one_line(cli, tmp_path: Path) -> None:
    unreachable = cli("sync", str(tmp_path / "b"), "--once", "--port", "0", "--tracker", f"{LOOPBACK}:{free_port()}")
    assert unreachable.returncode == 2
    assert "cannot sync with the tracker" in unreachable.stderr and "Traceback" not in unreachable.stderr
    alone = cli("sync", str(tmp_path / "c"), "--once")
    assert alone.returncode == 2 and "--once joins a running tracker" in alone.stderr


# ------------------------------------------------------------------ status


def test_status_follows_the_folder_through_its_states(cli, tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "shared.txt", "v1")
    b.mkdir()
    code, doc = status(cli, b)
    assert code == 1 and doc["checked"] == "never synced"

    tracker = start_tracker()
    where = f"{LOOPBACK}:{tracker.port}"
    pa = engine(a, tracker.port)
    wait_until(lambda: "shared.txt" in tracker.directory.entries(), 20, "a to report")
    code, doc = status(cli, b, "--tracker", where)
    assert code == 1
    assert doc["behind"] == [{"path": "shared.txt", "from": f"{LOOPBACK}:{pa.port}", "why": "not here yet"}]
    assert doc["tracker"]["kind"] == "p2psync"
    assert [f["path"] for f in doc["tracker"]["files"]] == ["shared.txt"]
    assert doc["tracker"]["files"][0]["holders"] == [f"{LOOPBACK}:{pa.port}"]

    pb = engine(b, tracker.port)
    wait_until(lambda: (b / "shared.txt").exists(), 20, "the first sync")
    wait_until(lambda: pb.last_round is not None and pb.last_round.in_sync, 20, "b's round to end")
    code, doc = status(cli, b, "--tracker", where)
    assert code == 0 and doc["in_sync"] and doc["files"] == 1, doc
    code, doc = status(cli, b)  # beside the running sync, from its note: no lock taken
    assert code == 0 and doc["checked"] == "last round" and doc["last_round"]["tracker"] == where

    pb.exit()
    write(b / "mine.txt", "only here")
    code, doc = status(cli, b, "--tracker", where)
    assert code == 1 and doc["only_local"] == [{"path": "mine.txt", "why": "not on the tracker yet"}]
    code, doc = status(cli, b)
    assert code == 1 and [x["path"] for x in doc["only_local"]] == ["mine.txt"]

    (a / "shared.txt").unlink()
    wait_until(lambda: "shared.txt" in tracker.directory.deletions(), 20, "the deletion at the tracker")
    code, doc = status(cli, b, "--tracker", where)
    assert {"path": "shared.txt", "from": "", "why": "deleted elsewhere"} in doc["behind"]
    assert [d["path"] for d in doc["tracker"]["deleted"]] == ["shared.txt"]


def test_status_lists_conflict_copies_and_the_trash(cli, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write(folder / "plan.sync-conflict-20261202-103000-ABC1234.txt", "the losing edit")
    write(folder / ".p2psync/trash/old/notes.txt", "deleted elsewhere")
    _, doc = status(cli, folder)
    assert doc["conflicts"] == ["plan.sync-conflict-20261202-103000-ABC1234.txt"]
    assert doc["trash"] == ["old/notes.txt"]
    table = cli("status", str(folder))
    assert "Conflict copies: 1" in table.stdout and "old/notes.txt" in table.stdout
    assert "Trash (.p2psync/trash/): 1\n" in table.stdout  # a heading on one line, however narrow the table


def test_status_lists_what_the_folder_holds_but_never_syncs(cli, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write(folder / "ok.txt", "synced")
    write(folder / "trailing. ", "an unsafe name")
    write(folder / "ignored.log", "left out on purpose: not listed")
    write(folder / ".p2psyncignore", "*.log\n")
    (folder / "sub").mkdir()
    os.symlink(tmp_path, folder / "sub" / "outside")
    os.mkfifo(folder / "pipe")
    _, doc = status(cli, folder)
    assert doc["not_synced"] == [
        {"path": "pipe", "why": "a FIFO: only regular files sync"},
        {"path": "sub/outside", "why": "a symlink: never followed or synced"},
        {"path": "trailing. ", "why": "file name 'trailing. ' ends with a dot or space"},
    ]
    table = cli("status", str(folder))
    assert "Not synced: 3\n" in table.stdout and "sub/outside" in table.stdout
    assert table.stderr == ""  # said in the table, not again as warnings


def test_status_errors_exit_2(cli, tmp_path: Path) -> None:
    missing = cli("status", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    (tmp_path / "f").mkdir()
    down = cli("status", str(tmp_path / "f"), "--tracker", f"{LOOPBACK}:{free_port()}")
    assert down.returncode == 2 and "cannot reach the tracker" in down.stderr
    assert "Traceback" not in missing.stderr + down.stderr


def test_status_reads_without_changing_anything(cli, tmp_path: Path, start_tracker, engine) -> None:
    folder = tmp_path / "f"
    write(folder / "a.txt", "a")
    tracker = start_tracker()
    peer = engine(folder, tracker.port)
    wait_until(lambda: peer.last_round is not None, 20, "a round")
    peer.exit()
    write(folder / "changed.txt", "since the last round")  # a scan of it would hash and record it

    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}

    before = snapshot()
    assert status(cli, folder)[0] == 1
    assert status(cli, folder, "--tracker", f"{LOOPBACK}:{tracker.port}")[0] == 1
    assert snapshot() == before  # no index write, no note, no lock file, nothing created
