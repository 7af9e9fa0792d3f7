"""Settings from flags, config files and defaults (options.py), and the errors a
user can cause, each one line and exit code 2 (the CLI in process and as a child)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2psync import cli
from p2psync.config import DeleteLimit
from p2psync.errors import ConfigError
from p2psync.options import SYNC_OPTIONS, TRACKER_OPTIONS, load_file, parse_rate, parse_size, resolve
from p2psync.ratelimit import RateLimiter

from .loopback import LOOPBACK, free_port

P2PSYNC = [sys.executable, "-m", "p2psync.cli"]


def parsed(*argv: str):
    return cli._parser().parse_args(["sync", "DIR", *argv])


def test_flags_win_over_the_file_which_wins_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "p2psync.toml"
    config.write_text('max-rate = "10M"\ninterval = 2\nwatch = false\nmax-delete = "20%"\n')
    opts = resolve(SYNC_OPTIONS, parsed("--interval", "3"), str(config))
    assert opts["interval"] == 3.0 and opts.sources["interval"] == "command line"
    assert opts["max-rate"] == 10 << 20 and opts.sources["max-rate"] == str(config)
    assert opts["max-delete"] == DeleteLimit(None, 20.0, 0)
    assert opts["tracker-port"] == 8900 and opts.sources["tracker-port"] == "default"
    shown = opts.describe()
    assert "max-rate = 10485760  # " + str(config) in shown and "interval = 3.0  # command line" in shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 'blue'\n", "unknown key 'colour'"),
        ("interval = 'soon'\n", "interval: expected seconds"),
        ("watch = 'yes'\n", "watch must be true or false"),
        ("max-delete = 'lots'\n", "max-delete"),
        ("port = 70000\n", "port: expected a port number"),
        ("max-rate = [1]\n", "max-rate must be a number or a string"),
        ("interval = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_file(str(config), SYNC_OPTIONS)
    assert str(config) in str(caught.value)


def test_the_folders_own_config_is_read_and_printed(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "f"
    (folder / ".p2psync").mkdir(parents=True)
    (folder / ".p2psync/config.toml").write_text('max-rate = "1M"\n')
    assert cli.main(["sync", str(folder), "--print-config", "--interval", "9"]) == 0
    out = capsys.readouterr().out
    assert f"max-rate = 1048576  # {folder}/.p2psync/config.toml" in out
    assert "interval = 9.0  # command line" in out and "tracker-port = 8900  # default" in out
    assert cli.main(["tracker", "--print-config", "--port", "9001"]) == 0
    assert "port = 9001  # command line" in capsys.readouterr().out


def test_every_option_has_an_example_in_help() -> None:
    for option in (*SYNC_OPTIONS, *TRACKER_OPTIONS):
        assert option.example.startswith(f"--{option.key}") or option.example.startswith(f"--no-{option.key}")
    text = cli._parser()._subparsers._group_actions[0].choices["sync"].format_help()  # type: ignore[union-attr]
    assert text.count("e.g.") >= len(SYNC_OPTIONS) + 3  # and --once, --config, --print-config


@given(st.integers(1, 1 << 40))
def test_sizes_and_rates_read_back(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_rate(f"{n}/s") == n
    assert parse_size(f"{n}K") == n << 10


def test_rate_limiter_holds_the_rate_on_a_fake_clock() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(1_000_000, clock=lambda: now[0], sleep=sleep)
    for _ in range(100):
        limiter.take(50_000)  # 5 MB in all
    assert 4.8 <= now[0] <= 5.0  # the first burst (0.1 s worth) is free, then exactly the rate
    assert slept and max(slept) <= 0.051
    with pytest.raises(ValueError):
        RateLimiter(0)


# ------------------------------------------------------------------ errors a user can cause


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path, caplog) -> None:
    (tmp_path / "file.txt").write_text("not a folder")
    code = cli.main(["sync", str(tmp_path / "file.txt/sub"), "--tracker", f"{LOOPBACK}:9", "-q"])
    assert code == 2 and "cannot create the folder" in caplog.text and "Traceback" not in caplog.text


def test_a_tracker_that_does_not_resolve_is_one_line(tmp_path: Path, monkeypatch, caplog) -> None:
    def no_such_host(host: str, *args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # no resolver asked: tests stay on loopback
    code = cli.main(["sync", str(tmp_path / "f"), "--tracker", "tracker.example:8900", "-q"])
    assert code == 2 and "'tracker.example' does not resolve" in caplog.text
    assert not (tmp_path / "f").exists()


def test_a_port_in_use_is_one_line(tmp_path: Path, caplog) -> None:
    with socket.create_server((LOOPBACK, 0)) as taken:
        port = taken.getsockname()[1]
        code = cli.main(["sync", str(tmp_path / "f"), "--tracker", f"{LOOPBACK}:9", "--port", str(port), "-q"])
        assert code == 2 and f"port {port} is already in use" in caplog.text
        code = cli.main(["tracker", "--host", LOOPBACK, "--port", str(port), "-q"])
        assert code == 2 and "tracker port" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_bug_is_one_line_and_a_traceback_only_with_v(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(args: object) -> int:
        raise KeyError("something p2psync got wrong")

    monkeypatch.setitem(cli.COMMANDS, "status", broken)
    assert cli.main(["status", str(tmp_path)]) == cli.EXIT_BUG
    assert "a bug; -v shows the traceback" in caplog.text and "Traceback" not in caplog.text
    caplog.clear()
    assert cli.main(["status", str(tmp_path), "-v"]) == cli.EXIT_BUG
    assert "Traceback" in caplog.text


def test_a_bad_config_value_from_the_command_line_is_exit_2(env, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("interval = -1\n")
    result = subprocess.run(
        [*P2PSYNC, "sync", str(tmp_path / "f"), "--config", str(config), "--tracker", f"{LOOPBACK}:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("interval: expected 0.1 to 86400 seconds, got '-1'")
    assert "Traceback" not in result.stderr
