"""The `p2psync` command: `sync`, `status`, `tracker`, `keygen`, `--version`.

argparse -> settings -> engine or tracker; nothing else lives here. Errors a
user can cause (a bad flag or config value, a folder that cannot be written,
a tracker that does not resolve, a port in use, a second sync of one folder)
are one line and exit code 2; a bug is one line and exit code 3, with the
traceback under `-v`.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .config import PeerSettings
from .errors import ConfigError, FolderGone
from .events import Events, LogEvents, RoundOutcome
from .ignore import STATE_DIR, IgnoreRules
from .local.lock import check_unlocked
from .local.watching import WatchingUnavailable, require_watching
from .net import bind_first_free, lan_address
from .options import (
    FIRST_PEER_PORT,
    SYNC_OPTIONS,
    TRACKER_OPTIONS,
    Resolved,
    add_options,
    argument_type,
    parse_host_port,
    parse_port,
    resolve,
)
from .peer import FileSynchronizer
from .transfer import BACKEND

__all__ = ["EXIT_BUG", "EXIT_USAGE", "classic_peer_main", "classic_tracker_main", "main"]

EXIT_USAGE = 2  # the user can fix it: a bad flag, value, folder, address or port
EXIT_BUG = 3  # p2psync's fault: one line, the traceback with -v
CONFIG_FILE = "config.toml"  # in DIR/.p2psync/

log = logging.getLogger("p2psync")

EPILOG_SYNC = """examples:
  p2psync sync ~/Shared                             run a tracker here and sync ~/Shared
  p2psync sync ~/Shared --tracker 192.168.1.20:8900 join the tracker of another machine
  p2psync sync ~/Shared --tracker host:8900 --once  one round, then exit 0 (in sync) or 1
  p2psync sync ~/Shared --print-config              the settings in effect and where each came from

Every option can also be set in DIR/.p2psync/config.toml (or --config FILE),
as `key = value` with the option's name: max-rate = "10M", watch = true."""

EPILOG_STATUS = """examples:
  p2psync status ~/Shared                               what the last round left, and local changes
  p2psync status ~/Shared --tracker 192.168.1.20:8900   checked against the network now
  p2psync status ~/Shared --json                        the same as a JSON document (schema: README)

exit status: 0 in sync, 1 not in sync, 2 error."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psync",
        description="Peer-to-peer folder sync, wire-compatible with the classic assignment.",
    )
    parser.add_argument("--version", action="version", version=f"p2psync {__version__} (backend: {BACKEND})")
    noise = argparse.ArgumentParser(add_help=False)
    noise.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv: debug; e.g. -v)")
    noise.add_argument(
        "-q", "--quiet", action="count", default=0, help="no progress display, fewer log lines (-qq: errors only)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = argparse.RawDescriptionHelpFormatter

    tracker = commands.add_parser(
        "tracker",
        parents=[noise],
        help="run a tracker",
        description="Run a tracker.",
        epilog="example:\n  p2psync tracker --port 8900",
        formatter_class=formatter,
    )
    add_options(tracker, TRACKER_OPTIONS)
    _config_flags(tracker, "(default: none)")

    sync = commands.add_parser(
        "sync",
        parents=[noise],
        help="sync a folder",
        description="Sync DIR with every peer of a tracker. Without --tracker, run one here "
        "and print the command other machines use to join.",
        epilog=EPILOG_SYNC,
        formatter_class=formatter,
    )
    sync.add_argument("dir", metavar="DIR", help="the folder to sync (created if missing)")
    add_options(sync, SYNC_OPTIONS)
    sync.add_argument(
        "--once",
        action="store_true",
        help="one round (report, fetch, delete, keep conflicts), then exit: 0 in sync, 1 not, 2 error; "
        "needs --tracker (e.g. --once --tracker host:8900)",
    )
    _config_flags(sync, f"(default: DIR/{STATE_DIR}/{CONFIG_FILE} if it exists)")

    status = commands.add_parser(
        "status",
        parents=[noise],
        help="is a folder in sync?",
        description="Show what in DIR is in sync, behind (and from whom), only local, conflict copies, "
        "deletions the brake holds back, and the trash.",
        epilog=EPILOG_STATUS,
        formatter_class=formatter,
    )
    status.add_argument("dir", metavar="DIR", help="a folder p2psync syncs")
    status.add_argument(
        "--tracker",
        type=argument_type(parse_host_port),
        metavar="HOST:PORT",
        help="check against this tracker's directory now, and show it (e.g. --tracker 192.168.1.20:8900)",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON for scripts (e.g. --json)")
    status.add_argument(
        "--secret",
        metavar="FILE",
        help="the group key of a members-only tracker (default: the folder's config; e.g. --secret group.key)",
    )
    status.add_argument(
        "--tls",
        action="store_true",
        help="the members-only tracker speaks TLS (default: the folder's config; e.g. --tls)",
    )

    keygen = commands.add_parser(
        "keygen",
        parents=[noise],
        help="write a new group key",
        description="Write a new random 32-byte group key to FILE (mode 0600; never over an existing file). "
        "Give it to tracker and sync with --secret FILE: then only holders of the key can connect.",
        epilog="example:\n  p2psync keygen ~/.config/p2psync/group.key",
        formatter_class=formatter,
    )
    keygen.add_argument("file", metavar="FILE", help="where to write the key")
    return parser


def _config_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"read settings from this TOML file {default}; e.g. --config p2psync.toml"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings in effect, and where each came from, then exit (e.g. --print-config)",
    )


# ------------------------------------------------------------------ process set-up


def _log_level(verbose: int, quiet: int) -> int:
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(verbose - quiet, logging.DEBUG)
    return logging.CRITICAL if verbose - quiet < -2 else level


def _configure_logging(verbose: int, quiet: int, handler: logging.Handler | None = None) -> None:
    root = logging.getLogger()
    if handler is None:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    for old in [h for h in root.handlers if getattr(h, "_p2psync", False)]:
        root.removeHandler(old)
    handler._p2psync = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_log_level(verbose, quiet))


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


def _bind(what: str, port: int | None, build: Callable[[int], Any], first: int) -> Any:
    """Build a listener on `port` (or the first free one from `first`); a port in
    use is the user's to fix, said in one line."""
    try:
        return build(port) if port is not None else bind_first_free(build, first)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and port is not None:
            raise ConfigError(f"{what} port {port} is already in use; choose another with --port") from None
        if exc.errno in (errno.EACCES, errno.EPERM) and port is not None:
            raise ConfigError(f"{what} port {port} needs privileges this user lacks; choose one above 1024") from None
        raise


