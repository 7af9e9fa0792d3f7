"""Several trackers, one swarm, through a real redis-server on loopback (each test
starts its own on a free port and stops it by PID; never the system's): peers on
different trackers converge, deletions included; a tracker killed; Redis lost
and back empty; the same holder chosen everywhere. On both backends."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2psync import cli
from p2psync.protocol import FileInfo
from p2psync.tracker import Tracker
from p2psync.tracker.shared import COUNTER, PREFIX, RedisState, _peer_id, _record

from .folders import texts
from .loopback import LOOPBACK, free_port, wait_until

pytestmark = [
    pytest.mark.usefixtures("backend"),
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server is not installed (apt-get install redis-server)"
    ),
]


class RedisServer:
    """One redis-server of this test: no persistence, stopped (and restartable) by PID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://{LOOPBACK}:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_until(self.answers, 10, "redis-server to start")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def stored_keys(self) -> list[bytes]:
        import redis

        return sorted(redis.Redis(host=LOOPBACK, port=self.port).keys(f"{PREFIX}*"))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    yield server
    server.stop()


@pytest.fixture
def shared_tracker(start_tracker, redis_server: RedisServer) -> Callable[..., Tracker]:
    def start(**kwargs: object) -> Tracker:
        tracker = start_tracker(shared=RedisState(redis_server.url), **kwargs)
        wait_until(tracker.shared.connected.is_set, 10, "the tracker to follow Redis")
        return tracker

    return start


def write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)


def test_peers_on_different_trackers_converge_with_deletions(tmp_path: Path, shared_tracker, engine) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(a / "docs/from-a.txt", "a")
    write(b / "from-b.txt", "b")
    t1, t2, t3 = shared_tracker(), shared_tracker(), shared_tracker()
    engine(a, t1.port)
    engine(b, t2.port)
    engine(c, t3.port)
    want = {"docs/from-a.txt": "a", "from-b.txt": "b"}
    wait_until(lambda: texts(a) == texts(b) == texts(c) == want, 30, "three folders on three trackers")
    (b / "docs/from-a.txt").unlink()
    wait_until(lambda: texts(a) == texts(c) == {"from-b.txt": "b"}, 30, "the deletion everywhere")
    assert (a / ".p2psync/trash/docs/from-a.txt").read_text() == "a"
    assert t1.directory.entries() == t2.directory.entries() == t3.directory.entries()
    assert set(t1.directory.deletions()) == set(t3.directory.deletions()) == {"docs/from-a.txt"}


def test_a_killed_tracker_s_peers_move_on_and_stay_listed(tmp_path: Path, shared_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "a.txt", "a")
    t1, t2 = shared_tracker(), shared_tracker()
    pa = engine(a, t1.port, alternates=[(LOOPBACK, t2.port)])
    engine(b, t2.port)
    wait_until(lambda: (b / "a.txt").exists(), 30, "the first sync")
    t1.exit()  # its peers' records stay in Redis: the swarm keeps a.txt listed meanwhile
    assert "a.txt" in t2.directory.entries()
    wait_until(lambda: (LOOPBACK, pa.port) in [tuple(c) for c in t2._owner], 30, "a to move to the other tracker")
    write(a / "after.txt", "made after the move")
    wait_until(lambda: (b / "after.txt").exists(), 30, "a change through the second tracker")
    assert pa.trackerport == t2.port


def test_redis_lost_and_back_empty_is_republished(tmp_path: Path, redis_server, shared_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "a.txt", "a")
    t1, t2 = shared_tracker(), shared_tracker()
    pa, pb = engine(a, t1.port), engine(b, t2.port)
    wait_until(lambda: (b / "a.txt").exists(), 30, "the first sync")
    redis_server.stop()
    write(a / "while-down.txt", "t1 keeps serving its own peers")
    wait_until(lambda: "while-down.txt" in t1.directory.entries(), 30, "t1 to go on without Redis")
    assert "a.txt" in t2.directory.entries()  # t2 keeps the last directory
    redis_server.start()  # empty
    wait_until(lambda: (b / "while-down.txt").exists(), 60, "the change once Redis is back")
    wait_until(
        lambda: {f"{PREFIX}peer:{LOOPBACK}|{p.port}".encode() for p in (pa, pb)} <= set(redis_server.stored_keys()),
        30,
        "both trackers to republish their peers",
    )


def test_a_tracker_that_misses_part_of_the_log_reloads_from_redis(
    tmp_path: Path, redis_server, shared_tracker, engine, caplog
) -> None:
    import redis

    a = tmp_path / "a"
    write(a / "seen.txt", "a")
    t1, t2 = shared_tracker(), shared_tracker()
    engine(a, t1.port)
    wait_until(lambda: "seen.txt" in t2.directory.entries(), 30, "t2 to follow the log")
    # A change whose log entry was cut before t2 read it (t2 fell more than the log's length
    # behind): the peer's record is in Redis and the change took its number, but no entry is left.
    store = redis.Redis(host=LOOPBACK, port=redis_server.port)
    missed = (LOOPBACK, free_port())
    record = _record(missed, [FileInfo("missed.txt", 1_700_000_000, 5, hashlib.sha256(b"gone!").hexdigest())], [])
    store.hset(f"{PREFIX}peer:{_peer_id(missed)}", mapping={"owner": "another-tracker", "record": record})
    store.zadd(f"{PREFIX}alive", {_peer_id(missed): time.time()})
    store.incr(COUNTER)
    write(a / "next.txt", "b")  # t1 logs it one number past what t2 expects next
    wait_until(lambda: "missed.txt" in t2.directory.entries(), 30, "t2 to reload the directory from Redis")
    wait_until(lambda: "next.txt" in t2.directory.entries(), 30, "and to list the change after the gap")
    assert "seen.txt" in t2.directory.entries()
    assert any("missed 1 changes in Redis's log" in r.getMessage() for r in caplog.records)


