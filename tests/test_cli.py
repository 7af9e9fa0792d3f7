"""The command lines, as processes: `p2psync`, and the classic `python -m` ones."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from p2psync.local import STATE_DIR, TRASH_DIR

from .folders import names, tree
from .loopback import free_port, wait_until


class Running:
    """A child process whose output lines are collected as they come."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        wait_until(lambda: re.search(pattern, self.output), timeout, f"{pattern!r} in {self.output!r}")
        match = re.search(pattern, self.output)
        assert match
        return match

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.wait(10)

    def wait(self, timeout: float) -> int:
        """Its exit code, once it has exited and all it printed is in `lines`."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture
def run(env: dict[str, str]) -> Iterator:
    started: list[Running] = []

    def start(args: list[str], cwd: Path) -> Running:
        r = Running(args, cwd, env)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


P2PSYNC = [sys.executable, "-m", "p2psync.cli"]


def _holder_and_join(run, tmp_path: Path, folder: Path, *extra: str) -> tuple[Running, str]:
    """`p2psync sync FOLDER` on an embedded tracker, and the address its banner says to join."""
    holder = run([*P2PSYNC, "sync", str(folder), "--port", "0", "--tracker-port", str(free_port()), *extra], tmp_path)
    return holder, holder.wait_for(r"p2psync sync OTHER_DIR --tracker (127\.0\.0\.1:\d+)").group(1)


def test_version_names_the_backend(env: dict[str, str], impl: ModuleType) -> None:
    out = subprocess.run([*P2PSYNC, "--version"], env=env, capture_output=True, text=True, check=True).stdout
    backend = "python" if impl.__name__.endswith("_twin") else "cython"
    assert re.fullmatch(rf"p2psync \d+\.\d+\.\d+\S* \(backend: {backend}\)\n", out)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("p2psync")
    assert script.exists(), "pip install should put the p2psync command beside python"


@pytest.mark.parametrize("command", [[], ["tracker"], ["sync"], ["status"], ["keygen"]])
def test_help_on_every_command(env: dict[str, str], command: list[str]) -> None:
    out = subprocess.run([*P2PSYNC, *command, "--help"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: p2psync")


def test_bad_arguments_are_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*P2PSYNC, "sync", str(tmp_path), "--tracker", "nocolon"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "expected HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_default_and_a_joining_folder(run, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "hello.txt").write_text("hello from the first folder")
    a, join = _holder_and_join(run, tmp_path, first, "--interval", "0.3")
    tracker_port = int(a.proc.args[a.proc.args.index("--tracker-port") + 1])
    assert join == f"127.0.0.1:{tracker_port}"
    b = run([*P2PSYNC, "sync", str(second), "--port", "0", "--tracker", join, "--interval", "0.3"], tmp_path)
    wait_until(lambda: (second / "hello.txt").exists(), 30, "the file to reach the joining folder")
    (second / "reply.txt").write_text("and back")
    wait_until(lambda: (first / "reply.txt").exists(), 30, "the reply to reach the first folder")
    assert (second / "hello.txt").read_text() == "hello from the first folder"
    assert (first / "reply.txt").read_text() == "and back"
    for proc in (b, a):
        assert proc.interrupt() == 0, proc.output
        assert "Traceback" not in proc.output
        assert "stopped" in proc.output
    assert not list(tmp_path.rglob("*.part"))


def test_a_download_killed_midway_resumes_after_the_bytes_it_wrote(run, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    data = os.urandom(3 << 20)  # sent as one stream (below the chunked size), kept for a resume
    (first / "big.bin").write_bytes(data)
    a, join = _holder_and_join(run, tmp_path, first, "--max-rate", "600K")
    args = [*P2PSYNC, "sync", str(second), "--port", "0", "--tracker", join, "--interval", "0.3"]
    b = run(args, tmp_path)
    partials = second / ".p2psync"

    def written() -> int:
        return max((p.stat().st_size for p in partials.glob("*.partial")), default=0)

    wait_until(lambda: written() >= 1 << 20, 30, "the first megabyte")
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    (partial,) = partials.glob("*.partial")
    kept = partial.read_bytes()
    assert 1 << 20 <= len(kept) < len(data)  # what was written, not the space reserved ahead of it
    assert data.startswith(kept)
    b = run(args, tmp_path)
    wait_until(lambda: (second / "big.bin").exists() and (second / "big.bin").read_bytes() == data, 30, "the rest")
    b.wait_for("resuming")
    over = b.wait_for(r"round: 1 fetched \(3\.0 MiB in .*, ([\d.]+) MiB of it over the network\)")
    assert float(over.group(1)) <= 3 - len(kept) / (1 << 20) + 0.05  # only the rest crossed
    assert not list(partials.glob("*.partial"))
    for proc in (b, a):
        assert proc.interrupt() == 0, proc.output
        assert "Traceback" not in proc.output


def test_classic_command_lines(run, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a.txt").write_text("a")
    (two / "b.txt").write_text("b")
    port = free_port()
    tracker = run([sys.executable, "-m", "p2psync.tracker", "127.0.0.1", str(port)], tmp_path)
    tracker.wait_for("tracker listening")
    peers = [run([sys.executable, "-m", "p2psync.peer", "127.0.0.1", str(port)], folder) for folder in (one, two)]
    for p in peers:
        p.wait_for(r"serving .* on port \d+")
    wait_until(lambda: (one / "b.txt").exists() and (two / "a.txt").exists(), 40, "the classic peers to sync")
    for proc in (*peers, tracker):
        assert proc.interrupt() == 0, proc.output
        assert "Traceback" not in proc.output


def test_kill_9_in_the_middle_of_a_round_loses_nothing(run, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(200):
        (first / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (first / f"d{i % 10}" / f"f{i:03}.bin").write_bytes(os.urandom(64 * 1024))
    (first / "big.bin").write_bytes(os.urandom(24 << 20))
    original = tree(first)
    second.mkdir()
    (second / "mine.txt").write_text("written here before the kill")
    a, join = _holder_and_join(run, tmp_path, first, "--interval", "0.3")
    args = [*P2PSYNC, "sync", str(second), "--port", "0", "--tracker", join, "--interval", "0.3"]
    b = run(args, tmp_path)
    wait_until(lambda: sum(n.endswith(".bin") for n in names(second)) >= 5, 60, "the first downloads")
    b.proc.send_signal(signal.SIGKILL)  # mid-round: downloads in flight, the index half written
    b.proc.wait(10)
    b = run(args, tmp_path)
    wait_until(lambda: tree(second).keys() >= original.keys() | {"mine.txt"}, 90, "second to catch up")
    wait_until(lambda: (first / "mine.txt").exists(), 30, "mine.txt to reach first")
    assert {k: v for k, v in tree(second).items() if k != "mine.txt"} == original  # every byte, nothing more
    assert tree(first) == {**original, "mine.txt": b"written here before the kill"}
    assert not [p for p in tmp_path.rglob("*.part")]
    for proc in (b, a):
        assert proc.interrupt() == 0, proc.output
        assert "Traceback" not in proc.output


@pytest.mark.parametrize(
    ("extra", "setup", "message"),
    [
        (["--max-delete", "lots"], None, "max-delete"),
        ([], ".p2psyncignore", "bad ignore pattern"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(env, tmp_path: Path, extra, setup, message) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    if setup:
        (folder / setup).write_text("fine/\n!\n")
    result = subprocess.run(
        [*P2PSYNC, "sync", str(folder), "--tracker", "127.0.0.1:9", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and sum("error" in line.lower() for line in lines) == 1  # one line says it


def test_a_second_sync_of_one_folder_is_refused(run, env, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    first = run([*P2PSYNC, "sync", str(folder), "--port", "0", "--tracker-port", str(free_port())], tmp_path)
    first.wait_for("Ctrl-C stops")
    second = subprocess.run(
        [*P2PSYNC, "sync", str(folder), "--port", "0", "--tracker-port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert "already syncing" in second.stderr and "Traceback" not in second.stderr
    assert second.stderr.strip().count("\n") == 0, second.stderr  # that one line: no tracker was started first
    assert first.proc.poll() is None  # the first goes on
    assert first.interrupt() == 0


def test_qq_prints_nothing_but_errors(run, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "hello.txt").write_text("hello")
    a, join = _holder_and_join(run, tmp_path, first, "--interval", "0.3")
    b = run([*P2PSYNC, "sync", str(second), "--port", "0", "--tracker", join, "--interval", "0.3", "-qq"], tmp_path)
    wait_until(lambda: (second / "hello.txt").exists(), 30, "the file to reach the quiet folder")
    (second / "reply.txt").write_text("quietly back")
    wait_until(lambda: (first / "reply.txt").exists(), 30, "the quiet folder's file to reach the first")
    for proc in (b, a):
        assert proc.interrupt() == 0, proc.output
    assert b.output == ""  # no banner, no file lines, no "stopped"
    assert "stopped" in a.output  # the other, not quiet, still says what it does


def _delete_whole(folder: Path) -> None:
    shutil.rmtree(folder)


def _empty(folder: Path) -> None:  # what an unmounted drive leaves: an empty mount point
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@pytest.mark.parametrize("vanish", [_delete_whole, _empty], ids=["deleted", "emptied"])
def test_a_folder_that_vanishes_stops_its_peer_and_deletes_nothing_elsewhere(run, tmp_path: Path, vanish) -> None:
    """Syncthing's folder marker: a folder deleted whole, emptied with its
    `.p2psync`, or unmounted is not its files deleted. Three files: under the
    brake's threshold, so only this rule keeps them on the other peers."""
    keeper, leaving, joining = tmp_path / "keeper", tmp_path / "leaving", tmp_path / "joining"
    keeper.mkdir()
    files = {"a.txt", "sub/b.txt", "sub/deeper/c.txt"}
    for name in files:
        (leaving / name).parent.mkdir(parents=True, exist_ok=True)
        (leaving / name).write_text(name)
    _, join = _holder_and_join(run, tmp_path, keeper, "--interval", "0.3")
    gone = run([*P2PSYNC, "sync", str(leaving), "--port", "0", "--tracker", join, "--interval", "0.3"], tmp_path)
    wait_until(lambda: set(names(keeper)) == files, 30, "the files to reach keeper")
    vanish(leaving)
    assert gone.wait(30) == 1, gone.output
    said = r"ERROR .*(was deleted|was removed).*; stopped, without reporting its files as deleted"
    assert re.search(said, gone.output), gone.output
    assert "Traceback" not in gone.output
    # A newcomer still gets every file from keeper: the directory lists no deletion of them.
    run([*P2PSYNC, "sync", str(joining), "--port", "0", "--tracker", join, "--interval", "0.3"], tmp_path)
    wait_until(lambda: set(names(joining)) == files, 30, "the files to reach joining")
    assert set(names(keeper)) == files
    trash = keeper / STATE_DIR / TRASH_DIR
    assert not trash.exists() or not any(trash.rglob("*.txt"))
