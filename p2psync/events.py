"""What the engine did, for the display, the log and `--once`: file events,
round summaries, and the transfers in flight.

The engine emits; listeners (the terminal display, the plain log, a round's
own tally) subscribe. Progress is never pushed from the copy loops: a
transfer in flight registers how to read its position (the offset of its
file descriptor, which the receive loop advances), and a display samples it a
few times a second. Listeners run on the emitting thread: keep them quick.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from p2psync.records import quick_frozen

__all__ = [
    "Behind",
    "Event",
    "Events",
    "Kind",
    "LogEvents",
    "RoundOutcome",
    "RoundStart",
    "RoundSummary",
    "Tally",
    "Transfer",
    "TransferView",
    "count_text",
    "size_text",
]

log = logging.getLogger("p2psync.events")


class Kind(enum.Enum):
    """What happened to one path."""

    FETCHED = "fetched"  # a newer version arrived from a holder
    COPIED = "copied"  # a wanted version was already here under another name: copied, not fetched
    TRASHED = "trashed"  # deleted on another peer: moved to .p2psync/trash/
    CONFLICT = "conflict"  # changed here and elsewhere: this peer's version kept aside (detail: its new name)
    FAILED = "failed"  # could not be fetched from any holder this round (detail: why)
    HELD_BACK = "held back"  # a deletion the brake kept from happening
    UPDATED = "updated"  # the same bytes as the network's: only its mode or mtime taken (detail: which)


@quick_frozen
@dataclass(frozen=True)
class Event:
    kind: Kind
    path: str
    size: int = 0
    detail: str = ""  # where from, the conflict copy's name, why it failed
    received: int | None = None  # bytes that crossed the network for it, where not `size` (a delta)


@dataclass(frozen=True)
class RoundSummary:
    """One round that did something: what moved and how long it took."""

    fetched: int
    copied: int
    trashed: int
    conflicts: int
    failed: int
    held_back: int
    bytes: int
    seconds: float
    received: int | None = None  # bytes over the network, where deltas made it less than `bytes`
    updated: int = 0  # files that took only another peer's mode or mtime

    @property
    def rate(self) -> float:
        """Bytes per second fetched in this round."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        network = "" if self.received is None else f", {size_text(self.received)} of it over the network"
        took = f"{size_text(self.bytes)} in {self.seconds:.2f} s, {size_text(self.rate)}/s{network}"
        # Nothing fetched, something else done (a deletion applied): only what was done.
        others = self._others()
        parts = [f"{self.fetched} fetched ({took})"] if self.fetched or self.bytes or not others else []
        for count, one, many in others:
            parts.append(count_text(count, one, many))
        return "round: " + ", ".join(parts)

    def _others(self) -> list[tuple[int, str, str]]:
        """What the round did besides fetching: (count, singular, plural) for each nonzero count."""
        counts = (
            (self.copied, "copied locally", "copied locally"),
            (self.updated, "updated in place", "updated in place"),
            (self.trashed, "moved to trash", "moved to trash"),
            (self.conflicts, "conflict kept", "conflicts kept"),
            (self.failed, "failed", "failed"),
            (self.held_back, "deletion held back", "deletions held back"),
        )
        return [c for c in counts if c[0]]


@dataclass(frozen=True)
class TransferView:
    """A transfer in flight as a display samples it."""

    path: str
    done: int
    total: int  # 0 for an upload: the receiver decides how much it asks for (a delta: some runs)
    started: float  # time.monotonic()
    to: str | None = None  # an upload: the peer it goes to; None: a download


class Transfer:
    """One large download in flight; `done()` reads how far it got."""

    def __init__(
        self, path: str, total: int, fd: int, start: int, progress: Callable[[], int] | None, to: str | None = None
    ) -> None:
        self.path, self.total, self._fd, self._start, self.to = path, total, fd, start, to
        self._progress = progress  # written out of order (a chunked fetch), or sent: how far, counted by the writer
        self.started = time.monotonic()

    def done(self) -> int:
        if self._progress is not None:
            return self._progress()
        try:
            return max(0, os.lseek(self._fd, 0, os.SEEK_CUR) - self._start)
        except OSError:
            return 0


@dataclass(frozen=True)
class RoundStart:
    """A round that has something to fetch: how much."""

    files: int
    bytes: int


Listener = Callable[[Event], None]
SummaryListener = Callable[[RoundSummary], None]
StartListener = Callable[[RoundStart], None]