def test_two_trackers_pick_the_same_holder_of_a_tie(tmp_path: Path, shared_tracker, engine) -> None:
    folders = [tmp_path / name for name in ("x", "y", "z")]
    for folder in folders:
        write(folder / "same.txt", "the same bytes")
        (folder / "same.txt").touch()
    mtime = (folders[0] / "same.txt").stat().st_mtime
    for folder in folders:
        os.utime(folder / "same.txt", (mtime, mtime))
    trackers = [shared_tracker(), shared_tracker()]
    for i, folder in enumerate(folders):
        engine(folder, trackers[i % 2].port)
    wait_until(lambda: all(len(t.directory.peers) == 3 for t in trackers), 30, "every tracker to know every peer")
    wait_until(lambda: trackers[0].directory.entries() == trackers[1].directory.entries(), 30, "the same entries")
    entry = trackers[0].directory.entries()["same.txt"]
    assert (entry.ip, entry.port) == min(trackers[0].directory.peers)


def test_a_peer_that_leaves_leaves_every_tracker(tmp_path: Path, shared_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "only-a.txt", "a")
    t1, t2 = shared_tracker(), shared_tracker()
    pa = engine(a, t1.port)
    engine(b, t2.port)
    wait_until(lambda: "only-a.txt" in t2.directory.entries(), 30, "a's file at t2")
    pa.exit()
    wait_until(lambda: "only-a.txt" not in t2.directory.entries(), 30, "a to leave t2's directory too")


def test_redis_unreachable_at_start_is_one_line_and_exit_2(caplog) -> None:
    url = f"redis://{LOOPBACK}:{free_port()}/0"
    assert cli.main(["tracker", "--host", LOOPBACK, "--port", "0", "--state", url, "-q"]) == 2
    assert f"cannot reach Redis at {url}" in caplog.text and "Traceback" not in caplog.text


def test_old_deletions_leave_redis(redis_server) -> None:
    import time

    import redis

    from p2psync.sync import Deletion

    state = RedisState(redis_server.url)
    old, recent = Deletion(int(time.time()) - 40 * 86400, "1" * 64), Deletion(int(time.time()), "2" * 64)
    state._apply("report", ((LOOPBACK, 9), "{}", [("old.txt", old), ("new.txt", recent)]))
    state._trim(time.time() - 30 * 86400)
    fields = redis.Redis(host=LOOPBACK, port=redis_server.port, decode_responses=True).hkeys(f"{PREFIX}deleted")
    assert sorted(fields) == [f"new.txt\0{'2' * 64}", f"new.txt\0{'2' * 64}|t"]
    state.stop()


def test_trackers_share_through_a_unix_socket(tmp_path: Path, start_tracker, engine) -> None:
    sock = tmp_path / "redis.sock"
    args = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, 10, "redis-server's socket")
        url = f"unix://{sock}"
        t1, t2 = start_tracker(shared=RedisState(url)), start_tracker(shared=RedisState(url))
        a, b = tmp_path / "a", tmp_path / "b"
        write(a / "over-unix.txt", "a")
        engine(a, t1.port)
        engine(b, t2.port)
        wait_until(lambda: texts(b) == {"over-unix.txt": "a"}, 30, "the file through the other tracker")
    finally:
        server.terminate()
        server.wait(10)


def test_loopback_peers_are_published_at_the_advertised_address(
    tmp_path: Path, redis_server, start_tracker, shared_tracker, engine
) -> None:
    t1 = start_tracker(shared=RedisState(redis_server.url, advertise="127.0.0.2"))
    wait_until(t1.shared.connected.is_set, 10, "t1 to follow Redis")
    t2 = shared_tracker()
    a = tmp_path / "a"
    write(a / "x.txt", "x")
    pa = engine(a, t1.port)
    wait_until(lambda: "x.txt" in t2.directory.entries(), 30, "a's file at t2")
    assert (t2.directory.entries()["x.txt"].ip, t2.directory.entries()["x.txt"].port) == ("127.0.0.2", pa.port)
    assert t1.directory.entries()["x.txt"].ip == LOOPBACK  # t1 lists its own peer as it sees it ...
    redis_server.stop()
    redis_server.start()  # ... also after a resync, which must not bring it back under its public address
    wait_until(lambda: f"{PREFIX}peer:127.0.0.2|{pa.port}".encode() in redis_server.stored_keys(), 30, "the republish")
    wait_until(t1.shared.connected.is_set, 30, "t1's resync")
    assert t1.directory.peers == [(LOOPBACK, pa.port)]
