"""Several trackers, one swarm: the truth in Redis, a mirror in each tracker.

Strategy (issue 12; design for Redis 7.0). Each tracker keeps answering from
its own in-memory `Directory`, so no peer message ever waits on Redis and the
selectors loop never touches it. What its own peers report goes out to Redis
on a writer thread: one Lua script per report applies it atomically (the
peer's record, its last-seen time in a sorted set, newer deletions into a
hash, and an entry in the change log, a Stream). A reader thread follows the
Stream (`XREAD BLOCK`) and hands the other trackers' changes to the loop,
which applies them to its mirror. A Stream reader keeps its position, so a
tracker that lost Redis for a while catches up (or, when the log was cut or
Redis came back empty, takes a whole snapshot and republishes its own peers).
Each entry carries the next number of a counter, taken in the same script,
so a reader still connected that fell more than the log's length behind
sees a number missing and takes a snapshot too.

Liveness: each tracker refreshes its own peers' last-seen times every few
seconds; any tracker removes peers unseen for the peer timeout (a Lua script
that checks the time again, so two trackers cannot both remove one). A
tracker removes a peer's record when that peer's connection closes, and only
while it is still the peer's owner: a peer that moved to another tracker
stays listed. A tracker that stops leaves its peers' records: they move to
another tracker, and the swarm keeps their files listed meanwhile.

Redis calls have short timeouts and no retries (redis-py's defaults would
block ~4 s per call while Redis is gone); a lost Redis is one warning, the
tracker keeps serving what it has, and tries again with backoff.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from p2psync.errors import ConfigError, ProtocolError
from p2psync.net import is_loopback
from p2psync.protocol import FileInfo, decode_peer_message, encode_init
from p2psync.sync.versions import Deletion

__all__ = ["PREFIX", "Change", "RedisState"]

log = logging.getLogger(__name__)

PREFIX = "p2psync:"  # every key this tracker uses starts so
STREAM_MAXLEN = 100_000  # changes kept in the log (approximately); a reader further behind resyncs
COUNTER = PREFIX + "log:n"  # the number of the last change logged
REFRESH_S = 5.0  # how often a tracker renews its own peers' last-seen times
TRIM_S = 3600.0  # how often deletions past their age leave Redis
TOMBSTONE_AGE_S = 30 * 86400  # as the directory's
TIMEOUT_S = 1.0  # one Redis call, connect or reply
MAX_BACKOFF_S = 5.0
_READ_BLOCK_MS = 1000

PeerKey = tuple[str, int]

# Every change goes into the log with the next number of the log's counter (`n`), in
# the same script, so a reader that finds a number missing knows the log was cut
# past it (it fell more than STREAM_MAXLEN behind) and reloads from the records.
# KEYS: peer record, alive set, stream, deletions hash, counter. ARGV: owner, peer id, record,
# deletions (JSON list of [field, record, time]), now, maxlen.
_REPORT = """
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'record', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
for _, d in ipairs(cjson.decode(ARGV[4])) do
  local old = redis.call('HGET', KEYS[4], d[1] .. '|t')
  if not old or tonumber(old) < tonumber(d[3]) then
    redis.call('HSET', KEYS[4], d[1], d[2], d[1] .. '|t', d[3])
  end
end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'op', 'report', 'origin', ARGV[1],
                  'peer', ARGV[2], 'record', ARGV[3], 'n', redis.call('INCR', KEYS[5]))
"""
# KEYS: peer record, alive set, stream, counter. ARGV: owner, peer id, maxlen.
_FORGET_OWNED = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'op', 'forget', 'origin', ARGV[1], 'peer', ARGV[2],
           'n', redis.call('INCR', KEYS[4]))
return 1
"""
# KEYS: peer record, alive set, stream, counter. ARGV: expirer, peer id, cutoff, maxlen.
_EXPIRE = """
local seen = redis.call('ZSCORE', KEYS[2], ARGV[2])
if seen and tonumber(seen) >= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'op', 'forget', 'origin', ARGV[1], 'peer', ARGV[2],
           'n', redis.call('INCR', KEYS[4]))
return 1
"""