class Events:
    """The hub between the engine and whoever watches it. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._summary_listeners: list[SummaryListener] = []
        self._start_listeners: list[StartListener] = []
        self.last_outcome: RoundOutcome | None = None  # where the last round left the folder (displays sample it)
        self._transfers: dict[int, Transfer] = {}

    def subscribe(
        self,
        listener: Listener | None = None,
        summaries: SummaryListener | None = None,
        starts: StartListener | None = None,
    ) -> None:
        with self._lock:
            if listener is not None:
                self._listeners.append(listener)
            if summaries is not None:
                self._summary_listeners.append(summaries)
            if starts is not None:
                self._start_listeners.append(starts)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.remove(listener)

    def emit(self, kind: Kind, path: str, size: int = 0, detail: str = "", received: int | None = None) -> None:
        self.emit_all([Event(kind, path, size, detail, received)])

    def emit_all(self, events: Sequence[Event]) -> None:
        """Tell every listener of each of `events`, in order (a batch of installs: one
        look at the listeners for all of them)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            for event in events:
                listener(event)

    def round_ended(self, outcome: RoundOutcome) -> None:
        self.last_outcome = outcome

    def round_started(self, files: int, nbytes: int) -> None:
        with self._lock:
            listeners = list(self._start_listeners)
        for listener in listeners:
            listener(RoundStart(files, nbytes))

    def round_done(self, summary: RoundSummary) -> None:
        with self._lock:
            listeners = list(self._summary_listeners)
        for listener in listeners:
            listener(summary)

    @contextlib.contextmanager
    def transfer(
        self,
        path: str,
        total: int,
        fd: int,
        start: int = 0,
        progress: Callable[[], int] | None = None,
        to: str | None = None,
    ) -> Iterator[None]:
        """Show a download of `total` bytes into `fd` (positioned at `start`, or counted
        by `progress`) while the block runs; with `to`, an upload to that peer
        (`progress` counts what was sent). The block must end before `fd` is
        closed: sampling holds the lock, so a closed (and perhaps reused)
        descriptor is never read."""
        item = Transfer(path, total, fd, start, progress, to)
        with self._lock:
            self._transfers[id(item)] = item
        try:
            yield
        finally:
            with self._lock:
                del self._transfers[id(item)]

    def in_flight(self) -> list[TransferView]:
        with self._lock:
            return [TransferView(t.path, t.done(), t.total, t.started, t.to) for t in self._transfers.values()]


class LogEvents:
    """The plain display: one INFO line per file event, one per round that did anything."""

    def __init__(self, logger: logging.Logger = log, only_warnings: bool = False) -> None:
        self._log = logger
        self._only_warnings = only_warnings  # beside a live display, which shows the rest

    def __call__(self, event: Event) -> None:
        level = logging.WARNING if event.kind in (Kind.FAILED, Kind.CONFLICT) else logging.INFO
        if (self._only_warnings and level < logging.WARNING) or not self._log.isEnabledFor(level):
            return  # before any formatting: a quiet join of 10,000 files formats nothing
        detail = f" {event.detail}" if event.detail else ""
        size = f" ({size_text(event.size)})" if event.kind in (Kind.FETCHED, Kind.COPIED) else ""
        self._log.log(level, "%s %s%s%s", event.kind.value, event.path, detail, size)

    def summary(self, summary: RoundSummary) -> None:
        self._log.info("%s", summary.line())

    def attach(self, events: Events) -> None:
        events.subscribe(self, self.summary)


def count_text(n: int, one: str, many: str | None = None) -> str:
    """`n` of something for people: "1 file", "3 files" (`many`: an irregular plural)."""
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"


def size_text(n: float) -> str:
    """`n` bytes for people: 512 B, 3.4 MiB."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


@dataclass(frozen=True)
class Behind:
    """A path this peer does not yet hold at the version the network has."""

    path: str
    holder: str  # HOST:PORT of the peer the directory names for it
    why: str  # failed, held back by the brake, changed here meanwhile


@dataclass(frozen=True)
class RoundOutcome:
    """Where a round left the folder: in sync with the directory, or what is behind."""

    time: float  # time.time() at the end of the round
    behind: tuple[Behind, ...] = ()
    held_back: int = 0  # deletions the brake kept from happening

    @property
    def in_sync(self) -> bool:
        return not self.behind and not self.held_back


class Tally:
    """A round's own count of its events, for its summary line and its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def restart(self) -> None:
        with self._lock:
            self.events = []
            self.started = time.monotonic()

    def paths(self, *kinds: Kind) -> set[str]:
        with self._lock:
            return {e.path for e in self.events if e.kind in kinds}

    def summary(self, held_back: int) -> RoundSummary | None:
        """The round's summary, or None if it did nothing."""
        with self._lock:
            events = list(self.events)
        if not events:
            return None
        count = {kind: 0 for kind in Kind}
        for event in events:
            count[event.kind] += 1
        fetched = [e for e in events if e.kind is Kind.FETCHED]
        received = sum(e.size if e.received is None else e.received for e in fetched)
        return RoundSummary(
            fetched=count[Kind.FETCHED],
            copied=count[Kind.COPIED],
            trashed=count[Kind.TRASHED],
            conflicts=count[Kind.CONFLICT],
            failed=count[Kind.FAILED],
            held_back=held_back,
            bytes=sum(e.size for e in fetched),
            seconds=time.monotonic() - self.started,
            received=received if any(e.received is not None for e in fetched) else None,
            updated=count[Kind.UPDATED],
        )
