"""A p2psync file server for benchmarks: serves DIR on 127.0.0.1, prints its port.

It is the real server path (`FileServer`: request line, safe open, header,
sendfile), without a tracker, in its own process as a real holder is.
"""

from __future__ import annotations

import socket
import sys
import threading

from p2psync.deadlines import Watchdog
from p2psync.local import Folder
from p2psync.peer.server import FileServer


def main() -> None:
    folder = Folder(sys.argv[1])
    folder.scan()  # hashes cached, as in a running peer
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    FileServer(listener, folder, Watchdog()).start("bench-holder")
    print(listener.getsockname()[1], flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
