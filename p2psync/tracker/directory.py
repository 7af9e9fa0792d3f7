"""The tracker's state: which live peer holds the version each path converges on,
and which versions were deleted.

Strategy: per path, every live holder's version is kept, so the entry can be
recomputed from that path's holders alone when a peer reports or leaves
(incremental: a report touching 10 paths costs 10 recomputes, not a rebuild
of the directory). The version listed is `sync.versions.pick` of those no
deletion kills: a function of the versions alone (the newest, a tie to the
larger hash, and a version made from another always over it), so every
tracker lists the same one whatever order reports came in; among the holders
of that version, the one already chosen stays. Deletions (tombstones) are
kept after the peer that reported them leaves, bounded in age and number.
The encoded replies (classic: only what a classic peer could have made
itself, no deletions; extended, for p2psync peers) are cached and rebuilt
only after a change, since every message of every peer is answered with one.
Sans-IO: no sockets, clocks or threads.
"""

from __future__ import annotations

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


def _same_version(a: FileInfo, b: FileInfo) -> bool:
    """The same bytes, as far as the reports can tell: same mtime and size, and the
    same hash (so a hashed version's sources are all p2psync peers, which can
    verify and resume; a classic peer's file, with no hash, is never among them)."""
    return a.mtime == b.mtime and a.sha256 == b.sha256 and a.size == b.size


class Directory:
    """The version every path converges on, its live holders, and recent deletions."""

    def __init__(self, max_tombstones: int = MAX_TOMBSTONES, tombstone_age_s: float = TOMBSTONE_AGE_S) -> None:
        self._peers: dict[PeerKey, dict[str, FileInfo]] = {}
        self._holders: dict[str, dict[PeerKey, FileInfo]] = {}
        self._entries: dict[str, DirectoryEntry] = {}
        self._deleted: dict[str, dict[str, Deletion]] = {}  # path -> (sha256 or "") -> newest deletion of it
        self._tombstones = 0
        self.max_tombstones = max_tombstones
        self.tombstone_age_s = tombstone_age_s
        self._encoded: dict[tuple[str | None, bool], bytes] = {}  # by (loopback alias, extended), see encoded()
        self.generation = 0  # goes up whenever an entry or a deletion changes

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

    def _add_deletion(self, name: str, deletion: Deletion) -> bool:
        kept = self._deleted.setdefault(name, {})
        key = deletion.sha256 or ""
        old = kept.get(key)
        if old is not None and old.time >= deletion.time:
            return False
        if old is None:
            self._tombstones += 1
        kept[key] = deletion
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
                if entry is None:
                    self._entries.pop(name, None)
                else:
                    self._entries[name] = entry
        if changed:
            self._changed()
        return changed

    def _changed(self) -> None:
        self._encoded.clear()
        self.generation += 1

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
        )

    def entries(self) -> dict[str, DirectoryEntry]:
        """A copy of the current directory."""
        return dict(self._entries)

    def deletions(self) -> dict[str, tuple[Deletion, ...]]:
        """The deletions kept, by path."""
        return {name: tuple(ds.values()) for name, ds in self._deleted.items()}

    def encoded(self, loopback_alias: str | None = None, extended: bool = False) -> bytes:
        """The reply line, built once per change (and per alias and shape).

        `extended`: the reply for p2psync peers (every path, and the deletions);
        else the classic directory, with only the names a classic peer could
        have made itself (no `/`, none of `*.py *.so *.dll`).

        A holder on the tracker's own machine is seen at a loopback address,
        which means nothing to a peer on another machine: for that peer,
        `loopback_alias` (the tracker address it connected to, which reaches
        the same machine) stands in for it.
        """
        key = (loopback_alias, extended)
        line = self._encoded.get(key)
        if line is None:
            entries = self._entries if loopback_alias is None else self._aliased(loopback_alias)
            if extended:
                line = encode_listing(entries, self.deletions(), FEATURES)
            else:
                line = encode_directory({n: e for n, e in entries.items() if is_classic_name(n)})
            self._encoded[key] = line
        return line

    def _aliased(self, alias: str) -> dict[str, DirectoryEntry]:
        def fix(ip: str) -> str:
            return alias if is_loopback(ip) else ip

        return {
            name: replace(e, ip=fix(e.ip), sources=tuple((fix(ip), port) for ip, port in e.sources))
            for name, e in self._entries.items()
        }
