"""Which version of a path wins, and what to do about it: pure, no sockets, disks or clocks."""

from __future__ import annotations

from .conflicts import conflict_name, is_conflict_copy
from .plan import Action, clashes, decide, decide_paths, plan
from .versions import MAX_VECTOR, Deletion, Vector, Version, bump, covers, merge, pick

__all__ = [
    "MAX_VECTOR",
    "Action",
    "Deletion",
    "Vector",
    "Version",
    "bump",
    "clashes",
    "decide",
    "decide_paths",
    "conflict_name",
    "covers",
    "is_conflict_copy",
    "merge",
    "pick",
    "plan",
]
