"""Turning guest-side actions into observations: an errno name, or "OK"."""
import socket
import time

from . import libbpf as bpf
from .libbpf import errno_name


def outcome(action, *args, **kwargs):
    """Run action; "OK" when it succeeds, else the errno name it failed with ("EBUSY")."""
    try:
        action(*args, **kwargs)
    except OSError as exc:
        if exc.errno is None:
            raise
        return errno_name(exc.errno)
    return "OK"


SO_COOKIE = 57  # not exported by Python's socket module


def socket_cookie(sock):
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def lookup_within(fd, key, seconds=2.0):
    """Lookup result once the entry is gone, or "OK" if it is still there after `seconds`.

    Entries leave asynchronously after close() (the socket is released from a work item on
    some kernels), so a single lookup right after close() would blame the kernel too early.
    """
    deadline = time.monotonic() + seconds
    while True:
        state = outcome(bpf.map_lookup, fd, key, 8)
        if state != "OK" or time.monotonic() >= deadline:
            return state
        time.sleep(0.02)
