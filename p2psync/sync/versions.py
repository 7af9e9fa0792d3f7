"""Versions of a file and deletions of them, as the peers and the tracker see them.

Strategy: which of two versions was made from the other is told by a version
vector, as Syncthing does: per peer that changed the file, a counter that
only grows (`bump`). A version whose vector covers another's was made after
seeing it, so it simply replaces it; two versions neither of which covers
the other were made apart: a conflict, which the newer mtime wins (a tie:
the larger hash) and whose loser is kept as a conflict copy. A classic
peer's file has no vector (and no hash): for it, the newest mtime wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from p2psync.records import quick_frozen

__all__ = ["MAX_VECTOR", "Deletion", "Vector", "Version", "bump", "covers", "merge", "newest", "order_key", "pick"]

Vector = tuple[tuple[str, int], ...]  # sorted (peer id, counter) pairs
MAX_VECTOR = 64  # peers in one vector; receivers refuse longer ones, so none is ever made


def bump(vector: Vector, peer_id: str, now: int) -> Vector:
    """`vector` after a change made by `peer_id`: its counter becomes larger than
    before and at least `now` (so a file made again after a deletion is never
    taken for an older version of itself)."""
    counters = dict(vector)
    counters[peer_id] = max(counters.get(peer_id, 0) + 1, now)
    return _bounded(counters, keep=peer_id)


def merge(a: Vector, b: Vector) -> Vector:
    """A vector that covers both: what the winner of a conflict carries once the
    loser is kept aside, so no one takes the loser for an edit of the winner."""
    counters = dict(a)
    for peer, n in b:
        counters[peer] = max(counters.get(peer, 0), n)
    return _bounded(counters)


def _bounded(counters: dict[str, int], keep: str = "") -> Vector:
    """The vector of `counters`, at most `MAX_VECTOR` long: past that, the peers
    with the oldest counters are dropped. A version missing one of them no
    longer covers a version that has it, so the worst that can come of it is a
    conflict copy kept where none was needed, never a version lost; a longer
    vector would be refused by every receiver and the file would stop syncing."""
    if len(counters) > MAX_VECTOR:
        by_age = sorted(counters.items(), key=lambda pair: (pair[0] == keep, pair[1]))  # `keep` last: never dropped
        counters = dict(by_age[len(counters) - MAX_VECTOR :])
    return tuple(sorted(counters.items()))


def covers(a: Vector, b: Vector) -> bool:
    """Whether the version with vector `a` was made after seeing the one with `b`."""
    counters: Mapping[str, int] = dict(a)
    return all(counters.get(peer, 0) >= n for peer, n in b)


@quick_frozen
@dataclass(frozen=True)
class Version:
    """One version of one file: its mtime (whole seconds, the classic unit) and,
    from p2psync peers, its size, SHA-256, permission bits and version vector.
    The vector tells lineage, not content: it is not part of equality."""

    mtime: int
    size: int | None = None
    sha256: str | None = None
    mode: int | None = None
    vector: Vector = field(default=(), compare=False)

    def same_content(self, other: Version) -> bool:
        """The same bytes, as far as both can tell: by hash when both have one,
        else (a classic peer's file) by mtime and size."""
        if self.size is not None and other.size is not None and self.size != other.size:
            return False
        if self.sha256 is not None and other.sha256 is not None:
            return self.sha256 == other.sha256
        return self.mtime == other.mtime

    def wins_over(self, other: Version) -> bool:
        """The newer mtime wins; a tie goes to the larger hash (every peer and
        tracker picks the same one, whoever reported first)."""
        return order_key(self) > order_key(other)

    def replaces(self, other: Version) -> bool:
        """Whether this version was made from `other` (or after it): known only
        when both carry a vector, and the vectors differ."""
        return bool(self.vector and other.vector) and self.vector != other.vector and covers(self.vector, other.vector)


def order_key(version: Version) -> tuple[int, str]:
    """What `wins_over` compares: `max(versions, key=order_key)` is the winner."""
    return version.mtime, version.sha256 or ""


def newest(versions: Iterable[Version]) -> Version | None:
    """The version with the newest mtime (a tie: the larger hash), or None for none."""
    return max(versions, key=order_key, default=None)


def pick(versions: Iterable[Version]) -> Version | None:
    """The version the network converges on: of those no other version replaces
    (`Version.replaces`), the newest. A function of the versions alone, so every
    tracker and peer picks the same one whatever order the reports came in."""
    # Distinct versions only (a thousand holders of one file hold a handful of
    # versions), and only versions with a vector can replace or be replaced:
    # without this, a path every peer holds cost the tracker O(peers^2) per report.
    candidates = list({(v, v.vector): v for v in versions}.values())
    lineage = [v for v in candidates if v.vector]
    if len(lineage) < 2:
        return newest(candidates)
    standing = [v for v in candidates if not v.vector or not any(w.replaces(v) for w in lineage)]
    return newest(standing or candidates)


@dataclass(frozen=True)
class Deletion:
    """A peer deleted the version `sha256` of a file at `time` (its clock, whole
    seconds); `vector` is that version's, bumped for the deleting peer (`bump`),
    so what is made after seeing the deletion covers it."""

    time: int
    sha256: str | None = None
    vector: Vector = field(default=(), compare=False)

    def kills(self, version: Version) -> bool:
        """Whether `version` is the one deleted, or one it was made from. With
        vectors: a version made after seeing the deletion (its vector covers the
        deletion's: a file brought back) lives; one the deletion's vector covers
        is dead, and so are the very bytes deleted, no newer than the deletion,
        however they got elsewhere. Without vectors (a classic peer's file): no
        newer than the deletion, and the same bytes when both hashes are known.
        Any other version is an edit, and an edit wins over a deletion."""
        same_bytes = version.mtime <= self.time and self.sha256 is not None and self.sha256 == version.sha256
        if self.vector and version.vector:
            if version.vector != self.vector and covers(version.vector, self.vector):
                return False
            return covers(self.vector, version.vector) or same_bytes
        return same_bytes or (version.mtime <= self.time and (self.sha256 is None or version.sha256 is None))
