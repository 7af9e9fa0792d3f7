"""The sync decision: what one peer does about one path. One pure function.

Strategy: a peer knows three versions of a path: what its folder holds now
(`local`), what it last agreed on with the network (`base`, from its index),
and what the tracker lists (`remote`, the live version the network converges
on, and `deleted`, the deletions reported for the path). Their version
vectors tell who changed what: only the network (take it), only this peer
(keep it: the report carries it), or both apart (a conflict: the newer
version wins and the loser's peer keeps its own version as a conflict copy,
which then syncs like any file). `base` tells "deleted here" from "never
had it". A deletion removes only the
version it deleted; any other version is an edit and wins. Nothing is ever
removed but into the trash, so no decision here loses data.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from .versions import Deletion, Version

__all__ = ["Action", "clashes", "decide", "decide_paths", "plan"]


class Action(enum.Enum):
    NOTHING = "nothing"  # in sync, or this peer's version is the one that goes out
    FETCH = "fetch"  # take the remote version (new here, or changed only there)
    STAMP = "stamp"  # the same bytes with a newer mtime: set the mtime, move no bytes
    TRASH = "trash"  # the network deleted this very version: move it to the trash
    CONFLICT = "conflict"  # both changed and the remote wins: keep ours as a conflict copy, then fetch
    ASIDE = "aside"  # a file here where the network has a folder: keep it as a conflict copy
    KEEP_FOLDER = "keep folder"  # a folder here where the network has a file: the folder wins, fetch nothing


def plan(
    local: Version | None, base: Version | None, remote: Version | None, deleted: Iterable[Deletion] = ()
) -> Action:
    """What to do about one path (see the module's docstring)."""
    deletions = tuple(deleted)
    live = remote if remote is not None and not any(d.kills(remote) for d in deletions) else None
    if local is None:
        if live is None or (base is not None and base.replaces(live)):
            # Gone everywhere, or an older version than one deleted here. (The version
            # deleted here is killed by this peer's own tombstone, which the tracker lists.)
            return Action.NOTHING
        return Action.FETCH
    if live is None:
        if any(d.kills(local) for d in deletions):
            return Action.TRASH
        return Action.NOTHING  # only here, or an edit newer than the deletion: it goes out
    if local.same_content(live):
        # The same bytes: only the stamp moves, when the remote's is newer or was made
        # from ours (a chmod there changes no mtime, only the mode and the vector).
        made_from_ours = live.mode is not None and live.mode != local.mode and live.replaces(local)
        return Action.STAMP if live.mtime > local.mtime or made_from_ours else Action.NOTHING
    if live.replaces(local):
        return Action.FETCH  # made from ours, or after it
    if local.replaces(live):
        return Action.NOTHING  # ours was made from it: ours goes out with the report
    if not live.wins_over(local):
        return Action.NOTHING  # made apart, ours newer: the remote's peer keeps its own aside
    if live.vector and local.vector:
        return Action.CONFLICT  # made apart, the remote newer: ours is kept beside it
    # A classic holder's file (no lineage): the classic rule, the newest wins.
    # Conflicts are kept only between p2psync peers (README: mixed networks).
    return Action.FETCH


def decide(
    local: Mapping[str, Version],
    remote: Mapping[str, Version],
    deleted: Mapping[str, Sequence[Deletion]],
    base: Callable[[str], Version | None],
    extended: bool = True,
) -> list[tuple[str, Action]]:
    """`plan` for every path either side has, in path order, with file/folder
    clashes settled first (see `clashes`). `base(path)`: the version this peer
    last agreed on for `path` (None: never). Not `extended` (a classic
    tracker's directory): it lists no deletions, so none are taken from it, and
    a path absent here is fetched whatever this peer agreed on before."""
    paths = sorted(local.keys() | remote.keys())
    return decide_paths(paths, local, remote, deleted, base, extended, clashes(local.keys(), remote.keys()))


def decide_paths(
    paths: Iterable[str],
    local: Mapping[str, Version],
    remote: Mapping[str, Version],
    deleted: Mapping[str, Sequence[Deletion]],
    base: Callable[[str], Version | None],
    extended: bool,
    clashing: tuple[Collection[str], Collection[str]],
) -> list[tuple[str, Action]]:
    """`decide` for `paths` only, in the order given: what a round decides when it
    knows the other paths are as they were (`local` and `remote` need hold only
    these). `clashing`: `clashes` of every path of both sides, so a file here
    still yields to a folder there that a path outside `paths` makes."""
    if not extended:
        deleted = {}
    move_aside, skip = clashing
    steps = []
    for path in paths:
        if path in skip:
            steps.append((path, Action.KEEP_FOLDER))
        elif path in move_aside and path in local:
            steps.append((path, Action.ASIDE))
        else:
            mine = local.get(path)
            agreed = base(path) if extended or mine is not None else None
            steps.append((path, plan(mine, agreed, remote.get(path), deleted.get(path, ()))))
    return steps


def clashes(local_files: Collection[str], remote_files: Collection[str]) -> tuple[set[str], set[str]]:
    """File/folder clashes between this peer's files and the network's.

    Returns `(move_aside, skip)`: local files that stand where the network has a
    folder (`x` here, `x/y` there; they are kept as conflict copies so the
    folder can be made) and remote files that stand where this peer has a
    folder (fetched nowhere here; their holder moves them aside). The folder
    always wins, so both sides decide the same way and no clash loops.
    """
    move_aside = {p for p in _parents(remote_files) if p in local_files}
    skip = {p for p in _parents(local_files) if p in remote_files}
    return move_aside, skip - move_aside


def _parents(paths: Iterable[str]) -> set[str]:
    folders: set[str] = set()
    for path in paths:
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in folders:
                break
            folders.add(path)
    return folders
