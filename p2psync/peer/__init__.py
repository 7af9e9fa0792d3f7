"""A peer: the engine (scan -> report -> plan -> act), its file server and
fetcher, and the classic `FileSynchronizer` API over them.

`python -m p2psync.peer TRACKER_IP TRACKER_PORT` runs a classic peer in the
current directory.
"""

from __future__ import annotations

from p2psync.local import get_file_info
from p2psync.net import bind_first_free, check_port_available, get_next_available_port
from p2psync.transfer import Buffer

from .synchronizer import FileSynchronizer

get_next_avaliable_port = get_next_available_port  # the classic name, misspelt as code written against it calls it

__all__ = [
    "Buffer",
    "FileSynchronizer",
    "bind_first_free",
    "check_port_available",
    "get_file_info",
    "get_next_available_port",
    "get_next_avaliable_port",
    "main",
]


def main(argv: list[str] | None = None) -> int:
    """The classic command line: `python -m p2psync.peer TRACKER_IP TRACKER_PORT`."""
    from p2psync.cli import classic_peer_main  # the CLI module owns process set-up and Ctrl-C

    return classic_peer_main(argv)
