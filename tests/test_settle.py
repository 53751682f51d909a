"""The guest-side waits that end at an event (harness/agent/settle.py), on the host's own sockets:
an early end never reads less than the bound-only wait it replaces would have. No VM."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from harness.agent import settle
from harness.agent.sockets import closing_all, tcp_pair, unix_pair

LONG = 5.0  # a bound no passing test comes near: reaching it is the failure


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = unix_pair()
    with closing_all(a, b):
        yield a, b


@pytest.fixture
def tcp() -> Iterator[tuple[socket.socket, socket.socket]]:
    sender, receiver = tcp_pair()
    with closing_all(sender, receiver):
        yield sender, receiver


def elapsed(started: float) -> float:
    return time.monotonic() - started


def test_first_arrivals_ends_at_the_first_arrival(pair):
    a, b = pair
    a.send(b"bytes")
    started = time.monotonic()
    assert settle.first_arrivals({"b": b}, LONG) == {"b": b"bytes"}
    assert elapsed(started) < 1.0


def test_first_arrivals_reads_every_socket_ready_then_once(pair):
    """As sockets.arrivals: one read each of the sockets readable at that moment."""
    a, b = pair
    a.send(b"to b")
    b.send(b"to a")
    assert settle.first_arrivals({"a": a, "b": b}, LONG) == {"a": b"to a", "b": b"to b"}


def test_first_arrivals_ends_as_soon_as_nothing_will_come(pair):
    _, b = pair
    started = time.monotonic()
    assert settle.first_arrivals({"b": b}, LONG, nothing_will_come=lambda: True) == {}
    assert elapsed(started) < 1.0


def test_first_arrivals_still_reads_what_came_while_the_event_was_asked_for(pair):
    """The last look: bytes that got there between the last select and the answer count."""
    a, b = pair

    def sends_then_settles() -> bool:
        a.send(b"late")
        return True

    assert settle.first_arrivals({"b": b}, LONG, nothing_will_come=sends_then_settles) \
        == {"b": b"late"}


def test_first_arrivals_waits_out_the_bound_when_nothing_says_otherwise(pair):
    _, b = pair
    started = time.monotonic()
    assert settle.first_arrivals({"b": b}, 0.2, nothing_will_come=lambda: False) == {}
    assert elapsed(started) >= 0.2


def test_read_all_sent_reads_what_was_sent(tcp):
    sender, receiver = tcp
    sender.send(b"x" * 100)
    started = time.monotonic()
    assert settle.read_all_sent(sender, receiver, LONG) == b"x" * 100
    assert settle.unacked_bytes(sender) == 0 and elapsed(started) < 1.0


def test_read_all_sent_waits_for_bytes_the_sender_still_holds(tcp):
    """Bytes the sender's TCP took but has not sent (TCP_CORK here; Nagle or a full window in a
    case) count: the receiver's queue is empty when the wait starts, and they come later."""
    sender, receiver = tcp
    sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    sender.send(b"held")
    assert settle.unacked_bytes(sender) == 4  # the case the event is for
    uncork = threading.Timer(0.2, sender.setsockopt, (socket.IPPROTO_TCP, socket.TCP_CORK, 0))
    uncork.start()
    try:
        started = time.monotonic()
        assert settle.read_all_sent(sender, receiver, LONG) == b"held"
        assert elapsed(started) < LONG
    finally:
        uncork.join()


def test_read_all_sent_ends_at_once_when_nothing_was_sent(tcp):
    sender, receiver = tcp
    started = time.monotonic()
    assert settle.read_all_sent(sender, receiver, LONG) == b""
    assert elapsed(started) < 1.0


def test_read_all_sent_ends_at_the_end_of_stream(tcp, monkeypatch):
    sender, receiver = tcp
    monkeypatch.setattr(settle, "unacked_bytes", lambda sock: 1)
    sender.send(b"last")
    sender.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    assert settle.read_all_sent(sender, receiver, LONG) == b"last"
    assert elapsed(started) < 1.0


def test_without_the_acknowledgement_it_reads_until_quiet_as_before(tcp, monkeypatch):
    """Bytes still unacknowledged after the bound: the old wait (sockets.drained) takes over,
    and what arrives during it is read too."""
    sender, receiver = tcp
    monkeypatch.setattr(settle, "unacked_bytes", lambda sock: 1)
    calls = []
    real_drained = settle.drained

    def drained(sock: socket.socket, wait: float) -> bytes:
        calls.append(wait)
        sender.send(b"during the quiet wait")
        return real_drained(sock, wait)

    monkeypatch.setattr(settle, "drained", drained)
    sender.send(b"first ")
    started = time.monotonic()
    assert settle.read_all_sent(sender, receiver, 0.2) == b"first during the quiet wait"
    assert calls == [0.2] and elapsed(started) >= 0.4


def test_reading_leaves_the_socket_as_it_was(tcp):
    sender, receiver = tcp
    sender.send(b"z")
    settle.read_all_sent(sender, receiver, LONG)
    assert receiver.gettimeout() == 2.0  # sockets.TIMEOUT, as tcp_pair made it
