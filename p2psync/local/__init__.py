"""The folder on disk: walk and scan, safe open, installs, trash, the SQLite
index, watching. Nothing here parses a message."""

from .fileops import ANY, DEFAULT_MODE, sync_mode
from .folder import STATE_DIR, TRASH_DIR, Folder, Install, LocalFile, OpenFolders, get_file_info
from .index import Index, IndexRow
from .partial import PartialFile

__all__ = [
    "ANY",
    "DEFAULT_MODE",
    "STATE_DIR",
    "TRASH_DIR",
    "Folder",
    "Index",
    "IndexRow",
    "Install",
    "LocalFile",
    "OpenFolders",
    "PartialFile",
    "get_file_info",
    "sync_mode",
]
