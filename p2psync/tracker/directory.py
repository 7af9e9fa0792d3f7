"""The tracker's state: which live peer holds the version each path converges on,
and which versions were deleted.

Strategy: per path, every live holder's version is kept, so the entry can be
recomputed from that path's holders alone when a peer reports or leaves
(incremental: a report touching 10 paths costs 10 recomputes, not a rebuild
of the directory). The version listed is `sync.versions.pick` of those no
deletion kills: a function of the versions alone (the newest, a tie to the
larger hash, and a version made from another always over it), so every
tracker lists the same one whatever order reports came in; among the holders
of that version, the lowest (ip, port). Deletions (tombstones) are
kept after the peer that reported them leaves, bounded in age and number.
The encoded replies (classic: only what a classic peer could have made
itself, no deletions; extended, for p2psync peers) are cached and rebuilt
only after a change, since every message of every peer is answered with one.
Every change is logged (generation, path), so a p2psync peer that says which
generation it holds gets only what changed since (a delta): an idle swarm's
replies shrink to a few bytes. Sans-IO: no sockets, clocks or threads.
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Iterable
from dataclasses import replace

from p2psync.net import is_loopback
from p2psync.paths import is_classic_name
from p2psync.protocol import FEATURES, DirectoryEntry, FileInfo, encode_directory, encode_listing
from p2psync.sync.versions import Deletion, Version, pick

__all__ = ["MAX_TOMBSTONES", "TOMBSTONE_AGE_S", "Directory", "PeerKey"]

PeerKey = tuple[str, int]  # (ip as the tracker saw it, file-serving port)
MAX_TOMBSTONES = 100_000  # deletions kept; past it, the oldest go first
TOMBSTONE_AGE_S = 30 * 86400  # a deletion is listed this long after it happened
_PER_PATH = 8  # deletions of different versions of one path
MAX_LOG = 200_000  # changes remembered for deltas; a peer further behind gets the whole directory
_FILE, _DELETION = 0, 1  # what changed at a path: its entry, or its deletions


def _same_version(a: FileInfo, b: FileInfo) -> bool:
    """The same bytes, as far as the reports can tell: same mtime and size, and the
    same hash (so a hashed version's sources are all p2psync peers, which can
    verify and resume; a classic peer's file, with no hash, is never among them)."""
    return a.mtime == b.mtime and a.sha256 == b.sha256 and a.size == b.size


class Directory:
    """The version every path converges on, its live holders, and recent deletions."""

    def __init__(
        self, max_tombstones: int = MAX_TOMBSTONES, tombstone_age_s: float = TOMBSTONE_AGE_S, max_log: int = MAX_LOG
    ) -> None:
        self.max_log = max_log
        self._peers: dict[PeerKey, dict[str, FileInfo]] = {}
        self._holders: dict[str, dict[PeerKey, FileInfo]] = {}
        self._entries: dict[str, DirectoryEntry] = {}
        self._deleted: dict[str, dict[str, Deletion]] = {}  # path -> (sha256 or "") -> newest deletion of it
        self._tombstones = 0
        self.max_tombstones = max_tombstones
        self.tombstone_age_s = tombstone_age_s
        self._encoded: dict[tuple[str | None, bool], bytes] = {}  # by (loopback alias, extended), see encoded()
        self._deltas: dict[tuple[str | None, int], bytes] = {}  # by (loopback alias, since)
        self.generation = 0  # goes up whenever an entry or a deletion changes
        # A generation means something only to this directory: its token carries an epoch,
        # so a peer's token from another tracker (or an earlier run) asks for the whole directory.
        self.epoch = secrets.token_hex(4)
        self._touched: set[tuple[str, int]] = set()  # changes since the last generation: (path, what)
        self._log: list[tuple[str, int]] = []  # (path, what) per change, in generation order ...
        self._log_generations: list[int] = []  # ... and each one's generation
        self._log_floor = 0  # the log holds every change after this generation

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def peers(self) -> list[PeerKey]:
        """Every peer the directory knows, in the order they first reported."""
        return list(self._peers)

    def report(self, peer: PeerKey, files: Iterable[FileInfo], deleted: Iterable[tuple[str, Deletion]] = ()) -> bool:
        """Replace `peer`'s file list with `files` and take in its deletions;
        returns whether the directory changed."""
        new = {f.name: f for f in files}
        old = self._peers.get(peer, {})
        self._peers[peer] = new
        touched = [name for name, info in new.items() if old.get(name) != info]
        touched += [name for name in old if name not in new]
        for name in touched:
            holders = self._holders.setdefault(name, {})
            if name in new:
                holders[peer] = new[name]
            else:
                holders.pop(peer, None)
        added = [name for name, deletion in deleted if self._add_deletion(name, deletion)]
        changed = self._recompute(touched + added)
        if added and not changed:  # a deletion changes the extended reply even where no entry changed
            self._changed()
        return changed or bool(added)

    def add_deletions(self, deleted: Iterable[tuple[str, Deletion]]) -> bool:
        """Take in deletions without a reporting peer (another tracker's, from the
        shared state); whether the directory changed."""
        added = [name for name, deletion in deleted if self._add_deletion(name, deletion)]
        if added and not self._recompute(added):
            self._changed()
        return bool(added)

    def _add_deletion(self, name: str, deletion: Deletion) -> bool:
        kept = self._deleted.setdefault(name, {})
        key = deletion.sha256 or ""
        old = kept.get(key)
        if old is not None and old.time >= deletion.time:
            return False
        if old is None:
            self._tombstones += 1
        kept[key] = deletion
        self._touched.add((name, _DELETION))
        if len(kept) > _PER_PATH:
            del kept[min(kept, key=lambda k: kept[k].time)]
            self._tombstones -= 1
        if self._tombstones > self.max_tombstones * 1.1:  # amortized: trim to the bound once in a while
            self._trim(self.max_tombstones)
        return True

    def _trim(self, keep: int) -> None:
        ordered = sorted(((d.time, name, key) for name, ds in self._deleted.items() for key, d in ds.items()))
        for _, name, key in ordered[: max(0, len(ordered) - keep)]:
            self._drop_deletion(name, key)

    def _drop_deletion(self, name: str, key: str) -> None:
        kept = self._deleted.get(name)
        if kept is not None and kept.pop(key, None) is not None:
            self._tombstones -= 1
            self._touched.add((name, _DELETION))
            if not kept:
                del self._deleted[name]

    def expire(self, now: float) -> bool:
        """Forget deletions older than `tombstone_age_s` before `now`; whether any went."""
        cutoff = now - self.tombstone_age_s
        old = [(name, key) for name, ds in self._deleted.items() for key, d in ds.items() if d.time < cutoff]
        for name, key in old:
            self._drop_deletion(name, key)
        if old and not self._recompute({name for name, _ in old}):
            self._changed()
        return bool(old)

    def join(self, peer: PeerKey) -> None:
        """Know `peer` (a KeepAlive before any Init) without files."""
        self._peers.setdefault(peer, {})

    def forget(self, peer: PeerKey) -> bool:
        """Drop a peer that left; returns whether the directory changed. Its
        deletions stay: a peer that was away when they happened learns of them later."""
        files = self._peers.pop(peer, None)
        if not files:
            return False
        for name in files:
            self._holders[name].pop(peer, None)
        return self._recompute(list(files))

    def _recompute(self, names: Iterable[str]) -> bool:
        changed = False
        for name in names:
            entry = self._choose(name)
            if entry != self._entries.get(name) or (entry is not None and entry.vector != self._entries[name].vector):
                changed = True
                self._touched.add((name, _FILE))
                if entry is None:
                    self._entries.pop(name, None)
                else:
                    self._entries[name] = entry
        if changed:
            self._changed()
        return changed

    def _changed(self) -> None:
        self._encoded.clear()
        self._deltas.clear()
        self.generation += 1
        self._log.extend(self._touched)
        self._log_generations.extend([self.generation] * len(self._touched))
        self._touched.clear()
        if len(self._log) > self.max_log:  # forget the older half: peers that far behind get everything
            cut = len(self._log) // 2
            self._log_floor = self._log_generations[cut - 1]
            while cut < len(self._log) and self._log_generations[cut] == self._log_floor:
                cut += 1  # never half a generation
            del self._log[:cut], self._log_generations[:cut]

    @property
    def token(self) -> str:
        """This generation as peers see it (`"generation"` in extended replies)."""
        return f"{self.epoch}.{self.generation}"

    def _delta_start(self, since: str | None) -> int | None:
        """The generation a peer's token names, if a delta from it can be built."""
        if since is None:
            return None
        epoch, _, number = since.partition(".")
        if epoch != self.epoch or not number.isdigit():
            return None
        start = int(number)
        return start if self._log_floor <= start <= self.generation else None

    def _choose(self, name: str) -> DirectoryEntry | None:
        holders = self._holders.get(name)
        if not holders:
            self._holders.pop(name, None)
            return None
        deletions = tuple(self._deleted.get(name, {}).values())
        versions: dict[PeerKey, Version] = {p: i.version() for p, i in holders.items()}
        alive = {p: v for p, v in versions.items() if not any(d.kills(v) for d in deletions)}
        winner = pick(alive.values())
        if winner is None:  # every version it holds was deleted: nothing to offer
            return None
        # Of the peers holding the winning version, the lowest (ip, port): a function of
        # who holds what, not of the order reports came in, so trackers sharing one
        # swarm all name the same holder.
        holder = min(p for p in alive if versions[p] == winner)
        info = holders[holder]
        sources = tuple(sorted(p for p, i in holders.items() if p in alive and _same_version(i, info)))
        return DirectoryEntry(
            ip=holder[0],
            port=holder[1],
            mtime=info.mtime,
            size=info.size,
            sha256=info.sha256,
            sources=sources if len(sources) > 1 else (),
            mode=info.mode,
            vector=info.vector,
            chunks=info.chunks,
        )

    def entries(self) -> dict[str, DirectoryEntry]:
        """A copy of the current directory."""
        return dict(self._entries)

    def deletions(self) -> dict[str, tuple[Deletion, ...]]:
        """The deletions kept, by path."""
        return {name: tuple(ds.values()) for name, ds in self._deleted.items()}

    def encoded(self, loopback_alias: str | None = None, extended: bool = False, since: str | None = None) -> bytes:
        """The reply line, built once per change (and per alias and shape).

        `extended`: the reply for p2psync peers (every path, and the deletions);
        else the classic directory, with only the names a classic peer could
        have made itself (no `/`, none of `*.py *.so *.dll`).

        A holder on the tracker's own machine is seen at a loopback address,
        which means nothing to a peer on another machine: for that peer,
        `loopback_alias` (the tracker address it connected to, which reaches
        the same machine) stands in for it.

        `since` (extended only): the token of the generation the peer holds; the
        reply is then only what changed since, when the log reaches back that far.
        """
        start = self._delta_start(since) if extended else None
        if start is not None:
            return self._delta(loopback_alias, start, since or "")
        key = (loopback_alias, extended)
        line = self._encoded.get(key)
        if line is None:
            entries = self._entries if loopback_alias is None else self._aliased(loopback_alias)
            if extended:
                line = encode_listing(entries, self.deletions(), FEATURES, self.token)
            else:
                line = encode_directory({n: e for n, e in entries.items() if is_classic_name(n)})
            self._encoded[key] = line
        return line

    def _delta(self, alias: str | None, start: int, since: str) -> bytes:
        key = (alias, start)
        line = self._deltas.get(key)
        if line is None:
            first = bisect.bisect_right(self._log_generations, start)
            changed = set(self._log[first:])
            files = {path for path, what in changed if what == _FILE}
            deleted = {path for path, what in changed if what == _DELETION}
            entries = {p: self._entries[p] for p in sorted(files) if p in self._entries}
            if alias is not None:
                entries = {p: _alias(e, alias) for p, e in entries.items()}
            removed = sorted(p for p in files if p not in self._entries)
            tombstones = {p: tuple(self._deleted.get(p, {}).values()) for p in sorted(deleted)}
            line = encode_listing(entries, tombstones, FEATURES, self.token, since, removed)
            self._deltas[key] = line
        return line

    def _aliased(self, alias: str) -> dict[str, DirectoryEntry]:
        return {name: _alias(e, alias) for name, e in self._entries.items()}


def _alias(entry: DirectoryEntry, alias: str) -> DirectoryEntry:
    """`entry` as a peer on another machine must see it: loopback holders under `alias`."""

    def fix(ip: str) -> str:
        return alias if is_loopback(ip) else ip

    return replace(entry, ip=fix(entry.ip), sources=tuple((fix(ip), port) for ip, port in entry.sources))
