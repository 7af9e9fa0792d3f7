"""The peer: serves its folder to other peers and fetches what the tracker says is newer.

Strategy: `FileSynchronizer` keeps the classic API and shape (a thread, a
listening `server`, a tracker `client`, `msg`, `sync`, `syncfile`,
`process_message`) so code written against the classic assignment runs
unchanged. Underneath: every request is served on its own short-lived thread
(bounded), bytes move through the core's copy loops, every name goes through
`safe_name`, downloads are hashed while received and installed atomically,
and a tracker failure is logged and retried with backoff instead of ending
the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from p2psync.chunking import DELTA_MIN_BYTES
from p2psync.config import DAY_S, PeerSettings
from p2psync.deadlines import Watchdog
from p2psync.errors import FolderGone, ProtocolError
from p2psync.events import Behind, Events, Kind, LogEvents, RoundOutcome, Tally
from p2psync.ignore import IgnoreRules
from p2psync.local import Folder, LocalFile, sync_mode
from p2psync.local.watching import FolderWatcher, require_watching
from p2psync.membership import tracker_handshake, wrap_client
from p2psync.net import family
from p2psync.paths import is_classic_name
from p2psync.protocol import (
    FEATURES,
    DirectoryEntry,
    FileInfo,
    Listing,
    apply_delta,
    decode_entry,
    decode_listing,
    encode_init,
    encode_keepalive,
)
from p2psync.protocol.auth import Channel
from p2psync.ratelimit import RateLimiter
from p2psync.status import NOTE, outcome_note
from p2psync.sync import Action, Deletion, Version, clashes, conflict_name, decide_paths, merge
from p2psync.transfer import Buffer

from .fetch import Fetcher
from .server import FileServer

__all__ = ["FileSynchronizer"]

log = logging.getLogger(__name__)

TRACKER_TIMEOUT_S = 180.0  # the classic client timeout
MAX_DIRECTORY_BYTES = 64 * 1024 * 1024  # one directory line from the tracker: ~500,000 entries
CHANGE_SETTLE_S = 0.1  # after a watched change, wait this long so a burst of changes makes one round
FULL_SCAN_INTERVAL_S = 60.0  # when watching, rescan at least this often anyway (a missed event heals)
FULL_DECISION_INTERVAL_S = 60.0  # every path is decided afresh at least this often, not only what changed
UNSETTLED_RETRY_S = 1.0  # when watching, look again this soon at a file that changed while the scan read it
POLL_WAIT_S = 25.0  # a watching peer's KeepAlive lets the tracker hold the reply until a change, this long
EXPIRY_INTERVAL_S = 3600.0  # how often old trash and own deletions are let go


# ------------------------------------------------------------------ the peer


class FileSynchronizer(threading.Thread):
    """A peer serving and syncing a folder: by default the current working
    directory as at construction, under the classic rule (the classic API).

    The constructor binds `server` on `(host, port)` (port 0: any free port)
    and creates the tracker socket `client` with a 180 s timeout, unconnected.
    `folder` and `settings` make it the `p2psync` command's engine: the whole
    tree, deletions and conflicts, an index in `folder/.p2psync/`.
    """

    BUFFER_SIZE = 8192

    def __init__(
        self,
        trackerhost: str,
        trackerport: int,
        port: int,
        host: str = "0.0.0.0",
        *,
        folder: str | os.PathLike[str] | None = None,
        settings: PeerSettings | None = None,
        rules: IgnoreRules | None = None,
        events: Events | None = None,
        alternates: Sequence[tuple[str, int]] = (),
        **overrides: Any,
    ) -> None:
        settings = dataclasses.replace(settings or PeerSettings(), **overrides)
        super().__init__(name=f"p2psync-peer-{port}", daemon=True)
        if settings.watch:
            require_watching()  # before anything is opened or bound
        self.settings = settings
        self.trackerhost = trackerhost
        self.trackerport = trackerport
        # Trackers of one swarm (shared state), tried in turn when the current one fails.
        self._trackers = [(trackerhost, trackerport), *alternates]
        self._tracker_index = 0
        self.host = host
        self.interval = settings.interval
        self.first_delay = settings.first_delay
        self.max_backoff = settings.max_backoff
        root = os.getcwd() if folder is None else folder
        if rules is None:
            rules = IgnoreRules.classic_rules() if settings.classic else IgnoreRules.for_folder(root)
        self.folder = Folder(root, rules, state=not settings.classic)
        self.server = socket.socket(family(host), socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.server.bind((host, port))
            self.server.listen(128)
        except OSError:
            self.server.close()
            self.folder.close()
            raise
        self.port: int = self.server.getsockname()[1]
        self.name = f"p2psync-peer-{self.port}"
        self.client = self._new_client()
        self._reader: Buffer | None = None
        self._local = self.folder.scan()
        self._last_scan = time.monotonic()
        self._rescan = threading.Event()  # the folder may differ from the last scan
        self._wake = threading.Event()  # run a round now (a watched change, or exit)
        self._retry: threading.Timer | None = None  # a rescan soon, for files that changed while scanned
        # With `watch`, a round with no change skips the rescan, and a change starts a round.
        self._watcher = FolderWatcher(self.folder.root, self._on_folder_change, rules) if settings.watch else None
        self._send_lock = threading.Lock()  # the round and a watched change both send to the tracker
        self._owed = 0  # replies the tracker owes on this connection
        self._polling = False  # a long poll is out: a watched change cuts it short
        self._msg_waits = False  # `msg` is a long poll
        # Negotiation (design.md): the command declares its features from the first
        # Init, the classic adapter from its second, so its first Init is the
        # classic bytes. The replies say whether the tracker is a p2psync one.
        self._declare = not settings.classic
        self._tracker_extended: bool | None = None  # None: not known yet (no reply on this connection)
        # The whole directory as of the tracker's generation `_generation`: a delta reply applies to it.
        self._listing: Listing | None = None
        self._generation: str | None = None
        self._reported: tuple[Any, ...] | None = None  # what the tracker has from us: (report, declared)
        self._report = self._report_now()
        self._report_generation = self.folder.generation
        self.msg: bytes = self._encode_report(self._report)
        self._first_round = True
        self._backoff = 0.0
        self._again = False  # the tracker turned out to be a p2psync one: report the whole tree now
        self._at_once = False  # the next round follows the last scan with no wait between (set by the loops)
        self._stopping = threading.Event()
        self._watchdog = Watchdog()
        if events is None:  # nobody watches: every event is a log line
            events = Events()
            LogEvents().attach(events)
        self.events = events
        self._tally = Tally()  # this round's events: its summary line and its outcome
        events.subscribe(self._tally)
        rate = settings.max_rate
        self._file_server = FileServer(
            self.server,
            self.folder,
            self._watchdog,
            self.BUFFER_SIZE,
            RateLimiter(rate) if rate else None,
            settings.group_key,
            settings.tls,
            events,
        )
        self._fetcher = Fetcher(
            self.folder,
            self._watchdog,
            (host, self.port),
            settings.max_file_size,
            events,
            RateLimiter(rate) if rate else None,
            settings.group_key,
            settings.tls,
        )
        self._warned: set[str] = set()
        self._held_back = 0  # deletions the brake held back in the last round
        self._settled: tuple[bytes, int] | None = None  # (directory, folder generation) of a round with nothing to do
        # Per path left as it was (Action.NOTHING): the local file, the directory entry and
        # the deletions it was decided on. A later round that finds the very same three
        # objects (a scan keeps an unchanged file's, a delta reply an unchanged entry's)
        # decides it the same way, so it is not decided again: a round on a large tree
        # costs what changed. Emptied on a new connection and every FULL_DECISION_INTERVAL_S.
        self._as_decided: dict[str, tuple[Any, Any, Any]] = {}
        self._next_full_decision = 0.0
        self._next_expiry = 0.0
        self._channel: Channel | None = None  # the tracker line's tags, when the swarm is members only
        self._once = False  # run_once: a tracker failure is the caller's to report, not retried
        self.tracker_error: str | None = None  # what went wrong with the tracker, until a reply comes
        self.folder_error: str | None = None  # why the peer stopped: its folder is gone (`FolderGone`)

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Serve file requests, connect to the tracker, sync every `interval` seconds
        (and, when watching, as soon as the folder changes)."""
        self._file_server.start(self.name)
        if self._watcher is not None:
            try:
                self._watcher.start()
            except Exception as exc:  # e.g. out of inotify watches: poll as a classic peer does
                log.warning("cannot watch %s (%s); rescanning every round instead", self.folder.root, exc)
                self._watcher = None
            self._rescan.set()  # what changed before the watcher started
        try:
            self._connect()
        except OSError as exc:
            self.fatal_tracker("Failed connecting to the tracker", exc)
        delay = self.first_delay
        while not self._wait_for_round(delay):
            self._at_once = delay == 0
            try:
                self.sync()
            except FolderGone as exc:  # report nothing more: its files are not deleted, the folder is
                self._stop_for(exc)
                return
            except Exception:  # a bug, not a peer's fault: keep the peer alive
                log.exception("sync round failed")
            # Watching, the next message goes out at once: an Init reports what this
            # round installed, a long poll waits at the tracker, which decides when to
            # answer. Unless this tracker is a classic one, which answers at once.
            watching = self._watcher is not None and self._watcher.alive and self._tracker_extended is not False
            delay = self._backoff or (CHANGE_SETTLE_S if watching else self.interval)
            if self._again and not self._backoff:
                self._again, delay = False, 0.0

    def run_once(self) -> RoundOutcome:
        """One round, as `p2psync sync --once` runs it: serve, connect, report, bring
        the folder up to date, and again at once if the tracker turned out to be a
        p2psync one (the first report is classic-shaped until it answers); then
        where that left the folder. Call `exit()` afterwards.

        Raises `OSError` when the tracker cannot be reached or fails, `FolderGone`
        when the folder vanished (said in one line, `folder_error`)."""
        self._once = True
        self._file_server.start(self.name)
        for attempt in range(len(self._trackers)):  # each tracker of the swarm in turn
            try:
                self._connect()
                break
            except OSError as exc:
                if attempt == len(self._trackers) - 1:
                    raise
                self.fatal_tracker("Failed connecting to the tracker", exc)
        for _ in range(3):
            self._at_once = True  # rounds back to back: the last scan is the current one
            try:
                self.sync()
            except FolderGone as exc:
                self._stop_for(exc)
                raise
            if self.tracker_error is not None:
                raise OSError(self.tracker_error)
            if not self._again:
                break
            self._again = False
        return self.last_round or RoundOutcome(time.time())

    def _stop_for(self, exc: FolderGone) -> None:
        """Say once why this peer stops syncing its folder (`folder_error`)."""
        self.folder_error = f"{exc}; stopped, without reporting its files as deleted"
        log.error("%s", self.folder_error)

    def _wait_for_round(self, delay: float) -> bool:
        """Wait `delay` seconds, or until a watched change (then a moment more, so a
        burst of changes makes one round); whether the peer is stopping. While the
        tracker is failing, changes do not cut the backoff short."""
        if self._backoff:
            return self._stopping.wait(delay)
        if self._wake.wait(delay) and not self._stopping.is_set():
            self._stopping.wait(CHANGE_SETTLE_S)
        self._wake.clear()
        return self._stopping.is_set()

    def _on_folder_change(self) -> None:
        self._rescan.set()
        self._wake.set()
        self._cut_poll_short()

    def _cut_poll_short(self) -> None:
        """While a long poll is out, send a plain KeepAlive: the tracker answers the
        poll at once (then this one), the round ends, and the next reports the change."""
        with self._send_lock:
            if not self._polling:
                return
            self._polling = False
            with contextlib.suppress(OSError):
                self.client.sendall(self._sealed(encode_keepalive(self.port)))
                self._owed += 1

    def _sealed(self, message: bytes) -> bytes:
        """`message` as it goes out: tagged when the connection is a members' one.
        Called under `_send_lock`, so tags are numbered in the order lines leave."""
        channel = self._channel
        return message if channel is None else channel.seal(message.rstrip(b"\n"))

    def _send(self, message: bytes, poll: bool) -> None:
        with self._send_lock:
            self.client.sendall(self._sealed(message))
            self._owed += 1
            self._polling = poll  # only once it is out: a cut must come after it

    def _read_reply(self, reader: Buffer) -> bytes:
        """The reply to the last message sent; replies owed for earlier ones (a long
        poll cut short) are read and dropped."""
        while True:
            line = reader.read_line()
            if self._channel is not None:
                line = self._channel.open(line)
            with self._send_lock:
                self._owed -= 1
                if self._owed <= 0:
                    self._owed = 0
                    self._polling = False
                    return line

    def exit(self) -> None:
        """Stop every thread and close every socket; returns within a second."""
        deadline = time.monotonic() + 0.9
        self._stopping.set()
        self._wake.set()
        if self._retry is not None:
            self._retry.cancel()
        if self._watcher is not None:
            self._watcher.stop()
        self._file_server.stop()
        for sock in (self.server, self.client):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        idle = self._fetcher.abort_all(0.5)  # downloads remove or keep their partial, then end
        me = threading.current_thread()
        for thread in [self, *self._file_server.threads]:
            if thread.is_alive() and thread is not me:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._watchdog.close()
        if idle and not self.is_alive():
            self.folder.close()

    # ------------------------------------------------------------ tracker side

    def _new_client(self) -> socket.socket:
        client = socket.socket(family(self.trackerhost), socket.SOCK_STREAM)
        client.settimeout(TRACKER_TIMEOUT_S)
        return client

    def _connect(self) -> None:
        self.client.connect((self.trackerhost, self.trackerport))
        self._channel = None
        key = self.settings.group_key
        if key is not None:  # members only: nothing is sent before both sides proved it
            self.client = wrap_client(self.client, key, self.settings.tls)
            self._channel = tracker_handshake(self.client, key)
        log.info("connected to tracker %s:%d", self.trackerhost, self.trackerport)

    def _client_connected(self) -> bool:
        try:
            self.client.getpeername()
        except OSError:
            return False
        return True

    def fatal_tracker(self, message: str, exc: BaseException | None = None) -> None:
        """The tracker failed. The classic peer exits here; this one logs, drops the
        connection and lets a later round reconnect, waiting longer each time."""
        self.tracker_error = f"{message} ({exc or 'no detail'})"
        failed = f"{self.trackerhost}:{self.trackerport}"
        self._tracker_index = (self._tracker_index + 1) % len(self._trackers)
        # The next tracker at once; the backoff grows only once every one has failed.
        if self._tracker_index == 0:
            self._backoff = min(max(self._backoff * 2, 1.0), self.max_backoff)
        else:
            self._again = True
        self.trackerhost, self.trackerport = self._trackers[self._tracker_index]
        if not self._once:
            log.warning(
                "tracker %s: %s (%s); %s",
                failed,
                message,
                exc or "no detail",
                f"retrying in {self._backoff:g} s"
                if len(self._trackers) == 1
                else f"trying {self.trackerhost}:{self.trackerport}",
            )
        try:
            self.client.close()
        finally:
            self.client = self._new_client()
            self._reader = None
            self._owed, self._polling = 0, False
            self._tracker_extended = None  # a new connection, maybe a new tracker
            self._listing = self._generation = None  # and its generations mean nothing to another one
            self._settled = None
            self._as_decided = {}
            self._reported = None  # a new connection starts with a full Init
            self._set_next_message()

    def sync(self) -> None:
        """One round: report to the tracker, read the directory, bring the folder up
        to date (fetch, stamp, trash, keep conflicts aside)."""
        # A round that follows the last scan at once (the constructor's, or the last
        # round's closing one) reuses it unless something wrote to the folder since:
        # starting on a tree takes one scan, not three.
        at_once, self._at_once = self._at_once, False
        opened = not self._first_round
        current = opened or at_once
        if opened:
            self._set_next_message(current=at_once)  # report what changed since the last round
        if not self._client_connected():
            try:
                self._connect()
            except OSError as exc:
                self.fatal_tracker("Failed connecting to the tracker", exc)
                return
        if self._reader is None or self._reader.sock is not self.client:
            self._reader = Buffer(self.client, self.BUFFER_SIZE, MAX_DIRECTORY_BYTES)
        try:
            self._send(self.msg, poll=self._msg_waits)
            line = self._read_reply(self._reader)
        except TimeoutError as exc:
            self.fatal_tracker("Failed waiting for the tracker to response", exc)
            return
        except (OSError, ProtocolError) as exc:
            if not self._stopping.is_set():  # exit() cuts a long poll short: nothing to report
                self.fatal_tracker("Lost the connection to the tracker", exc)
            return
        # The tracker now has this report: it was in the Init just sent, or a
        # KeepAlive was sent because the tracker had it already.
        self._reported = (self._report, self._declare)
        self._first_round = False
        self.tracker_error = None
        self._expire_old()
        if self._settled == (line, self.folder.generation):
            # The same directory as last round, which found nothing to do, and the
            # same folder: nothing to decode or decide (a round of an idle swarm).
            self._backoff = 0.0
            self._set_next_message(current=current)
            return
        try:
            listing = decode_listing(line)
        except ProtocolError as exc:
            self.fatal_tracker("The tracker sent a malformed directory", exc)
            return
        if listing.since is not None:
            if self._listing is None or listing.since != self._generation:
                # A delta from a generation this peer does not hold: ask for the whole directory now.
                log.debug("tracker sent a delta since %s; this peer holds %s", listing.since, self._generation)
                self._listing = self._generation = None
                self._again = True
                self._set_next_message(current=current)
                return
            listing = apply_delta(self._listing, listing)
        self._listing, self._generation = (listing, listing.generation) if listing.generation else (None, None)
        self._backoff = 0.0
        self._learn_tracker(listing)
        if not self._declare:  # the classic adapter's first Init has gone: now say what we can do, at once
            self._declare = self._again = True
        for name, why in listing.skipped:
            self._warn_once(f"skipped:{name}", f"tracker lists a bad entry {name[:200]!r}; skipping it: {why}")
        self._tally.restart()
        if self._bring_up_to_date(listing):
            self._settled = None
        else:
            self._settled = (line, self.folder.generation)
        if self._once and not self._again:
            return  # `--once` ends here: a next report would rescan what this round wrote, for no one
        # The scan this round opened with is still current unless the round wrote to the folder.
        self._set_next_message(current=current)

    def _learn_tracker(self, listing: Listing) -> None:
        """What the reply says of the tracker: extended replies come only from p2psync
        trackers, to peers that declared features."""
        extended = listing.extended
        if extended == self._tracker_extended:
            return
        self._tracker_extended = extended
        self._report = self._report_now()  # what this tracker may see has changed
        if extended:
            log.info("tracker %s:%d speaks p2psync: syncing the whole tree", self.trackerhost, self.trackerport)
            self._again = self._reported != (self._report, self._declare)  # the whole tree goes out at once
        elif self._declare and not self.settings.classic:
            log.info(
                "tracker %s:%d is a classic one: syncing only the files a classic peer can have",
                self.trackerhost,
                self.trackerport,
            )

    # ------------------------------------------------------------ what to report

    def _report_now(self) -> tuple[tuple[FileInfo, ...], tuple[tuple[str, Deletion], ...]]:
        """Files and tombstones to report, as far as this tracker may see them: to a
        tracker not (yet) known to be a p2psync one, only what a classic peer could
        have made itself, and no tombstones (classic peers get what it relays)."""
        extended = self._tracker_extended is True
        infos = tuple(
            self._info(f) if extended else f.info()
            for f in sorted(self._local.values(), key=lambda f: f.name)
            if extended or is_classic_name(f.name)
        )
        deleted = tuple(sorted(self.folder.own_deletions().items())) if extended else ()
        return infos, deleted

    def _info(self, f: LocalFile) -> FileInfo:
        """How a p2psync tracker is told of `f`: with its chunk list's id, if it is large."""
        info = f.info()
        list_id = self.folder.list_id(f.sha256) if f.size >= DELTA_MIN_BYTES else None
        return info if list_id is None else dataclasses.replace(info, chunks=list_id)

    def _encode_report(self, report: tuple[tuple[FileInfo, ...], tuple[tuple[str, Deletion], ...]]) -> bytes:
        infos, deleted = report
        return encode_init(self.port, infos, FEATURES if self._declare else (), deleted, self._since())

    def _since(self) -> str | None:
        """The generation to ask a delta from: the last whole directory's, when this tracker makes deltas."""
        listing = self._listing
        return self._generation if listing is not None and "delta" in listing.features else None

    def _set_next_message(self, current: bool = False) -> None:
        """Init when the folder differs from what the tracker has, else KeepAlive.
        `current`: the last scan was taken moments ago, in this round; it is
        reused unless something wrote to the folder since."""
        if self._needs_scan(current):
            self._rescan.clear()  # before the scan: a change during it sets it again
            self._local = self.folder.scan()
            self._last_scan = time.monotonic()
            if self.folder.unsettled:
                self._look_again_soon()
        if self.folder.generation != self._report_generation:  # rebuild the report only after a change
            self._report, self._report_generation = self._report_now(), self.folder.generation
        if self._reported != (self._report, self._declare):
            self.msg = self._encode_report(self._report)
            self._msg_waits = False
        else:
            # Watching, a KeepAlive is a long poll: a p2psync tracker answers it when the directory changes.
            self._msg_waits = self._watcher is not None and self._watcher.alive and self._tracker_extended is True
            self.msg = encode_keepalive(self.port, POLL_WAIT_S if self._msg_waits else None, since=self._since())

    def _look_again_soon(self) -> None:
        """A file changed while the scan read it, and the scan kept its last version:
        watching, rescan in a moment even if no event comes (the one that told of
        the change was used up by this scan, and a file written to the end may
        send no more). Without a watcher every round rescans anyway."""
        watcher = self._watcher
        if watcher is None or not watcher.alive or self._stopping.is_set():
            return
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Timer(UNSETTLED_RETRY_S, self._on_folder_change)
            self._retry.daemon = True
            self._retry.start()

    def _needs_scan(self, current: bool) -> bool:
        """Nothing wrote to the folder since a `current` scan: no. Else, without a
        (live) watcher, yes; with one, only after a change, and at least every
        `FULL_SCAN_INTERVAL_S` in case one was missed."""
        if current and not self._rescan.is_set():
            return False
        watcher = self._watcher
        return (
            watcher is None
            or not watcher.alive
            or self._rescan.is_set()
            or time.monotonic() - self._last_scan >= FULL_SCAN_INTERVAL_S
        )

    # ------------------------------------------------------------ bringing the folder up to date

    def _bring_up_to_date(self, listing: Listing) -> bool:
        """Decide for every path (`sync.plan`) and act: fetch, stamp, trash, keep
        aside. Whether there was anything to do (done or not)."""
        rules = self.folder.rules
        remote: dict[str, DirectoryEntry] = {}
        for name, listed in listing.files.items():
            why = rules.why_not(name)
            if why is not None:
                self._warn_once(name, f"tracker lists {name[:200]!r}, which is not synced here ({why}); skipping it")
            else:
                remote[name] = listed
        extended = listing.extended
        deleted = listing.deleted if extended else {}
        local = self._local
        clashing = clashes(local.keys(), remote.keys())
        paths = self._paths_to_decide(local, remote, deleted, clashing)
        ours_all = {path: local[path].version() for path in paths if path in local}
        theirs_all = {path: remote[path].version() for path in paths if path in remote}
        todo: list[tuple[str, DirectoryEntry]] = []
        expect: dict[str, Any] = {}
        trash: list[tuple[str, LocalFile, Deletion]] = []
        agreed: list[tuple[str, Version]] = []
        left: list[str] = []  # decided: nothing to do
        wrote = False
        for path, action in decide_paths(paths, ours_all, theirs_all, deleted, self.folder.base, extended, clashing):
            mine = local.get(path)
            entry: DirectoryEntry | None = remote.get(path)
            ours, theirs = ours_all.get(path), theirs_all.get(path)
            if action is Action.KEEP_FOLDER:
                self._warn_once(f"clash:{path}", f"{path}: a folder here, a file on another peer; keeping the folder")
            elif action is Action.ASIDE:
                assert mine is not None
                wrote |= self._keep_aside(path, mine, "a folder of that name on another peer")
            elif action is Action.NOTHING:
                left.append(path)
                if ours is not None and theirs is not None and ours.same_content(theirs):
                    agreed.append((path, theirs))
            elif action is Action.STAMP:
                assert mine is not None and entry is not None and theirs is not None
                if self.folder.set_mtime(path, entry.mtime, entry.mode, expect=mine.key):
                    agreed.append((path, theirs))
                    wrote = True
                    self.events.emit(Kind.UPDATED, path, mine.size, _stamped(mine, entry))
            elif action is Action.TRASH:
                assert mine is not None and ours is not None
                killer = next(d for d in deleted.get(path, ()) if d.kills(ours))
                trash.append((path, mine, killer))
            elif entry is not None:  # FETCH, or CONFLICT: ours aside, then theirs
                if action is Action.CONFLICT:
                    assert mine is not None
                    if not self._keep_aside(path, mine, "changed here and on another peer; the other is newer"):
                        continue
                    wrote = True
                    entry = dataclasses.replace(entry, vector=merge(entry.vector, mine.vector))
                    expect[path] = None
                else:
                    expect[path] = mine.key if mine is not None else None
                todo.append((path, entry))
        self.folder.agree(agreed)
        self._remember_decided(paths, left, local, remote, deleted)  # after agree: it may renew a local file
        if todo:  # before the deletions: a file renamed elsewhere is copied from its old name here
            self.events.round_started(len(todo), sum(entry.size or 0 for _, entry in todo))
            self._fetch(todo, expect)
            wrote = True
        wrote |= self._apply_deletions(trash)
        self.folder.prune_partials({e.sha256 for _, e in todo if e.sha256 is not None})
        if wrote:
            self._rescan.set()  # this round wrote to the folder (its own events may still be on the way)
        self._finish_round(todo, trash)
        return wrote or bool(todo or trash)

    def _paths_to_decide(
        self,
        local: Mapping[str, LocalFile],
        remote: Mapping[str, DirectoryEntry],
        deleted: Mapping[str, tuple[Deletion, ...]],
        clashing: tuple[set[str], set[str]],
    ) -> list[str]:
        """The paths this round decides, in path order: every one whose local file,
        directory entry or deletions are not the ones it was left on, and every
        one in a file/folder clash; all of them now and then."""
        now = time.monotonic()
        if now >= self._next_full_decision:
            self._as_decided = {}
            self._next_full_decision = now + FULL_DECISION_INTERVAL_S
        seen = self._as_decided
        move_aside, skip = clashing
        missing = (None, None, None)
        return sorted(
            path
            for path in local.keys() | remote.keys()
            if (was := seen.get(path, missing))[0] is not local.get(path)
            or was[1] is not remote.get(path)
            or was[2] is not deleted.get(path)
            or path in move_aside
            or path in skip
        )

    def _remember_decided(
        self,
        paths: list[str],
        left: list[str],
        local: Mapping[str, LocalFile],
        remote: Mapping[str, DirectoryEntry],
        deleted: Mapping[str, tuple[Deletion, ...]],
    ) -> None:
        """Note what the `paths` decided this round were decided on: those `left` as
        they were, to be passed over until one of the three changes; the rest acted
        on, to be decided again."""
        seen = self._as_decided
        for path in paths:
            seen.pop(path, None)
        for path in left:
            seen[path] = (local.get(path), remote.get(path), deleted.get(path))

    def _finish_round(
        self, todo: list[tuple[str, DirectoryEntry]], trash: list[tuple[str, LocalFile, Deletion]]
    ) -> None:
        """Say what the round did (one summary line) and where it left the folder."""
        failed = self._tally.paths(Kind.FAILED)
        got = self._tally.paths(Kind.FETCHED, Kind.COPIED)
        behind = [
            Behind(path, f"{entry.ip}:{entry.port}", "failed" if path in failed else "changed here meanwhile")
            for path, entry in todo
            if path not in got
        ]
        if self._held_back:
            behind += [Behind(path, "", "deletion held back by the brake") for path, _, _ in trash]
        outcome = RoundOutcome(time.time(), tuple(behind), self._held_back)
        previous = self.last_round
        self.events.round_ended(outcome)
        if not self.settings.classic and (previous is None or previous.behind != outcome.behind):
            self.folder.write_note(NOTE, outcome_note(outcome, f"{self.trackerhost}:{self.trackerport}"))
        summary = self._tally.summary(self._held_back)
        if summary is not None:
            self.events.round_done(summary)

    def _keep_aside(self, path: str, mine: LocalFile, why: str) -> bool:
        peer = self.folder.peer_id
        aside = self.folder.keep_aside(
            path, lambda n: conflict_name(path, mine.mtime, peer if n == 0 else f"{peer}{n}")
        )
        if aside is not None:
            self.events.emit(Kind.CONFLICT, path, mine.size, f"{why}; kept this peer's version as {aside}")
        return aside is not None

    def _apply_deletions(self, trash: list[tuple[str, LocalFile, Deletion]]) -> bool:
        """Move what the network deleted to the trash, unless the brake holds it back."""
        if not trash:
            self._held_back = 0
            return False
        limit = self.settings.max_delete
        if not limit.allows(len(trash), len(self._local)):
            if self._held_back != len(trash):
                log.warning(
                    "not deleting %d of this folder's %d files that other peers deleted: over the limit (%s); "
                    "to let them go, run once with --max-delete 100%% (or --max-delete %d)",
                    len(trash),
                    len(self._local),
                    limit,
                    len(trash),
                )
            self._held_back = len(trash)
            return False
        self._held_back = 0
        moved = False
        for path, mine, deletion in trash:
            if self.folder.move_to_trash(path, mine.key, deletion):
                self.events.emit(Kind.TRASHED, path, mine.size, "(deleted on another peer; kept in .p2psync/trash/)")
                moved = True
        return moved

    @property
    def last_round(self) -> RoundOutcome | None:
        """Where the last round that looked at the directory left the folder (None: no round yet)."""
        return self.events.last_outcome

    @property
    def held_back(self) -> int:
        """Deletions from the network the brake held back in the last round."""
        return self._held_back

    def _fetch(self, todo: list[tuple[str, DirectoryEntry]], expect: dict[str, Any]) -> int:
        """Fetch what the round wants, copying locally what the folder already holds
        under another name (a rename or a copy elsewhere is not sent again)."""
        by_hash = {f.sha256: f.name for f in self._local.values()}
        trashed = set(self.folder.trash_paths())  # one walk of the trash, not a look per file
        remote: list[tuple[str, DirectoryEntry]] = []
        copied = 0
        for path, entry in todo:
            source = None
            if entry.sha256 is not None:  # the same bytes under another name here, or in the trash
                source = by_hash.get(entry.sha256) or (
                    self.folder.in_trash(path, entry.size) if path in trashed else None
                )
            if source not in (None, path) and self.folder.copy_local(source, path, entry.version(), expect[path]):
                self.events.emit(Kind.COPIED, path, entry.size or 0, f"from {source} (same content, nothing fetched)")
                copied += 1
                continue
            remote.append((path, entry))
        fetched = self._fetcher.fetch_all(remote, expect=expect) if remote else 0
        self.folder.flush()  # what the downloads installed goes into the index in one transaction
        return copied + fetched

    def _expire_old(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry and not self.settings.classic:
            self._next_expiry = now + EXPIRY_INTERVAL_S
            self.folder.expire(self.settings.trash_days * DAY_S)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def syncfile(self, filename: str, info: Mapping[str, Any]) -> bool:
        """Fetch `filename` from the holder `info` names (`ip`, `port`, `mtime`, and
        optionally `size`, `sha256`, `sources`) and install it with that mtime.

        Returns whether it succeeded; never raises for a network or peer failure.
        """
        try:
            entry = decode_entry(filename, dict(info))
        except ProtocolError as exc:
            log.warning("%s: bad holder description %r: %s", filename, info, exc)
            return False
        self._rescan.set()  # whatever happened, the next report looks at the folder again
        return self._fetcher.fetch(filename, entry)

    # ------------------------------------------------------------ serving

    def process_message(self, conn: socket.socket, addr: Any) -> None:
        """Serve one request on an accepted connection: `name\\n` -> header + bytes."""
        self._file_server.serve(conn, addr)


def _stamped(mine: LocalFile, entry: DirectoryEntry) -> str:
    """What a stamp took from the network, for its event line: the mode, the mtime, or both."""
    took = [f"mode {sync_mode(entry.mode):o}"] if entry.mode is not None and sync_mode(entry.mode) != mine.mode else []
    if entry.mtime > mine.mtime:
        took.append("mtime")
    return f"{' and '.join(took) or 'mtime'} from another peer (the same bytes)"
