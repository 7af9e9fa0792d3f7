"""Deadlines (the watchdog thread): overall deadlines that cut a socket, and bounded bookkeeping."""

from __future__ import annotations

import pytest

from p2psync.deadlines import _COMPACT_SLACK, Watchdog
from p2psync.errors import ConnectionClosed, TransferError

from .loopback import tcp_pair


@pytest.fixture
def watchdog():
    made = Watchdog()
    yield made
    made.close()


def test_an_exchange_past_its_deadline_is_cut_and_named(watchdog: Watchdog) -> None:
    client, server = tcp_pair()
    with client, server:
        client.settimeout(30)  # far beyond the deadline: only the watchdog can end the wait
        with (
            pytest.raises(TransferError, match=r"the slow part took longer than 0\.2 s"),
            watchdog.limit(client, 0.2, "the slow part") as deadline,
        ):
            if not client.recv(1):  # the peer never sends; the cut ends the wait as end of stream
                raise ConnectionClosed("closed")
        assert deadline.expired


def test_an_exchange_within_its_deadline_is_left_alone(watchdog: Watchdog) -> None:
    client, server = tcp_pair()
    with client, server:
        client.settimeout(5)
        with watchdog.limit(client, 30, "a quick part") as deadline:
            server.sendall(b"x")
            assert client.recv(1) == b"x"
        assert not deadline.expired
        server.sendall(b"y")
        assert client.recv(1) == b"y"  # the socket still works


def test_ended_deadlines_do_not_pile_up(watchdog: Watchdog) -> None:
    client, server = tcp_pair()
    with client, server, watchdog.limit(client, 60, "a long transfer"):  # one stays live throughout
        for _ in range(20 * _COMPACT_SLACK):
            with watchdog.limit(client, 60, "a short request"):
                pass
        assert len(watchdog._heap) <= 2 * len(watchdog._live) + _COMPACT_SLACK + 1
        assert len(watchdog._live) == 1
