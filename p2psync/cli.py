"""The `p2psync` command: `tracker`, `sync`, `--version`."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence

from . import __version__
from .config import DeleteLimit, PeerSettings
from .errors import ConfigError
from .local.watching import WatchingUnavailable, require_watching
from .net import bind_first_free, lan_address
from .peer import FileSynchronizer
from .transfer import BACKEND

__all__ = ["DEFAULT_TRACKER_PORT", "classic_peer_main", "classic_tracker_main", "main"]

DEFAULT_TRACKER_PORT = 8900  # the embedded tracker's first choice; the next free one if taken
FIRST_PEER_PORT = 8000  # classic peers serve from the first free port from 8000

log = logging.getLogger("p2psync")


def _host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6ADDR]:PORT`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def _delete_limit(text: str) -> DeleteLimit:
    try:
        return DeleteLimit.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024)."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 2G, got {text!r}")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2) or " "))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psync",
        description="Peer-to-peer folder sync, wire-compatible with the classic assignment.",
    )
    parser.add_argument("--version", action="version", version=f"p2psync {__version__} (backend: {BACKEND})")
    noise = argparse.ArgumentParser(add_help=False)
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug)")
    noise.add_argument("-q", "--quiet", action="count", default=0, help="fewer log lines (-qq: errors only)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tracker = commands.add_parser("tracker", parents=[noise], help="run a tracker", description="Run a tracker.")
    tracker.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all IPv4)")
    tracker.add_argument("--port", type=_port, default=DEFAULT_TRACKER_PORT, help="port (default: %(default)s)")

    sync = commands.add_parser(
        "sync",
        parents=[noise],
        help="sync a folder",
        description="Sync DIR with every peer of a tracker. Without --tracker, run one here "
        "and print the command other machines use to join.",
    )
    sync.add_argument("dir", metavar="DIR", help="the folder to sync (created if missing)")
    sync.add_argument("--tracker", type=_host_port, metavar="HOST:PORT", help="join this tracker")
    sync.add_argument(
        "--port", type=_port, help=f"port to serve files on (default: the first free one from {FIRST_PEER_PORT})"
    )
    sync.add_argument(
        "--tracker-port",
        type=_port,
        default=DEFAULT_TRACKER_PORT,
        help="port of the embedded tracker, when there is no --tracker (default: %(default)s, or the next free one)",
    )
    sync.add_argument("--interval", type=float, default=5.0, help="seconds between sync rounds (default: 5)")
    sync.add_argument(
        "--watch",
        action="store_true",
        help="watch the folder (needs: pip install 'p2psync[watch]'): report a change at once, "
        "and skip the rescan in rounds where nothing changed",
    )
    sync.add_argument(
        "--max-file-size",
        type=_size,
        metavar="SIZE",
        help="refuse to download files larger than this, e.g. 2G (default: the free disk space)",
    )
    sync.add_argument(
        "--max-delete",
        type=_delete_limit,
        default=DeleteLimit(),
        metavar="N|N%",
        help="the most files one round may move to the trash because other peers deleted them, as a count "
        "(--max-delete 200) or a share of the folder (--max-delete 20%%); 100%% turns the brake off "
        "(default: half the folder's files, once more than 10)",
    )
    return parser


def _configure_logging(verbose: int, quiet: int) -> None:
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(verbose - quiet, logging.DEBUG)
    if verbose - quiet < -2:
        level = logging.CRITICAL
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def _wait_for_interrupt(*threads: threading.Thread) -> None:
    """Block until Ctrl-C, SIGTERM, or one of the threads ends."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in threads):
                return
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_tracker(args: argparse.Namespace) -> int:
    from .tracker import Tracker

    tracker = Tracker(args.port, args.host)
    tracker.start()
    print(f"p2psync tracker on {args.host}:{tracker.port}. Peers join with:", flush=True)
    print(f"  p2psync sync DIR --tracker {lan_address() or 'THIS-MACHINE'}:{tracker.port}", flush=True)
    _wait_for_interrupt(tracker)
    tracker.exit()
    print("tracker stopped", flush=True)
    return 0