def _join_line(port: int) -> str:
    host = lan_address() or socket.gethostname()
    return f"  p2psync sync DIR --tracker {f'[{host}]' if ':' in host else host}:{port}"


# ------------------------------------------------------------------ tracker


def _announcer(quiet: int) -> Callable[[str], None]:
    """The banner and the "stopped" line, on stdout; -qq (errors only) leaves them out."""
    if quiet >= 2:
        return lambda line: None
    return lambda line: print(line, flush=True)


def _run_tracker(args: argparse.Namespace) -> int:
    opts = resolve(TRACKER_OPTIONS, args, args.config)
    if args.print_config:
        print(opts.describe())
        return 0
    _configure_logging(args.verbose, args.quiet)
    from .tracker import Tracker

    shared = None
    if opts["state"] is not None:
        from .tracker.shared import RedisState

        shared = RedisState(opts["state"], advertise=opts["advertise"])
        shared.check()  # unreachable now: one line, exit 2
    key, use_tls = _membership(opts)
    _log_tls(use_tls)
    tracker = _bind(
        "tracker",
        opts["port"],
        lambda p: Tracker(p, opts["host"], shared=shared, group_key=key, use_tls=use_tls),
        opts["port"],
    )
    tracker.start()
    say = _announcer(args.quiet)
    where = f" sharing {opts['state']}" if shared is not None else ""
    say(f"p2psync tracker on {opts['host']}:{tracker.port}{where}. Peers join with:")
    say(_join_line(tracker.port) + _member_flags(key, use_tls))
    _wait_for_interrupt(tracker)
    tracker.exit()
    say("tracker stopped")
    return 0


# ------------------------------------------------------------------ sync


def _sync_options(args: argparse.Namespace, folder: str) -> Resolved:
    config = args.config
    if config is None:
        default = os.path.join(folder, STATE_DIR, CONFIG_FILE)
        config = default if os.path.isfile(default) else None
    return resolve(SYNC_OPTIONS, args, config)


