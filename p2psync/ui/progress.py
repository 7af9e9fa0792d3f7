"""The live terminal display of `p2psync sync`: each transfer in flight (path,
bytes, rate, ETA; uploads of large files: bytes sent, rate, to whom), the
round (files and bytes left, rate, ETA) and the last few events, drawn with
rich and refreshed a few times a second.

It is fed by the engine's events (`p2psync.events`) and samples the transfers
in flight when it redraws; the copy loops never call it. Log lines go
through the same console (`RichHandler`), so they scroll above the display
instead of tearing it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from p2psync.events import Event, Events, Kind, RoundStart, RoundSummary, TransferView, size_text

__all__ = ["LiveDisplay", "rich_log_handler"]

REFRESH_PER_SECOND = 4
RECENT_EVENTS = 5
_STYLE = {
    Kind.FETCHED: "green",
    Kind.COPIED: "green",
    Kind.TRASHED: "yellow",
    Kind.CONFLICT: "magenta",
    Kind.FAILED: "red",
    Kind.HELD_BACK: "yellow",
    Kind.UPDATED: "green",
}


def rich_log_handler(console: Console) -> logging.Handler:
    """Log lines printed above the live display, never through it."""
    return RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False, log_time_format="%X")


def _eta(left: float, rate: float) -> str:
    if rate <= 0 or left <= 0:
        return "--:--"
    seconds = int(left / rate)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02}"
    )


class LiveDisplay:
    """Draws what `events` reports on `console` while it is entered (`with`)."""

    def __init__(self, events: Events, console: Console, recent: int = RECENT_EVENTS) -> None:
        self._events = events
        self._console = console
        self._lock = threading.Lock()
        self._recent: collections.deque[Text] = collections.deque(maxlen=recent)
        self._round: RoundStart | None = None
        self._round_started = 0.0
        self._done_files = 0
        self._done_bytes = 0
        self._last_summary: str | None = None
        events.subscribe(self._on_event, self._on_summary, self._on_start)
        self._live = Live(
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            get_renderable=self._render,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._live.stop()

    # ------------------------------------------------------------ fed by the engine (its threads)

    def _on_start(self, start: RoundStart) -> None:
        with self._lock:
            self._round, self._round_started = start, time.monotonic()
            self._done_files = self._done_bytes = 0

    def _on_event(self, event: Event) -> None:
        line = Text.assemble(
            (f"{event.kind.value:<9} ", _STYLE.get(event.kind, "")),
            event.path,
            (f" {event.detail}" if event.detail else "", "dim"),
        )
        with self._lock:
            self._recent.append(line)
            if event.kind in (Kind.FETCHED, Kind.COPIED, Kind.FAILED):
                self._done_files += 1
                if event.kind is Kind.FETCHED:
                    self._done_bytes += event.size

    def _on_summary(self, summary: RoundSummary) -> None:
        with self._lock:
            self._round = None
            self._last_summary = summary.line()

    # ------------------------------------------------------------ drawn (rich's refresh thread)

    def _render(self) -> RenderableType:
        flying = self._events.in_flight()
        with self._lock:
            parts: list[RenderableType] = []
            if flying:
                parts.append(self._transfers(flying))
            parts.append(self._round_line(flying))
            parts.extend(self._recent)
        return Group(*parts)

    @staticmethod
    def _transfers(flying: list[TransferView]) -> Table:
        table = Table.grid(padding=(0, 1))
        for justify in ("left", "right", "right", "right", "right"):
            table.add_column(justify=justify)
        now = time.monotonic()
        for t in sorted(flying, key=lambda t: (t.to is not None, t.path)):
            rate = t.done / max(now - t.started, 1e-3)
            if t.to is not None:  # an upload: how much, not of how much (a delta asks for some runs)
                table.add_row(
                    Text(f"↑ {t.path}", style="bold", overflow="ellipsis", no_wrap=True),
                    f"{size_text(t.done)} sent",
                    "",
                    f"{size_text(rate)}/s",
                    f"to {t.to}",
                )
                continue
            percent = 100 * t.done / t.total if t.total else 100.0
            table.add_row(
                Text(t.path, style="bold", overflow="ellipsis", no_wrap=True),
                f"{size_text(t.done)} / {size_text(t.total)}",
                f"{percent:3.0f}%",
                f"{size_text(rate)}/s",
                f"ETA {_eta(t.total - t.done, rate)}",
            )
        return table

    def _round_line(self, flying: list[TransferView]) -> Text:
        if self._round is None:
            outcome = self._events.last_outcome
            last = f"  (last {self._last_summary})" if self._last_summary else ""
            if outcome is None:
                return Text("connecting to the tracker...", style="dim")
            if outcome.in_sync:
                return Text(f"in sync: waiting for changes{last}", style="dim")
            held = f", {outcome.held_back} deletions held back by the brake" if outcome.held_back else ""
            return Text(
                f"not in sync: {len(outcome.behind)} paths behind{held} (p2psync status DIR says which){last}",
                style="yellow",
            )
        done = self._done_bytes + sum(t.done for t in flying if t.to is None)
        elapsed = max(time.monotonic() - self._round_started, 1e-3)
        rate = done / elapsed
        files_left = max(0, self._round.files - self._done_files)
        bytes_left = max(0, self._round.bytes - done)
        return Text(
            f"round: {files_left} of {self._round.files} files, {size_text(bytes_left)} of "
            f"{size_text(self._round.bytes)} left, {size_text(rate)}/s, ETA {_eta(bytes_left, rate)}",
            style="cyan",
        )
