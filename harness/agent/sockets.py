"""Real sockets for guest-side cases: connected pairs of each family, with timeouts everywhere.
Making them is the "sockets" share of a call's time (timing.py; ./kconform bench's work row)."""
from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

from .timing import timed

TIMEOUT = 2.0
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}  # as the cases name them


def loopback(family: int) -> str:
    """The loopback address of an address family (AF_INET or AF_INET6)."""
    return "127.0.0.1" if family == socket.AF_INET else "::1"


def _timed(first: socket.socket, second: socket.socket) -> tuple[socket.socket, socket.socket]:
    first.settimeout(TIMEOUT)
    second.settimeout(TIMEOUT)
    return first, second


@timed("sockets")
def tcp_listener(family: int = socket.AF_INET, port: int = 0) -> socket.socket:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((loopback(family), port))
    srv.listen(16)
    srv.settimeout(TIMEOUT)
    return srv


@timed("sockets")
def tcp_pair(family: int = socket.AF_INET,
             listener: socket.socket | None = None) -> tuple[socket.socket, socket.socket]:
    """(client, server-side accepted socket), both established over loopback."""
    srv = listener or tcp_listener(family)
    cli = socket.socket(family, socket.SOCK_STREAM)
    cli.settimeout(TIMEOUT)
    cli.connect(srv.getsockname()[:2])
    acc, _ = srv.accept()
    if listener is None:
        srv.close()
    return _timed(cli, acc)


@timed("sockets")
def udp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    a.bind((loopback(family), 0))
    b.bind((loopback(family), 0))
    a.connect(b.getsockname()[:2])
    b.connect(a.getsockname()[:2])
    return _timed(a, b)


@timed("sockets")
def unix_pair(kind: int = socket.SOCK_STREAM) -> tuple[socket.socket, socket.socket]:
    return _timed(*socket.socketpair(socket.AF_UNIX, kind))


@contextlib.contextmanager
def closing_all(
        *groups: socket.socket | list[socket.socket] | tuple[socket.socket, ...]) -> Iterator[None]:
    """Close every socket made in a case, whatever happens."""
    try:
        yield
    finally:
        for group in groups:
            for s in (group if isinstance(group, (list, tuple)) else [group]):
                with contextlib.suppress(OSError):
                    s.close()


def arrivals(socks: dict[str, socket.socket], wait: float = 1.0) -> dict[str, bytes]:
    """{name: bytes} of the sockets in `socks` ({name: socket}) that have data within `wait`
    seconds: one read each. A socket whose read fails, or that reads end of stream, is left out."""
    ready, _, _ = select.select(list(socks.values()), [], [], wait)
    return read_ready(socks, ready)


def read_ready(socks: dict[str, socket.socket], ready: list[socket.socket]) -> dict[str, bytes]:
    """One read of each socket of `socks` that is in `ready`: a read that fails or reads end of
    stream leaves the socket out."""
    got: dict[str, bytes] = {}
    for name, sock in socks.items():
        if sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                continue
            if data:
                got[name] = data
    return got


def received(sock: socket.socket, wait: float = 1.0) -> bytes:
    """What one read of `sock` gets within `wait` seconds (b"" if nothing comes)."""
    return arrivals({"sock": sock}, wait).get("sock", b"")


def drained(sock: socket.socket, wait: float) -> bytes:
    """Everything `sock` receives until `wait` seconds pass with nothing new, or its end of
    stream. A failed read raises: a reset connection is not silence, and the case says which."""
    got = b""
    while select.select([sock], [], [], wait)[0]:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got
