"""Three trackers sharing one swarm through Redis, against one in-memory tracker, in
the same run: KeepAlive round trips per second (the goal: at least 0.8x the
in-memory tracker's, since a KeepAlive never touches Redis), and how soon a
change reported at one tracker is served by another (p50 and p99; the goal:
p99 under 50 ms on loopback). 1,000 simulated peers x 10 files, spread over the
three. Skipped, with a message, without redis-server (apt-get install redis-server).
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator

import pytest
from bench_support import raise_open_files, redis_server, tracker_process, wait_until
from test_tracker_load import CLIENTS, FILES_PER_PEER, PEERS, _keepalive_rate, _read_line

ROUNDS = 3
CHANGES = 200


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server): nothing to share through")
    with redis_server() as port:
        yield f"redis://127.0.0.1:{port}/0"


def _tracker(state: str | None) -> tuple[subprocess.Popen[bytes], int]:
    return tracker_process(*(["--state", state] if state else []))


def _report(port: int, first: int, count: int) -> list[socket.socket]:
    socks = []
    for i in range(first, first + count):
        sock = socket.create_connection(("127.0.0.1", port))
        files = [{"name": f"peer{i}-file{j}.dat", "mtime": 1772047595 + j, "size": 4096} for j in range(FILES_PER_PEER)]
        sock.sendall(json.dumps({"port": 20000 + i, "files": files}).encode() + b"\n")
        _read_line(sock)
        socks.append(sock)
    return socks


def _propagation(reporter_port: int, watcher_port: int) -> list[float]:
    """Seconds from a change reported at one tracker to its reply at a long-polling
    watcher of another: both p2psync peers, which ask for deltas (`since`)."""
    features = ["tree", "deleted", "wait", "delta"]
    took = []
    with (
        socket.create_connection(("127.0.0.1", reporter_port)) as reporter,
        socket.create_connection(("127.0.0.1", watcher_port)) as watcher,
    ):
        watcher.sendall(json.dumps({"port": 39999, "files": [], "features": features}).encode() + b"\n")
        since = json.loads(_read_line(watcher))["generation"]
        reporter.sendall(json.dumps({"port": 39998, "files": [], "features": features}).encode() + b"\n")
        reporter_since = json.loads(_read_line(reporter))["generation"]
        for n in range(CHANGES):
            watcher.sendall(json.dumps({"port": 39999, "wait": 30, "since": since}).encode() + b"\n")
            time.sleep(0.005)  # the poll is held before the change is made
            began = time.perf_counter()
            files = [{"name": "moving.txt", "mtime": 1_800_000_000 + n, "size": 1}]
            change = {"port": 39998, "files": files, "features": features, "since": reporter_since}
            reporter.sendall(json.dumps(change).encode() + b"\n")
            reply = json.loads(_read_line(watcher))
            took.append(time.perf_counter() - began)
            since = reply["generation"]
            reporter_since = json.loads(_read_line(reporter))["generation"]
            assert reply["files"]["moving.txt"]["mtime"] == 1_800_000_000 + n  # this very change, by a delta
    return took


def test_three_trackers_on_redis_against_one_in_memory(benchmark, redis_url: str, capsys) -> None:
    raise_open_files(8192)
    procs = []
    socks: list[socket.socket] = []
    rates: dict[str, list[float]] = {"in-memory": [], "on Redis": []}
    try:
        memory, memory_port = _tracker(None)
        procs.append(memory)
        shared = [_tracker(redis_url) for _ in range(3)]
        procs += [p for p, _ in shared]
        socks += _report(memory_port, 0, PEERS)
        per = PEERS // 3
        for k, (_, port) in enumerate(shared):
            socks += _report(port, k * per, per if k < 2 else PEERS - 2 * per)
        wait_until(
            lambda: _directory_size(shared[0][1]) == PEERS * FILES_PER_PEER, 30, "every tracker to see every peer"
        )
        result: dict[str, object] = {}

        def measure() -> None:
            for r in range(ROUNDS):
                for name in ("in-memory", "on Redis") if r % 2 == 0 else ("on Redis", "in-memory"):
                    port = memory_port if name == "in-memory" else shared[r % 3][1]
                    rates[name].append(_keepalive_rate(port)[0])
            result["latency"] = _propagation(shared[0][1], shared[1][1])

        benchmark.group = f"3 trackers on Redis, {PEERS} peers x {FILES_PER_PEER} files"
        benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        for sock in socks:
            sock.close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    latency = sorted(result["latency"])  # type: ignore[call-overload]
    p50, p99 = statistics.median(latency), latency[int(len(latency) * 0.99) - 1]
    ratio = statistics.median(s / m for s, m in zip(rates["on Redis"], rates["in-memory"], strict=True))
    benchmark.extra_info.update(
        memory_rate=statistics.median(rates["in-memory"]), redis_rate=statistics.median(rates["on Redis"])
    )
    benchmark.extra_info.update(ratio=round(ratio, 2), p50_ms=p50 * 1e3, p99_ms=p99 * 1e3)
    with capsys.disabled():
        print(
            f"\n{PEERS} peers x {FILES_PER_PEER} files, {CLIENTS} clients, {ROUNDS} interleaved rounds: KeepAlive "
            f"round trips/s in-memory {statistics.median(rates['in-memory']):.0f}, one of 3 on Redis "
            f"{statistics.median(rates['on Redis']):.0f} ({ratio:.2f}x); a change at one tracker served by another "
            f"after p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms ({CHANGES} changes)"
        )


def _directory_size(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b'{"port": 39997}\n')
        return len(json.loads(_read_line(sock)))
