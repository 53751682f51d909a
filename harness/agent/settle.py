"""Waits for bytes that end at an event proving where they went, for the guest-side cases
(issue #17, point 4): a wait that has to see nothing arrive costs its whole bound, so a case
ends it as soon as the kernel's own state says nothing more can come, and keeps the bound only
where silence is the observation. Which event proves what is the caller's to say, with the
kernel source it rests on; these helpers only make sure that an early end never reads less than
the old bound-only wait would have.

Guest side only, standard library only: it runs in the agent on every guest and SSH target, so
its syntax stays what the agent's oldest Python takes (no `X | Y` outside annotations). Waits go
through select.select, which timing.py counts as waiting.
"""
from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import time
from collections.abc import Callable

from .sockets import drained, read_ready

# How often a wait that also watches kernel state looks at it: a map lookup or an ioctl is cheap
# next to the milliseconds a redirect or an ACK takes under emulation.
POLL_SECONDS = 0.005
# <asm-generic/sockios.h>: SIOCOUTQ is TIOCOUTQ, the one Python's termios exports
SIOCOUTQ = termios.TIOCOUTQ


def first_arrivals(socks: dict[str, socket.socket], bound: float,
                   nothing_will_come: Callable[[], bool] | None = None) -> dict[str, bytes]:
    """{name: bytes} of the sockets in `socks` readable at the first moment any is, one read
    each (what sockets.arrivals returns), within `bound` seconds; or, as soon as
    `nothing_will_come()` says the kernel has settled the bytes' fate without them reaching any
    of these sockets, what one last look finds (normally nothing). That look comes after the
    answer, so bytes that arrived while it was asked for are still read."""
    deadline, watched = time.monotonic() + bound, list(socks.values())
    step = 0.0  # the first look does not wait: the kernel may have settled it during the send
    while True:
        left = max(deadline - time.monotonic(), 0.0)
        ready = select.select(watched, [], [], left if nothing_will_come is None
                              else min(step, left))[0]
        if ready:
            return read_ready(socks, ready)
        if nothing_will_come is not None and nothing_will_come():
            return read_ready(socks, select.select(watched, [], [], 0)[0])
        if left == 0:
            return {}
        step = POLL_SECONDS


def unacked_bytes(sock: socket.socket) -> int:
    """SIOCOUTQ of a connected TCP socket: the bytes its TCP has taken to send that the peer has
    not acknowledged yet, sent or still queued (tcp_ioctl(): write_seq - snd_una, the same in
    5.10, 6.1, 6.12 and 7.3; tcp_bpf_ioctl() of a socket in a sockmap hands every command but
    SIOCINQ to tcp_ioctl())."""
    answer = fcntl.ioctl(sock.fileno(), SIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", answer)[0])


def _read_queued(sock: socket.socket) -> tuple[bytes, bool]:
    """(what `sock` has queued, whether it read end of stream), without waiting. Non-blocking
    for the reads only: a Python socket with a timeout waits for readiness before it calls
    recv() at all. A failed read raises, as sockets.drained's does."""
    chunks: list[bytes] = []
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return b"".join(chunks), False
            if not data:
                return b"".join(chunks), True
            chunks.append(data)
    finally:
        sock.settimeout(timeout)


def read_all_sent(sender: socket.socket, receiver: socket.socket, bound: float) -> bytes:
    """Everything `receiver` reads of what its TCP peer `sender` has sent so far. Done as soon
    as `sender` has no byte unacknowledged: the receiver queues a segment's data before it
    acknowledges it (tcp_rcv_established(), tcp_data_queue()), so then every byte the sender's
    TCP took is in the receiver's queue, and only a later send can add one. If that does not
    happen within `bound` seconds, what arrives until `bound` seconds pass with nothing new
    (sockets.drained, the wait this replaces)."""
    deadline, got = time.monotonic() + bound, b""
    while True:
        acked = unacked_bytes(sender) == 0  # before the read: what it covers is queued by then
        data, ended = _read_queued(receiver)
        got += data
        if acked or ended:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return got + drained(receiver, bound)
        select.select([receiver], [], [], min(POLL_SECONDS, left))
