"""The tracker: a selectors loop over peer connections and the directory it
answers with. `python -m p2psync.tracker IP PORT` runs a classic tracker."""

from __future__ import annotations

from .directory import Directory
from .loop import IDENTIFY_TIMEOUT_S, MAX_BUFFERED_BYTES, MAX_CONNECTIONS, MAX_MESSAGE_BYTES, PEER_TIMEOUT_S, Tracker

__all__ = [
    "IDENTIFY_TIMEOUT_S",
    "MAX_BUFFERED_BYTES",
    "MAX_CONNECTIONS",
    "MAX_MESSAGE_BYTES",
    "PEER_TIMEOUT_S",
    "Directory",
    "Tracker",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """The classic command line: `python -m p2psync.tracker IP PORT`."""
    from p2psync.cli import classic_tracker_main  # the CLI module owns process set-up and Ctrl-C

    return classic_tracker_main(argv)
