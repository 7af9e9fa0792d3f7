"""A large file peer to peer through the real path, against the raw limit and nginx -> curl.

Receivers run in fresh processes that time themselves (`receive.py`), in
rotating order within each round:
- `p2psync`: `FileSynchronizer.syncfile` from a p2psync file server process
  (`holder.py`), verifying the advertised SHA-256 while receiving;
- `p2psync-twin`: the same on the pure-Python twin (`P2PSYNC_NO_EXTENSIONS=1`);
- `p2psync-classic`: the same without a hash (what a classic holder gets);
- `p2psync-chunked`: the same with the version's chunk list id, as the
  directory lists a large file of a p2psync holder: fetched as runs of
  chunks, each run checked chunk by chunk on the hashing pool (issue 14 (c));
- `raw`: `sendfile` -> `recv_into` + `write` through a 1 MiB buffer, no protocol;
- `curl`: `curl -o` from nginx serving the same file (skipped, with a message,
  when nginx or curl is not installed: apt-get install nginx-light curl).
Reported: median MiB/s, median per-round ratio to raw, peak extra RSS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench_support import MiB, free_port, listening, sendfile_server, wait_until, write_source

from p2psync.local.chunks import chunk_fd
from p2psync.transfer import BACKEND

HERE = Path(__file__).parent
SIZES = [pytest.param(256 * MiB, id="256MiB"), pytest.param(1024 * MiB, id="1GiB", marks=pytest.mark.big)]
ROUNDS = 5


@pytest.fixture(scope="module", params=SIZES)
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    size = request.param
    folder = tmp_path_factory.mktemp("large-src")
    path = folder / "large.bin"
    digest = write_source(path, size)
    fd = os.open(path, os.O_RDONLY)
    try:
        list_id = chunk_fd(fd, size).list_id()  # what the holder reports for it
    finally:
        os.close(fd)
    yield folder, path, size, digest, list_id


@pytest.fixture(scope="module")
def servers(source: tuple, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    folder, path, _, _, _ = source
    procs: list = []
    ports: dict[str, int | None] = {}
    holder = subprocess.Popen([sys.executable, str(HERE / "holder.py"), str(folder)], stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    assert holder.stdout is not None
    ports["p2psync"] = int(holder.stdout.readline())
    raw, listener = sendfile_server(path, protocol=False)
    ports["raw"] = listener.getsockname()[1]
    ports["nginx"] = None
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx and shutil.which("curl"):
        prefix = tmp_path_factory.mktemp("nginx")
        port = free_port()
        (prefix / "nginx.conf").write_text(
            f"daemon off; worker_processes 1; pid {prefix}/nginx.pid; error_log {prefix}/error.log;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")  # the test folders are private to us
            + f"events {{ worker_connections 64; }}\n"
            f"http {{ access_log off; sendfile on; tcp_nopush on;\n"
            f"  client_body_temp_path {prefix}; proxy_temp_path {prefix}; fastcgi_temp_path {prefix};\n"
            f"  uwsgi_temp_path {prefix}; scgi_temp_path {prefix};\n"
            f"  server {{ listen 127.0.0.1:{port}; root {folder}; }} }}\n"
        )
        server = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
        procs.append(server)
        with contextlib.suppress(RuntimeError):  # no nginx baseline then, said in the report
            wait_until(lambda: listening(port), 10, "nginx")
            ports["nginx"] = port
    yield ports
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    raw.kill()
    listener.close()


def _receive(how: str, ports: dict, source: tuple, dest: Path) -> tuple[float, float]:
    _, path, size, digest, list_id = source
    if how == "curl":
        began = time.perf_counter()
        subprocess.run(
            ["curl", "-sf", "-o", str(dest / "large.bin"), f"http://127.0.0.1:{ports['nginx']}/large.bin"], check=True
        )
        return time.perf_counter() - began, float("nan")
    if how == "raw":
        args = ["raw", str(dest / "large.bin"), str(ports["raw"])]
    else:
        mtime = str(int(path.stat().st_mtime))
        args = [
            "p2psync",
            str(dest),
            "large.bin",
            str(ports["p2psync"]),
            mtime,
            str(size),
            "-" if how == "p2psync-classic" else digest,
            list_id if how == "p2psync-chunked" else "",
        ]
    env = dict(os.environ, P2PSYNC_NO_EXTENSIONS="1" if how == "p2psync-twin" else "0")
    out = subprocess.run(
        [sys.executable, str(HERE / "receive.py"), *args], check=True, capture_output=True, text=True, env=env
    )
    seconds, rss, backend = out.stdout.split()
    # Each receiver must really run on the backend it is named for.
    assert backend == ("python" if how == "p2psync-twin" else BACKEND if how.startswith("p2psync") else "-"), how
    return float(seconds), float(rss)


def test_large_file_peer_to_peer(benchmark, source: tuple, servers: dict, tmp_path: Path, capsys) -> None:
    size = source[2]
    receivers = ["p2psync", "p2psync-chunked", "p2psync-twin", "p2psync-classic", "raw"]
    receivers += ["curl"] if servers["nginx"] else []
    times: dict[str, list[float]] = {how: [] for how in receivers}
    rss: dict[str, list[float]] = {how: [] for how in receivers}

    def run_rounds() -> None:
        for r in range(ROUNDS):
            for how in receivers[r % len(receivers) :] + receivers[: r % len(receivers)]:
                dest = tmp_path / how
                dest.mkdir(exist_ok=True)
                (dest / "large.bin").unlink(missing_ok=True)
                seconds, extra = _receive(how, servers, source, dest)
                assert (dest / "large.bin").stat().st_size == size
                times[how].append(seconds)
                rss[how].append(extra)

    benchmark.group = f"large file peer to peer, {size // MiB} MiB"
    benchmark.pedantic(run_rounds, rounds=1, iterations=1)
    lines = [f"\n{size // MiB} MiB, {ROUNDS} interleaved rounds (median MiB/s; median per-round ratio to raw):"]
    for how in receivers:
        speed = size / statistics.median(times[how]) / MiB
        ratio = statistics.median(raw / mine for raw, mine in zip(times["raw"], times[how], strict=True))
        benchmark.extra_info[f"{how} MiB/s"] = round(speed)
        benchmark.extra_info[f"{how} / raw"] = round(ratio, 3)
        peak = max(rss[how])
        lines.append(f"  {how:>15}: {speed:6.0f} MiB/s  {ratio:.2f}x raw  peak extra RSS {peak:.0f} MiB")
    if "curl" in times:
        for how in ("p2psync", "p2psync-classic"):
            vs_curl = statistics.median(curl / mine for mine, curl in zip(times[how], times["curl"], strict=True))
            benchmark.extra_info[f"{how} speed / curl speed"] = round(vs_curl, 2)
            lines.append(f"  {how} is {vs_curl:.2f}x the speed of nginx -> curl")
    else:
        lines.append("  (nginx or curl not installed: apt-get install nginx-light curl for that baseline)")
    with capsys.disabled():
        print("\n".join(lines))
