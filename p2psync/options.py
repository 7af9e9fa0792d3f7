"""Every option of `p2psync sync` and `p2psync tracker`, in one table: its flag,
its key in a config file, how its text is read, its default, its help and an
example. The command line and `config.toml` are both read through it, so they
cannot drift apart, and `--print-config` can say where each value came from.

Precedence: a flag given on the command line, else the config file
(`--config FILE`, or `DIR/.p2psync/config.toml` for `sync`), else the default.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import DeleteLimit
from .errors import ConfigError

__all__ = [
    "SYNC_OPTIONS",
    "TRACKER_OPTIONS",
    "Option",
    "Resolved",
    "add_options",
    "argument_type",
    "parse_host_port",
    "parse_port",
    "parse_rate",
    "parse_size",
    "resolve",
]

DEFAULT_TRACKER_PORT = 8900
FIRST_PEER_PORT = 8000


def parse_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6ADDR]:PORT`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_trackers(text: str) -> tuple[tuple[str, int], ...]:
    """`HOST:PORT[,HOST:PORT...]`: trackers of one swarm, tried in turn."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ConfigError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return tuple(parse_host_port(part) for part in parts)


def parse_state(text: str) -> str:
    """Where trackers of one swarm share their state: `redis://HOST:PORT/DB` or `unix:///PATH`."""
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"expected redis://HOST:PORT/DB or unix:///path/to/redis.sock, got {text!r}")
    return text


def parse_path(text: str) -> str:
    if not text.strip():
        raise ConfigError("expected a file's path")
    return os.path.expanduser(text)


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise ConfigError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def parse_size(text: str) -> int:
    """Bytes, with an optional K, M, G or T suffix (powers of 1024): `500M`, `1.5G`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", text.strip().upper())
    if match is None:
        raise ConfigError(f"expected a size like 500M or 2G, got {text!r}")
    return int(float(match.group(1)) * (1 << (10 * " KMGT".index(match.group(2) or " "))))


def parse_rate(text: str) -> int:
    """Bytes per second: `10M`, `500K`, `10M/s`."""
    value = parse_size(re.sub(r"(?i)/s$", "", text.strip()))
    if value <= 0:
        raise ConfigError(f"a rate must be more than 0, got {text!r}")
    return value


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"expected seconds, got {text!r}") from None
    if not 0.1 <= value <= 86400:
        raise ConfigError(f"expected 0.1 to 86400 seconds, got {text!r}")
    return value


def parse_host(text: str) -> str:
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"expected an address, got {text!r}")
    return text


@dataclass(frozen=True)
class Option:
    key: str  # `--key` on the command line, `key = ...` in a config file
    parse: Callable[[str], Any] | None  # None: an on/off switch (`--key` / `--no-key`, true/false)
    default: Any
    help: str
    example: str  # shown in --help: every option has one
    metavar: str | None = None
    shown_default: str | None = None  # for --help when the default is computed

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")

    def from_file(self, value: Any, where: str) -> Any:
        """A config file's value: TOML booleans for switches; numbers or strings,
        read as the flag's text would be, for the rest."""
        if self.parse is None:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {self.key} must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{where}: {self.key} must be a number or a string, got {value!r}")
        try:
            return self.parse(str(value))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {self.key}: {exc}") from None


SECRET = Option(  # the same for sync and tracker
    "secret",
    parse_path,
    None,
    "members only: every connection proves it holds the group key in FILE (p2psync keygen FILE makes one); "
    "members never talk to a tracker or peer without it",
    "--secret ~/.config/p2psync/group.key",
    "FILE",
    "open to anyone who can connect (the classic protocol)",
)

TLS = Option(  # the same for sync and tracker
    "tls",
    None,
    False,
    "members only, encrypted: TLS 1.3 with the certificate every member derives from the group key "
    "(needs --secret, and: pip install 'p2psync[tls]'); members with --tls talk only to members with it",
    "--tls",
)

SYNC_OPTIONS: tuple[Option, ...] = (
    Option(
        "tracker",
        parse_trackers,
        None,
        "join this tracker instead of running one here; several trackers of one swarm, comma-separated, "
        "are tried in turn when one fails",
        "--tracker 192.168.1.20:8900, --tracker a.lan:8900,b.lan:8900",
        "HOST:PORT[,...]",
        "run one here",
    ),
    Option(
        "port",
        parse_port,
        None,
        "port to serve files on",
        "--port 8001",
        "PORT",
        f"the first free one from {FIRST_PEER_PORT}",
    ),
    Option(
        "tracker-port",
        parse_port,
        DEFAULT_TRACKER_PORT,
        "port of the embedded tracker, when there is no --tracker (the next free one if taken)",
        "--tracker-port 9000",
        "PORT",
    ),
    Option("interval", parse_seconds, 5.0, "seconds between sync rounds", "--interval 2", "SECONDS"),
    Option(
        "watch",
        None,
        False,
        "watch the folder (needs: pip install 'p2psync[watch]'): report a change at once, "
        "and skip the rescan in rounds where nothing changed",
        "--watch",
    ),
    Option(
        "max-file-size",
        parse_size,
        None,
        "refuse to download files larger than this",
        "--max-file-size 2G",
        "SIZE",
        "the free disk space",
    ),
    Option(
        "max-delete",
        DeleteLimit.parse,
        DeleteLimit(),
        "the most files one round may move to the trash because other peers deleted them, as a count "
        "or a share of the folder; 100%% turns the brake off",
        "--max-delete 200, --max-delete 20%%",
        "N|N%",
        "half the folder's files, once more than 10",
    ),
    Option(
        "max-rate",
        parse_rate,
        None,
        "bandwidth limit in bytes per second, for uploads and for downloads (each way)",
        "--max-rate 10M",
        "RATE",
        "no limit",
    ),
    SECRET,
    TLS,
    Option(
        "progress",
        None,
        True,
        "on a terminal, show transfers, the round and recent events live (--no-progress: plain log lines)",
        "--no-progress",
    ),
)