@dataclass(frozen=True)
class Change:
    """What the loop applies to its mirror: a remote peer's report (`files` set), its
    departure (`files` None), or, with `snapshot`, the whole swarm as Redis holds it."""

    peer: PeerKey | None
    files: tuple[FileInfo, ...] | None = None
    deleted: tuple[tuple[str, Deletion], ...] = ()  # with a snapshot: every deletion Redis keeps
    snapshot: dict[PeerKey, tuple[tuple[FileInfo, ...], tuple[tuple[str, Deletion], ...]]] | None = None


def _peer_id(peer: PeerKey) -> str:
    return f"{peer[0]}|{peer[1]}"


def _peer_key(text: str) -> PeerKey | None:
    ip, _, port = text.rpartition("|")
    return (ip, int(port)) if ip and port.isdigit() else None


def _record(peer: PeerKey, files: Iterable[FileInfo], deleted: Iterable[tuple[str, Deletion]]) -> str:
    """A peer's report as Redis keeps it: the Init line it would send (validated
    again by `decode_peer_message` wherever it is read)."""
    return encode_init(peer[1], files, (), deleted).decode().rstrip("\n")


class RedisState:
    """The Redis side of one tracker. `publish_*` and `refresh` are called by the loop
    and never block; `changes()` gives the loop what other trackers did."""

    def __init__(self, url: str, peer_timeout: float = 180.0, advertise: str | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError("--state redis://... needs the redis extra: pip install 'p2psync[redis]'") from None
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: dict[str, Any] = {
            "socket_timeout": TIMEOUT_S,
            "socket_connect_timeout": TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": True,
        }
        try:
            self._writer = redis.Redis.from_url(url, **options)
            reader_options = dict(options, socket_timeout=TIMEOUT_S + _READ_BLOCK_MS / 1000)
            self._reader = redis.Redis.from_url(url, **reader_options)
        except ValueError as exc:
            raise ConfigError(f"--state {url}: {exc}") from None
        self.url = url
        self.owner = secrets.token_hex(6)  # this tracker, in records and in the log
        self.peer_timeout = peer_timeout
        # Peers this tracker sees at a loopback address are published at this one, which
        # peers of trackers on other machines can reach (None: as seen).
        self.advertise = advertise
        self._wake: Callable[[], None] = lambda: None
        self._out: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._in: collections.deque[Change] = collections.deque()
        self._local: dict[PeerKey, str] = {}  # our peers' current records (writer thread): republished on a resync
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_id = "0-0"
        self._last_n: int | None = None  # the counter of the last change read (None: not known)
        self._need_snapshot = threading.Event()
        self._lost = False
        self._scripts: dict[str, Any] = {}
        self.connected = threading.Event()

    # ------------------------------------------------------------ set-up

    def check(self) -> None:
        """Reach Redis now: `ConfigError` (one line for the user) if it cannot be."""
        try:
            self._writer.ping()
        except self._redis_errors as exc:
            raise ConfigError(f"cannot reach Redis at {self.url}: {exc}") from None
        except Exception as exc:  # auth, a wrong database: also the user's to fix
            raise ConfigError(f"Redis at {self.url}: {exc}") from None

    def start(self, wake: Callable[[], None]) -> None:
        """Start following Redis; `wake()` (from its threads) tells the loop there are changes."""
        self._wake = wake
        self._need_snapshot.set()
        for target, name in ((self._write_loop, "writer"), (self._read_loop, "reader")):
            thread = threading.Thread(target=target, name=f"p2psync-redis-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads. The records of this tracker's peers stay (see the module)."""
        self._stopping.set()
        self._out.put(("stop", None))
        for thread in self._threads:
            thread.join(TIMEOUT_S * 3)
        for client in (self._writer, self._reader):
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------ from the loop (never blocks)

    def publish_report(self, peer: PeerKey, files: Iterable[FileInfo], deleted: Iterable[tuple[str, Deletion]]) -> None:
        deleted = list(deleted)
        peer = self._public(peer)
        self._out.put(("report", (peer, _record(peer, files, deleted), deleted)))

    def publish_forget(self, peer: PeerKey) -> None:
        self._out.put(("forget", self._public(peer)))

    def refresh(self, peers: Iterable[PeerKey]) -> None:
        """The loop's own peers are alive now."""
        self._out.put(("alive", [self._public(p) for p in peers]))

    def _public(self, peer: PeerKey) -> PeerKey:
        return (self.advertise, peer[1]) if self.advertise and is_loopback(peer[0]) else peer

    def changes(self) -> list[Change]:
        """What other trackers did since the last call, in order."""
        out = []
        while self._in:
            out.append(self._in.popleft())
        return out

    # ------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        backoff = 0.0
        next_sweep = 0.0
        next_trim = time.time() + TRIM_S
        pending: list[tuple[str, Any]] = []
        while not self._stopping.is_set():
            try:
                if not pending:
                    pending.append(self._out.get(timeout=REFRESH_S))
                while True:
                    pending.append(self._out.get_nowait())
            except queue.Empty:
                pass
            try:
                if self._lost:
                    self._writer.ping()
                    self._back()
                for op, arg in pending:
                    self._apply(op, arg)
                pending.clear()
                now = time.time()
                if now >= next_sweep:
                    self._expire(now)
                    next_sweep = now + REFRESH_S
                if now >= next_trim:
                    self._trim(now - TOMBSTONE_AGE_S)
                    next_trim = now + TRIM_S
                backoff = 0.0
            except self._redis_errors as exc:
                self._lose(exc)
                pending = [p for p in pending if p[0] != "alive"]  # refreshed again soon anyway
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_S)
                self._stopping.wait(backoff)

    def _script(self, name: str, source: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = self._writer.register_script(source)
        return self._scripts[name]

    def _apply(self, op: str, arg: Any) -> None:
        keys = (PREFIX + "alive", PREFIX + "log", PREFIX + "deleted", COUNTER)
        if op == "report":
            peer, record, deleted = arg
            self._local[peer] = record
            tombstones = [[f"{name}\0{d.sha256 or ''}", _record(peer, (), [(name, d)]), d.time] for name, d in deleted]
            self._script("report", _REPORT)(
                keys=[self._key(peer), *keys],
                args=[self.owner, _peer_id(peer), record, json.dumps(tombstones), time.time(), STREAM_MAXLEN],
            )
        elif op == "forget":
            self._local.pop(arg, None)
            self._script("forget", _FORGET_OWNED)(
                keys=[self._key(arg), keys[0], keys[1], COUNTER], args=[self.owner, _peer_id(arg), STREAM_MAXLEN]
            )
        elif op == "alive" and arg:
            now = time.time()
            self._writer.zadd(keys[0], {_peer_id(p): now for p in arg})

    def _expire(self, now: float) -> None:
        cutoff = now - self.peer_timeout
        dead: list[str] = self._writer.zrangebyscore(  # type: ignore[assignment]  # decode_responses: str
            PREFIX + "alive", "-inf", f"({cutoff}", start=0, num=1000
        )
        for peer_id in dead:
            peer = _peer_key(peer_id)
            if peer is None:
                continue
            self._script("expire", _EXPIRE)(
                keys=[self._key(peer), PREFIX + "alive", PREFIX + "log", COUNTER],
                args=[self.owner, peer_id, cutoff, STREAM_MAXLEN],
            )

    def _trim(self, cutoff: float) -> None:
        """Drop deletions older than `cutoff` from Redis (each tracker drops them from its mirror)."""
        old = [
            field[: -len("|t")]
            for field, stamp in self._writer.hscan_iter(PREFIX + "deleted", match="*|t", count=1000)
            if float(stamp) < cutoff
        ]
        for start in range(0, len(old), 1000):
            chunk = old[start : start + 1000]
            self._writer.hdel(PREFIX + "deleted", *chunk, *(f"{f}|t" for f in chunk))

    def _back(self) -> None:
        """Redis answers again: republish this tracker's peers (it may have come back
        empty), and have the reader take a whole snapshot."""
        log.warning("Redis at %s is back; republishing this tracker's %d peers", self.url, len(self._local))
        self._lost = False
        for peer, record in list(self._local.items()):
            message = decode_peer_message(record.encode())
            self._apply("report", (peer, record, list(message.deleted)))
        self._need_snapshot.set()

    def _lose(self, exc: BaseException) -> None:
        if not self._lost:
            log.warning("lost Redis at %s (%s); serving the last directory and this tracker's peers", self.url, exc)
        self._lost = True
        self.connected.clear()

    @staticmethod
    def _key(peer: PeerKey) -> str:
        return f"{PREFIX}peer:{_peer_id(peer)}"

    # ------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            try:
                if self._need_snapshot.is_set():
                    self._snapshot()
                found: list[Any] = self._reader.xread(  # type: ignore[assignment]  # decode_responses: str
                    {PREFIX + "log": self._last_id}, count=1000, block=_READ_BLOCK_MS
                )
                changes = [c for _, entries in found for c in self._entries(entries)]
                if changes:
                    self._in.extend(changes)
                    self._wake()
                backoff = 0.0
            except self._redis_errors as exc:
                self._lose(exc)
                self._need_snapshot.set()
                backoff = min(max(backoff * 2, 0.2), MAX_BACKOFF_S)
                self._stopping.wait(backoff)

    def _entries(self, entries: list[tuple[str, dict[str, str]]]) -> list[Change]:
        """The changes of other trackers in `entries`, up to a gap in the log's
        numbers; at a gap, the rest is left and a reload from the records is due."""
        changes = []
        for entry_id, fields in entries:
            n = fields.get("n", "")
            if n.isdigit():  # a tracker too old to number its changes logs none: nothing to check
                if self._last_n is not None and int(n) != self._last_n + 1:
                    log.warning(
                        "missed %d changes in Redis's log (this tracker fell behind and the log was cut); "
                        "reloading the directory from Redis",
                        int(n) - self._last_n - 1,
                    )
                    self._need_snapshot.set()
                    break
                self._last_n = int(n)
            self._last_id = entry_id
            if fields.get("origin") == self.owner:
                continue  # this tracker's own change: applied locally already
            peer = _peer_key(fields.get("peer", ""))
            if peer is None:
                continue
            if fields.get("op") == "forget":
                changes.append(Change(peer))
                continue
            message = self._decode(fields.get("record", ""))
            if message is not None:
                changes.append(Change(peer, message.files or (), message.deleted))
        return changes

    def _snapshot(self) -> None:
        """Every record and deletion Redis holds, as one change for the mirror, and
        the log position to follow from (taken first: nothing falls in between)."""
        snap = self._reader.pipeline(transaction=True)  # the position and its number, as one
        snap.xrevrange(PREFIX + "log", count=1)
        snap.get(COUNTER)
        last, counter = snap.execute()
        self._last_id = str(last[0][0]) if last else "0-0"
        self._last_n = int(counter) if counter is not None and str(counter).isdigit() else None
        peers: dict[PeerKey, tuple[tuple[FileInfo, ...], tuple[tuple[str, Deletion], ...]]] = {}
        keys = list(self._reader.scan_iter(match=f"{PREFIX}peer:*", count=1000))
        pipe = self._reader.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "record", "owner")
        for key, (record, owner) in zip(keys, pipe.execute(), strict=True):
            if owner == self.owner:
                continue  # this tracker's own peers, which it holds as it sees them
            peer = _peer_key(key[len(f"{PREFIX}peer:") :])
            message = self._decode(record or "")
            if peer is not None and message is not None:
                peers[peer] = (message.files or (), message.deleted)
        tombstones: list[tuple[str, Deletion]] = []
        for field, value in self._reader.hscan_iter(PREFIX + "deleted", count=1000):
            if not field.endswith("|t"):
                message = self._decode(value)
                tombstones += list(message.deleted) if message is not None else []
        self._in.append(Change(None, deleted=tuple(tombstones), snapshot=peers))
        self._need_snapshot.clear()
        self.connected.set()
        self._wake()

    @staticmethod
    def _decode(record: str) -> Any:
        try:
            return decode_peer_message(record.encode())
        except (ProtocolError, UnicodeError) as exc:
            log.warning("skipping a bad record in Redis: %s", exc)
            return None
