"""The guest side's one set of receive helpers (harness/agent/sockets.py), on real host sockets:
the redirect, sk_msg and doc-example cases judge what arrived by them."""
import socket
import struct

import pytest

from harness.agent.sockets import arrivals, closing_all, drained, received, tcp_pair, unix_pair


def test_arrivals_names_only_the_sockets_that_got_data():
    a, b = unix_pair()
    c, d = unix_pair()
    with closing_all(a, b, c, d):
        a.send(b"to b")
        assert arrivals({"b": b, "d": d}, wait=0.5) == {"b": b"to b"}


def test_a_socket_at_end_of_stream_or_failing_is_left_out():
    a, b = tcp_pair()
    c, d = tcp_pair()
    with closing_all(a, b, c, d):
        a.close()  # b reads end of stream
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        c.close()  # a reset: d's read fails
        assert arrivals({"b": b, "d": d}, wait=0.5) == {}


def test_received_is_one_read_and_empty_when_nothing_comes():
    a, b = unix_pair(socket.SOCK_DGRAM)
    with closing_all(a, b):
        assert received(b, wait=0.05) == b""
        a.send(b"one")
        a.send(b"two")
        assert received(b, wait=0.5) == b"one"


def test_drained_reads_until_quiet():
    a, b = unix_pair(socket.SOCK_DGRAM)
    with closing_all(a, b):
        for part in (b"one", b"two", b"three"):
            a.send(part)
        assert drained(b, wait=0.05) == b"onetwothree"


def test_drained_raises_when_the_connection_is_reset():
    """A reset is an observation, not silence: msg_helpers' cases must see it fail."""
    a, b = tcp_pair()
    with closing_all(a, b):
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.sendall(b"x")
        b.close()  # unread data and linger 0: the peer sends RST
        with pytest.raises(ConnectionResetError):
            drained(a, 0.5)
