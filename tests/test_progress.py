"""What a person sees: the live display in a real terminal (tmux), the display's
content from real events, plain output off a terminal, and the bandwidth limit
moving every byte (both backends)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from p2psync.events import Events, Kind, RoundSummary
from p2psync.ui.progress import LiveDisplay

from .loopback import LOOPBACK, wait_until

pytestmark = pytest.mark.usefixtures("backend")


@pytest.mark.parametrize(
    ("counts", "line"),
    [
        ({"fetched": 2, "bytes": 2048}, "round: 2 fetched (2.0 KiB in 0.50 s, 4.0 KiB/s)"),
        ({"trashed": 1}, "round: 1 moved to trash"),  # nothing fetched: not said
        (
            {"conflicts": 1, "fetched": 1, "bytes": 1024},
            "round: 1 fetched (1.0 KiB in 0.50 s, 2.0 KiB/s), 1 conflict kept",
        ),
        ({"conflicts": 2, "held_back": 1}, "round: 2 conflicts kept, 1 deletion held back"),
        ({"held_back": 12}, "round: 12 deletions held back"),
        ({"updated": 1}, "round: 1 updated in place"),  # a chmod elsewhere: the same bytes, the new mode
        ({}, "round: 0 fetched (0 B in 0.50 s, 0 B/s)"),
    ],
)
def test_the_round_line_says_what_was_done(counts: dict[str, int], line: str) -> None:
    fields = {"fetched": 0, "copied": 0, "trashed": 0, "conflicts": 0, "failed": 0, "held_back": 0, "bytes": 0}
    assert RoundSummary(**{**fields, **counts}, seconds=0.5).line() == line


def test_the_display_shows_transfers_the_round_and_events() -> None:
    events = Events()
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    display = LiveDisplay(events, console)
    events.round_started(3, 4 << 20)
    events.emit(Kind.FETCHED, "docs/small.txt", 1 << 20, "from 127.0.0.1:8001")
    events.emit(Kind.CONFLICT, "plan.txt", 10, "kept this peer's version as plan.sync-conflict-x.txt")
    with tempfile.TemporaryFile() as part:
        part.write(b"x" * (1 << 20))  # a quarter of a 4 MiB download has arrived
        with events.transfer("videos/big.mkv", 4 << 20, part.fileno()):
            console.print(display._render())
    screen = console.export_text()
    assert "videos/big.mkv" in screen and "1.0 MiB / 4.0 MiB" in screen and " 25%" in screen
    assert "/s" in screen and "ETA" in screen
    assert "round: 2 of 3 files" in screen  # files left, bytes left, rate, ETA
    assert "fetched   docs/small.txt" in screen and "conflict  plan.txt" in screen
    assert events.in_flight() == []  # gone when its block ends, before its file closes


def test_the_display_shows_uploads_apart_from_the_round() -> None:
    events = Events()
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    display = LiveDisplay(events, console)
    events.round_started(1, 4 << 20)
    with events.transfer("vm.img", 0, -1, progress=lambda: 5 << 20, to="10.0.0.5"):
        console.print(display._render())
    screen = console.export_text()
    row = next(line for line in screen.splitlines() if "vm.img" in line)
    assert row.startswith("↑ vm.img") and "5.0 MiB sent" in row and "to 10.0.0.5" in row and "%" not in row
    assert "round: 1 of 1 files, 4.0 MiB of 4.0 MiB left" in screen  # what is sent is not this round's download


def test_a_holder_shows_what_it_uploads_while_it_goes(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    data = os.urandom(12 << 20)
    (a / "big.bin").write_bytes(data)
    tracker = start_tracker()
    holder = engine(a, tracker.port, max_rate=4 << 20)  # ~3 s of upload to watch
    wait_until(lambda: "big.bin" in tracker.directory.entries(), 20, "a to report")
    seen: list[int] = []

    def uploading() -> bool:
        rows = [v for v in holder.events.in_flight() if v.to is not None and v.path == "big.bin"]
        seen.extend(v.done for v in rows)
        return bool(rows) and rows[0].to == LOOPBACK and rows[0].done > 0

    engine(b, tracker.port)
    wait_until(uploading, 20, "the upload to show on the holder")
    wait_until(lambda: (b / "big.bin").exists(), 30, "the download to finish")
    assert (b / "big.bin").read_bytes() == data
    wait_until(lambda: holder.events.in_flight() == [], 10, "the row to go with the upload")
    assert max(seen) <= len(data) and seen == sorted(seen)  # one row counting up, never past the file


def test_the_idle_line_says_where_the_last_round_left_the_folder() -> None:
    from p2psync.events import Behind, RoundOutcome

    events = Events()
    console = Console(record=True, width=120, force_terminal=True, color_system=None)
    display = LiveDisplay(events, console)
    console.print(display._render())
    events.round_ended(RoundOutcome(0.0, (Behind("a.txt", "127.0.0.1:8001", "failed"),)))
    console.print(display._render())
    events.round_ended(RoundOutcome(0.0))
    console.print(display._render())
    lines = console.export_text().splitlines()
    assert lines[0] == "connecting to the tracker..."
    assert lines[1].startswith("not in sync: 1 paths behind")
    assert lines[2] == "in sync: waiting for changes"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (Debian: apt-get install tmux)")
def test_the_live_display_in_a_real_terminal(tmp_path: Path, env, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(24 << 20))
    tracker = start_tracker()
    engine(a, tracker.port)
    wait_until(lambda: "big.bin" in tracker.directory.entries(), 20, "a to report")
    settings = {k: v for k, v in env.items() if k.startswith(("P2PSYNC", "PYTHON", "PATH", "HOME"))}
    command = " ".join(
        [
            "env",
            *(shlex.quote(f"{k}={v}") for k, v in settings.items()),
            shlex.quote(sys.executable),
            "-m p2psync.cli sync",
            shlex.quote(str(b)),
            f"--tracker {LOOPBACK}:{tracker.port} --port 0 --max-rate 4M",
        ]
    )
    server = f"p2psync-test-{os.getpid()}-{tmp_path.name}"
    tmux = ["tmux", "-L", server]
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "30", command], check=True, timeout=20)
    try:

        def screen() -> str:
            shot = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, timeout=10)
            return shot.stdout

        wait_until(lambda: "big.bin" in screen() and "%" in screen() and "/s" in screen(), 30, "the display")
        shown = screen()
        line = next(row for row in shown.splitlines() if "big.bin" in row and "%" in row)
        assert "MiB/s" in line or "KiB/s" in line, shown
        assert "ETA" in line and "round:" in shown, shown
        assert "Traceback" not in shown
        wait_until(lambda: (b / "big.bin").exists(), 60, "the download to finish")
        assert (b / "big.bin").read_bytes() == (a / "big.bin").read_bytes()
    finally:
        subprocess.run([*tmux, "kill-server"], timeout=10, check=False)


def test_rate_limited_peers_move_every_byte(tmp_path: Path, start_tracker, engine) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    big = os.urandom(3 << 20)  # alone, resumable, received in slices
    small = {f"s/{i}.txt": os.urandom(5000) for i in range(30)}  # pipelined, each body taken from the bucket
    (a / "big.bin").write_bytes(big)
    (a / "s").mkdir()
    for name, data in small.items():
        (a / name).write_bytes(data)
    tracker = start_tracker()
    engine(a, tracker.port, max_rate=16 << 20)  # uploads limited ...
    engine(b, tracker.port, max_rate=8 << 20)  # ... and downloads
    wait_until(lambda: (b / "big.bin").exists() and len(list((b / "s").glob("*"))) == 30, 30, "every file")
    assert (b / "big.bin").read_bytes() == big
    assert {f"s/{p.name}": p.read_bytes() for p in (b / "s").iterdir()} == small