def _prepare_folder(folder: str) -> None:
    """Create the folder if need be; one that cannot be written is the user's to fix."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {folder}: {exc.strerror or exc}") from None
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to the folder {folder}: permission denied")
    check_unlocked(os.path.join(folder, STATE_DIR), folder)  # before a tracker or a listener starts


def _resolvable(host: str, port: int) -> None:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"tracker address {host!r} does not resolve: {exc.strerror or exc}") from None


def _membership(opts: Resolved) -> tuple[bytes | None, bool]:
    """The group key (None: an open swarm) and whether connections use TLS; a --tls
    that cannot work is one line now, not a failure at the first connection."""
    key = _group_key(opts["secret"])
    use_tls = bool(opts["tls"])
    if use_tls:
        from . import tls

        if key is None:
            raise ConfigError("--tls encrypts a members-only swarm: give it --secret FILE too (p2psync keygen FILE)")
        tls.contexts(key)  # no cryptography package: one line naming the extra
    return key, use_tls


def _log_tls(use_tls: bool) -> None:
    if use_tls:
        from . import tls

        log.info("TLS 1.3 with the swarm's certificate; file bodies go through %s", tls.body_path())


def _member_flags(key: bytes | None, use_tls: bool) -> str:
    """What the join line adds for a members-only swarm."""
    return (" --secret KEYFILE" if key is not None else "") + (" --tls" if use_tls else "")


def _group_key(path: str | None) -> bytes | None:
    """The group key from `--secret FILE` (None: an open swarm). Never logged or shown."""
    if path is None:
        return None
    from .local.keyfile import load_key

    return load_key(path)


def _run_sync(args: argparse.Namespace) -> int:
    folder = os.path.abspath(os.path.expanduser(args.dir))
    opts = _sync_options(args, folder)
    if args.print_config:
        print(f"# p2psync sync {folder}: the settings in effect")
        print(opts.describe())
        return 0
    if args.once and opts["tracker"] is None:
        raise ConfigError("--once joins a running tracker: give it --tracker HOST:PORT")
    if opts["watch"]:
        require_watching()  # before anything starts or is created
    for address in opts["tracker"] or ():
        _resolvable(*address)
    _prepare_folder(folder)
    key, use_tls = _membership(opts)
    settings = PeerSettings(
        interval=opts["interval"],
        first_delay=0.0,  # the first round starts as soon as the peer is connected
        max_file_size=opts["max-file-size"],
        watch=opts["watch"],
        classic=False,
        max_delete=opts["max-delete"],
        max_rate=opts["max-rate"],
        group_key=key,
        tls=use_tls,
    )
    live = opts["progress"] and not args.quiet and sys.stdout.isatty()
    events = Events()
    console = None
    if live:
        from rich.console import Console

        from .ui.progress import rich_log_handler

        console = Console()
        _configure_logging(args.verbose, args.quiet, rich_log_handler(console))
        LogEvents(only_warnings=True).attach(events)  # the display shows the rest
    else:
        _configure_logging(args.verbose, args.quiet)
        LogEvents().attach(events)
    _log_tls(use_tls)
    rules = IgnoreRules.for_folder(folder)  # a bad pattern: one line, before anything starts

    tracker = None
    if opts["tracker"] is None:
        from .tracker import Tracker  # joining a tracker elsewhere needs none: a quicker start

        tracker = _bind(
            "tracker",
            None,
            lambda p: Tracker(p, group_key=settings.group_key, use_tls=settings.tls),
            opts["tracker-port"],
        )
        tracker.start()
        host, port = "127.0.0.1", tracker.port
        alternates: tuple[tuple[str, int], ...] = ()
    else:
        (host, port), *rest = opts["tracker"]
        alternates = tuple(rest)

    def build(peer_port: int) -> FileSynchronizer:
        return FileSynchronizer(
            host, port, peer_port, folder=folder, settings=settings, rules=rules, events=events, alternates=alternates
        )

    try:
        peer = _bind("file-serving", opts["port"], build, FIRST_PEER_PORT)
    except BaseException:
        if tracker is not None:
            tracker.exit()
        raise
    if args.once:
        return _sync_once(peer, f"{host}:{port}", console, events)
    peer.start()
    say = _announcer(args.quiet)
    say(f"p2psync {__version__} ({BACKEND} core): syncing {folder}, serving files on port {peer.port}")
    if tracker is not None:
        say(f"Embedded tracker on port {tracker.port}. On another machine, join with:")
        keyed = _member_flags(settings.group_key, settings.tls)
        say(_join_line(tracker.port) + keyed)
        say(f"On this machine: p2psync sync OTHER_DIR --tracker 127.0.0.1:{tracker.port}{keyed}")
    else:
        say(f"Tracker: {', '.join(f'{h}:{p}' for h, p in opts['tracker'])}")
    say("Ctrl-C stops.")
    if console is not None:
        from .ui.progress import LiveDisplay

        with LiveDisplay(events, console):
            _wait_for_interrupt(peer)
    else:
        _wait_for_interrupt(peer)
    peer.exit()
    if tracker is not None:
        tracker.exit()
    say("stopped")
    return 1 if peer.folder_error is not None else 0  # the folder is gone: said in one line already


def _sync_once(peer: FileSynchronizer, tracker: str, console: Any, events: Events) -> int:
    """`--once`: one round, then 0 (in sync), 1 (something failed or still differs) or 2."""
    try:
        if console is not None:
            from .ui.progress import LiveDisplay

            with LiveDisplay(events, console):
                outcome: RoundOutcome = peer.run_once()
        else:
            outcome = peer.run_once()
    except OSError as exc:
        log.error("cannot sync with the tracker %s: %s", tracker, exc)
        return EXIT_USAGE
    except FolderGone:
        return 1  # the engine has said why, in one line
    finally:
        peer.exit()
    if outcome.in_sync:
        print(f"in sync with {tracker}", flush=True)
        return 0
    for behind in outcome.behind:
        source = f" (from {behind.holder})" if behind.holder else ""
        print(f"not in sync: {behind.path}: {behind.why}{source}", flush=True)
    print(f"not in sync with {tracker}: {len(outcome.behind)} paths differ", flush=True)
    return 1


# ------------------------------------------------------------------ status


def _run_status(args: argparse.Namespace) -> int:
    from .peer.probe import read_directory
    from .status import exit_code, folder_status

    _configure_logging(args.verbose, args.quiet + 1)  # a status is its output, not log lines
    folder = os.path.abspath(os.path.expanduser(args.dir))
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder} is not a folder")
    # The folder's own brake and key, from its config (a --secret given here wins).
    opts = _sync_options(argparse.Namespace(config=None, secret=args.secret, tls=args.tls or None), folder)
    rules = IgnoreRules.for_folder(folder)
    listing = None
    where = None
    if args.tracker is not None:
        host, port = args.tracker
        _resolvable(host, port)
        where = f"{host}:{port}"
        try:
            key, use_tls = _membership(opts)
            listing = read_directory(host, port, group_key=key, use_tls=use_tls)
        except OSError as exc:
            raise ConfigError(f"cannot reach the tracker {where}: {exc.strerror or exc}") from None
    doc = folder_status(folder, rules, listing, where, opts["max-delete"])
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        from rich.console import Console

        from .ui.status_view import show_status

        show_status(doc, Console())
    return exit_code(doc)


# ------------------------------------------------------------------ the classic command lines


def classic_tracker_main(argv: Sequence[str] | None = None) -> int:
    """`python -m p2psync.tracker IP PORT`, as the classic `tracker.py IP PORT`."""
    parser = argparse.ArgumentParser(prog="python -m p2psync.tracker", description="Run a p2psync tracker.")
    parser.add_argument("ip", help="address to listen on, e.g. 0.0.0.0")
    parser.add_argument("port", type=argument_type(parse_port), help="port to listen on")
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
    parser.add_argument("tracker_port", type=argument_type(parse_port))
    args = parser.parse_args(argv)
    _configure_logging(0, 0)
    peer = bind_first_free(lambda port: FileSynchronizer(args.tracker_ip, args.tracker_port, port), FIRST_PEER_PORT)
    print(f"serving {os.getcwd()} on port {peer.port}; Ctrl-C stops", flush=True)
    peer.start()
    _wait_for_interrupt(peer)
    peer.exit()
    return 0


def _run_keygen(args: argparse.Namespace) -> int:
    from .local.keyfile import write_new_key

    write_new_key(os.path.expanduser(args.file))
    print(f"wrote a new group key to {args.file} (mode 0600); copy it to every member over a channel you trust")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tracker": _run_tracker,
    "sync": _run_sync,
    "status": _run_status,
    "keygen": _run_keygen,
}


# The collector's default first threshold (700 new objects) runs a collection
# every few hundred entries while a 10,000-file directory or scan is decoded:
# measured, that is a third of decoding one and ~10 % of an empty peer's join.
# Collections still run, only less often; what the imports made is frozen
# out of them (it lives as long as the process).
GC_THRESHOLDS = (50_000, 50, 50)


def _tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> int:
    """The `p2psync` command; `argv` None: run as the program, on `sys.argv`."""
    if argv is None:  # the process is ours (not a caller's, e.g. a test's): tune it
        _tune_gc()
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (WatchingUnavailable, ConfigError) as exc:
        _error_line(args, str(exc))
        return EXIT_USAGE
    except OSError as exc:  # a folder or port the user pointed us at: one line, no traceback
        _error_line(args, str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            log.exception("p2psync failed (a bug: please report it with this traceback)")
        else:
            _error_line(args, f"p2psync failed: {type(exc).__name__}: {exc} (a bug; -v shows the traceback)")
        return EXIT_BUG


def _error_line(args: argparse.Namespace, text: str) -> None:
    """One `error: ...` line on stderr, whatever logging is set to."""
    if logging.getLogger().handlers:
        log.error("%s", text)
    else:
        print(f"p2psync: error: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