TRACKER_OPTIONS: tuple[Option, ...] = (
    Option("host", parse_host, "0.0.0.0", "address to listen on (0.0.0.0: all IPv4; :: for IPv6)", "--host ::"),
    Option("port", parse_port, DEFAULT_TRACKER_PORT, "port to listen on", "--port 9000", "PORT"),
    Option(
        "state",
        parse_state,
        None,
        "share the swarm with other trackers through this Redis (needs: pip install 'p2psync[redis]')",
        "--state redis://127.0.0.1:6379/0",
        "URL",
        "this process's memory",
    ),
    SECRET,
    TLS,
    Option(
        "advertise",
        parse_host,
        None,
        "with --state: the address other machines reach this tracker's machine at, published for "
        "its peers that connect over loopback",
        "--advertise 192.168.1.20",
        "ADDRESS",
        "as seen",
    ),
)


def argument_type(parse: Callable[[str], Any], name: str | None = None) -> Callable[[str], Any]:
    """`parse` as an argparse `type`: its `ConfigError` becomes argparse's one-line usage error."""

    def read(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = name or parse.__name__  # argparse names the option in its error
    return read


def _argtype(option: Option) -> Callable[[str], Any]:
    assert option.parse is not None
    return argument_type(option.parse, option.key)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add `options` to `parser`, each defaulting to None (so `resolve` can tell a
    flag given from one left out) with its default and an example in its help."""
    for option in options:
        default = option.shown_default or (
            "on" if option.default is True else "off" if option.default is False else str(option.default)
        )
        text = f"{option.help} (default: {default}; e.g. {option.example})"
        if option.parse is None:
            parser.add_argument(
                f"--{option.key}", dest=option.dest, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(
                f"--{option.key}",
                dest=option.dest,
                type=_argtype(option),
                default=None,
                metavar=option.metavar,
                help=text,
            )


@dataclass(frozen=True)
class Resolved:
    """The effective value of every option, and where each came from."""

    values: Mapping[str, Any]  # by key
    sources: Mapping[str, str]  # by key: "command line", the config file's path, or "default"
    unset: Mapping[str, str]  # by key: what an option left unset means

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def describe(self) -> str:
        """`--print-config`: one `key = value  # source` line per option, TOML-shaped."""
        lines = []
        for key, value in self.values.items():
            if value is None:  # unset: as a comment, so the output is a valid config file
                lines.append(f"# {key} is unset ({self.unset[key]})  # {self.sources[key]}")
            else:
                lines.append(f"{key} = {_toml_value(value)}  # {self.sources[key]}")
        return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return '"' + ",".join(f"{host}:{port}" for host, port in value) + '"'
    if isinstance(value, tuple):
        return f'"{value[0]}:{value[1]}"'
    if isinstance(value, DeleteLimit):
        return f'"{value.count}"' if value.count is not None else f'"{value.percent:g}%"'
    return f'"{value}"'


def load_file(path: str, options: Sequence[Option]) -> dict[str, Any]:
    """The values a config file sets, read through `options`. Raises `ConfigError`
    for a file that cannot be read or parsed, an unknown key or a bad value,
    naming the file and the key."""
    if sys.version_info >= (3, 11):  # imported here: a run without a config file never loads it (~5 ms)
        import tomllib
    else:  # pragma: no cover - the backport, same API
        import tomli as tomllib
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {option.key: option for option in options}
    values = {}
    for key, value in data.items():
        option = known.get(key)
        if option is None:
            raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        values[key] = option.from_file(value, path)
    return values


def resolve(options: Sequence[Option], args: argparse.Namespace, config_file: str | None) -> Resolved:
    """Flags over the config file over defaults."""
    from_file = load_file(config_file, options) if config_file is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in options:
        given = getattr(args, option.dest, None)
        if given is not None:
            values[option.key], sources[option.key] = given, "command line"
        elif option.key in from_file:
            values[option.key], sources[option.key] = from_file[option.key], str(config_file)
        else:
            values[option.key], sources[option.key] = option.default, "default"
    unset = {option.key: option.shown_default or "none" for option in options}
    return Resolved(values, sources, unset)
