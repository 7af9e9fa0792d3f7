"""The tracker's state: which live peer holds the newest version of each file.

Strategy: per name, every live holder's version is kept, so the entry can be
recomputed from that name's holders alone when a peer reports or leaves
(incremental: a report touching 10 names costs 10 recomputes, not a rebuild of
the directory). The newest mtime wins; on a tie the holder already chosen
stays (the classic rule). The encoded reply is cached and rebuilt only after
a change, since every message of every peer is answered with it. Sans-IO:
no sockets, clocks or threads.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .protocol import DirectoryEntry, FileInfo, encode_directory

__all__ = ["Directory", "PeerKey", "is_loopback"]

PeerKey = tuple[str, int]  # (ip as the tracker saw it, file-serving port)


@dataclass(frozen=True)
class _Chosen:
    holder: PeerKey
    info: FileInfo


def _same_version(a: FileInfo, b: FileInfo) -> bool:
    """The same bytes, as far as the reports can tell: same mtime and size, and the
    same hash (so a hashed version's sources are all p2psync peers, which can
    verify and resume; a classic peer's file, with no hash, is never among them)."""
    return a.mtime == b.mtime and a.sha256 == b.sha256 and a.size == b.size


class Directory:
    """The newest version of every file any live peer holds."""

    def __init__(self) -> None:
        self._peers: dict[PeerKey, dict[str, FileInfo]] = {}
        self._holders: dict[str, dict[PeerKey, FileInfo]] = {}
        self._chosen: dict[str, _Chosen] = {}
        self._entries: dict[str, DirectoryEntry] = {}
        self._encoded: dict[str | None, bytes] = {}  # by loopback alias, see encoded()
        self.generation = 0  # goes up whenever an entry changes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def peers(self) -> list[PeerKey]:
        """Every peer the directory knows, in the order they first reported."""
        return list(self._peers)

    def report(self, peer: PeerKey, files: Iterable[FileInfo]) -> bool:
        """Replace `peer`'s file list with `files`; returns whether the directory changed."""
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
        return self._recompute(touched)

    def join(self, peer: PeerKey) -> None:
        """Know `peer` (a KeepAlive before any Init) without files."""
        self._peers.setdefault(peer, {})

    def forget(self, peer: PeerKey) -> bool:
        """Drop a peer that left; returns whether the directory changed."""
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
            if entry != self._entries.get(name):
                changed = True
                if entry is None:
                    del self._entries[name]
                else:
                    self._entries[name] = entry
        if changed:
            self._encoded.clear()
            self.generation += 1
        return changed

    def _choose(self, name: str) -> DirectoryEntry | None:
        holders = self._holders.get(name)
        if not holders:
            self._holders.pop(name, None)
            self._chosen.pop(name, None)
            return None
        newest = max(info.mtime for info in holders.values())
        current = self._chosen.get(name)
        if current is not None and holders.get(current.holder) == current.info and current.info.mtime == newest:
            chosen = current  # a tie keeps the holder it has
        else:
            # dicts keep insertion order: the earliest reporter of the newest version
            holder, info = next((p, i) for p, i in holders.items() if i.mtime == newest)
            chosen = _Chosen(holder, info)
        self._chosen[name] = chosen
        info = chosen.info
        sources = tuple(p for p, i in holders.items() if _same_version(i, info))
        return DirectoryEntry(
            ip=chosen.holder[0],
            port=chosen.holder[1],
            mtime=info.mtime,
            size=info.size,
            sha256=info.sha256,
            sources=sources if len(sources) > 1 else (),
        )

    def entries(self) -> dict[str, DirectoryEntry]:
        """A copy of the current directory."""
        return dict(self._entries)

    def encoded(self, loopback_alias: str | None = None) -> bytes:
        """The directory reply line, built once per change (and per alias).

        A holder on the tracker's own machine is seen at a loopback address,
        which means nothing to a peer on another machine: for that peer,
        `loopback_alias` (the tracker address it connected to, which reaches
        the same machine) stands in for it.
        """
        line = self._encoded.get(loopback_alias)
        if line is None:
            entries = self._entries if loopback_alias is None else self._aliased(loopback_alias)
            line = self._encoded[loopback_alias] = encode_directory(entries)
        return line

    def _aliased(self, alias: str) -> dict[str, DirectoryEntry]:
        def fix(ip: str) -> str:
            return alias if is_loopback(ip) else ip

        return {
            name: replace(e, ip=fix(e.ip), sources=tuple((fix(ip), port) for ip, port in e.sources))
            for name, e in self._entries.items()
        }


def is_loopback(ip: str) -> bool:
    """Whether `ip` is a loopback address (127.0.0.0/8, ::1, or v4-mapped loopback)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))
