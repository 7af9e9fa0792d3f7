"""The one place that chooses the backend: the Cython extension or its pure-Python twin.

`p2psync._speedups` is used unless `P2PSYNC_NO_EXTENSIONS=1` is set or it is
not built; `p2psync._twin` has the same names and behaviour. Other modules
use `_core.X` (or the names `transfer` re-exports), so tests patch one place.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = [
    "BACKEND",
    "MAX_LINE_BYTES",
    "RECV_BUFFER_BYTES",
    "Buffer",
    "Chunker",
    "LineSplitter",
    "chunk_lengths",
    "link_new_files",
    "read_small_file",
    "recv_to_file",
    "send_from_file",
]

_NO_EXT = os.environ.get("P2PSYNC_NO_EXTENSIONS") == "1"  # only "1"; "0" keeps it on

if TYPE_CHECKING or _NO_EXT:  # mypy reads the typed twin
    from . import _twin as _chosen

    BACKEND = "python"
else:
    try:
        from . import _speedups as _chosen

        BACKEND = "cython"
    except ImportError:  # installed without a compiler: the twin serves
        from . import _twin as _chosen

        BACKEND = "python"

MAX_LINE_BYTES = _chosen.MAX_LINE_BYTES
RECV_BUFFER_BYTES = _chosen.RECV_BUFFER_BYTES
Buffer = _chosen.Buffer
Chunker = _chosen.Chunker
chunk_lengths = _chosen.chunk_lengths
LineSplitter = _chosen.LineSplitter
link_new_files = _chosen.link_new_files
read_small_file = _chosen.read_small_file
recv_to_file = _chosen.recv_to_file
send_from_file = _chosen.send_from_file