def _run_sync(args: argparse.Namespace) -> int:
    if args.watch:
        require_watching()  # before anything starts
    folder = os.path.abspath(os.path.expanduser(args.dir))
    os.makedirs(folder, exist_ok=True)
    settings = PeerSettings(
        interval=args.interval,
        first_delay=0.0,  # the first round starts as soon as the peer is connected
        max_file_size=args.max_file_size,
        watch=args.watch,
        classic=False,
        max_delete=args.max_delete,
    )
    tracker = None
    if args.tracker is None:
        from .tracker import Tracker  # joining a tracker elsewhere needs none: a quicker start

        tracker = bind_first_free(Tracker, args.tracker_port)
        tracker.start()
        host, port = "127.0.0.1", tracker.port
    else:
        host, port = args.tracker

    def build(peer_port: int) -> FileSynchronizer:
        return FileSynchronizer(host, port, peer_port, folder=folder, settings=settings)

    peer = build(args.port) if args.port is not None else bind_first_free(build, FIRST_PEER_PORT)
    peer.start()
    print(f"p2psync {__version__} ({BACKEND} core): syncing {folder}, serving files on port {peer.port}", flush=True)
    if tracker is not None:
        print(f"Embedded tracker on port {tracker.port}. On another machine, join with:", flush=True)
        print(f"  p2psync sync DIR --tracker {lan_address() or 'THIS-MACHINE'}:{tracker.port}", flush=True)
        print(f"On this machine: p2psync sync OTHER_DIR --tracker 127.0.0.1:{tracker.port}", flush=True)
    else:
        print(f"Tracker: {host}:{port}", flush=True)
    print("Ctrl-C stops.", flush=True)
    _wait_for_interrupt(peer)
    peer.exit()
    if tracker is not None:
        tracker.exit()
    print("stopped", flush=True)
    return 0


def classic_tracker_main(argv: Sequence[str] | None = None) -> int:
    """`python -m p2psync.tracker IP PORT`, as the classic `tracker.py IP PORT`."""
    parser = argparse.ArgumentParser(prog="python -m p2psync.tracker", description="Run a p2psync tracker.")
    parser.add_argument("ip", help="address to listen on, e.g. 0.0.0.0")
    parser.add_argument("port", type=_port, help="port to listen on")
    args = parser.parse_args(argv)
    _configure_logging(0, 0)
    from .tracker import Tracker

    tracker = Tracker(args.port, args.ip)
    tracker.start()
    print(f"tracker listening on {args.ip}:{tracker.port}; Ctrl-C stops it", flush=True)
    _wait_for_interrupt(tracker)
    tracker.exit()
    return 0


def classic_peer_main(argv: Sequence[str] | None = None) -> int:
    """`python -m p2psync.peer TRACKER_IP TRACKER_PORT`, as the classic
    `fileSynchronizer.py`: serves the current folder on the first free port from 8000."""
    parser = argparse.ArgumentParser(
        prog="python -m p2psync.peer",
        description="Sync the current folder through a tracker (serving on the first free port from 8000).",
    )
    parser.add_argument("tracker_ip")
    parser.add_argument("tracker_port", type=_port)
    args = parser.parse_args(argv)
    _configure_logging(0, 0)
    peer = bind_first_free(lambda port: FileSynchronizer(args.tracker_ip, args.tracker_port, port), FIRST_PEER_PORT)
    print(f"serving {os.getcwd()} on port {peer.port}; Ctrl-C stops", flush=True)
    peer.start()
    _wait_for_interrupt(peer)
    peer.exit()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        if args.command == "tracker":
            return _run_tracker(args)
        return _run_sync(args)
    except OSError as exc:  # a port in use, a folder we cannot enter: one line, no traceback
        log.error("%s", exc)
        return 1
    except (WatchingUnavailable, ConfigError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
