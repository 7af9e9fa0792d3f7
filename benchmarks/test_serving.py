"""What a holder spends serving a pipeline of small files: 10,000 pipelined
requests for 4 KiB files in 100 folders, answered by `FileServer.serve` over
a socket pair, the serving thread's CPU time measured.

Three ways, interleaved over several rounds in one run: the core reading each
whole small file in one call (`read_small_file`, the extension), the same
call on the pure-Python twin, and the per-file way every other request takes
(`open_for_serving`, hash check, `small_reply`: several Python-level system
calls and a stat result each), which is the baseline. On a 2-core machine a
holder's CPU is taken from the receiver it serves, so it shows in the join
time too (test_small_files.py).
"""

from __future__ import annotations

import importlib
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from p2psync import transfer
from p2psync.deadlines import Watchdog
from p2psync.ignore import IgnoreRules
from p2psync.local import Folder
from p2psync.peer import server as server_module
from p2psync.protocol import encode_request

FOLDERS = 100
FILES_PER_FOLDER = 100
FILE_BYTES = 4096
ROUNDS = 7
BATCH = 32  # requests sent at once, as a receiver's pipeline does

twin = importlib.import_module("p2psync._twin")
try:
    fast = importlib.import_module("p2psync._speedups")
except ImportError:
    fast = None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Folder, list[bytes]]]:
    root = tmp_path_factory.mktemp("served")
    for d in range(FOLDERS):
        (root / f"dir-{d:03}").mkdir()
        for i in range(FILES_PER_FOLDER):
            (root / f"dir-{d:03}" / f"file-{i:03}.dat").write_bytes(os.urandom(FILE_BYTES))
    folder = Folder(root, IgnoreRules.tree(), state=True)
    files = folder.scan()  # hashes cached, as a holder's are after its first scan
    names = sorted(files)
    requests = [encode_request(n, 0, files[n].sha256, keep_open=n != names[-1]) for n in names]
    yield folder, requests
    folder.close()


def _serve_all(server: server_module.FileServer, requests: list[bytes]) -> float:
    """Serve every request once; the serving thread's CPU seconds."""
    client, conn = socket.socketpair()
    received = [0]

    def ask() -> None:
        for i in range(0, len(requests), BATCH):
            client.sendall(b"".join(requests[i : i + BATCH]))

    def drain() -> None:
        while chunk := client.recv(1 << 20):
            received[0] += len(chunk)

    threads = [threading.Thread(target=ask), threading.Thread(target=drain)]
    for thread in threads:
        thread.start()
    began = time.thread_time()
    server.serve(conn, ("127.0.0.1", 1))
    took = time.thread_time() - began
    for thread in threads:
        thread.join()
    client.close()
    assert received[0] == len(requests) * (FILE_BYTES + len(b"Content-Length: 4096\n"))
    return took


def test_serving_10000_pipelined_small_files(
    benchmark, served: tuple[Folder, list[bytes]], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    folder, requests = served
    server = server_module.FileServer(socket.socket(), folder, Watchdog())
    one_call = server_module.FileServer._whole_small
    ways = {"core, one call": fast, "twin, one call": twin, "per-file way": None}
    if fast is None:
        del ways["core, one call"]
    times: dict[str, list[float]] = {way: [] for way in ways}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for way in order:
                core = ways[way]
                if core is None:
                    monkeypatch.setattr(server_module.FileServer, "_whole_small", lambda *_: None)
                else:
                    monkeypatch.setattr(server_module.FileServer, "_whole_small", one_call)
                    monkeypatch.setattr(transfer, "read_small_file", core.read_small_file)
                times[way].append(_serve_all(server, requests))

    benchmark.group = f"serving {len(requests)} pipelined {FILE_BYTES // 1024} KiB files"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    medians = {way: statistics.median(values) for way, values in times.items()}
    for way, value in medians.items():
        benchmark.extra_info[f"{way} median CPU s"] = round(value, 3)
    with capsys.disabled():
        print(f"\nserving {len(requests)} pipelined x {FILE_BYTES} B, {ROUNDS} interleaved rounds, serving thread CPU:")
        for way, value in medians.items():
            ratio = medians["per-file way"] / value
            print(
                f"  {way:15} median {value * 1000:6.1f} ms ({value / len(requests) * 1e6:4.1f} us a file), "
                f"{ratio:.2f}x the per-file way"
            )
