"""Turning guest-side actions into observations: an errno name, or "OK"."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import libbpf as bpf
from .libbpf import errno_name

if TYPE_CHECKING:
    from typing import ParamSpec

    _Args = ParamSpec("_Args")


def outcome(action: Callable[_Args, object], *args: _Args.args, **kwargs: _Args.kwargs) -> str:
    """Run action; "OK" when it succeeds, else the errno name it failed with ("EBUSY")."""
    try:
        action(*args, **kwargs)
    except OSError as exc:
        if exc.errno is None:
            raise
        return errno_name(exc.errno)
    return "OK"


SO_COOKIE = 57  # not exported by Python's socket module


def socket_cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


def value_cookie(value: bytes) -> int:
    """The socket cookie in a sockmap or sockhash value as a lookup from user space returns it
    (host order: x86 is little-endian)."""
    return int.from_bytes(value, "little")


def cookie_in_map(fd: int, key: bytes) -> int:
    """The cookie of the socket the map holds at `key`; raises BpfError when the slot is empty."""
    return value_cookie(bpf.map_lookup(fd, key, 8))


def holds_socket(fd: int, key: bytes, sock: socket.socket) -> bool | str:
    """True when the map's entry at `key` is `sock` itself (by cookie), False when it is another
    socket, or the errno name the lookup fails with ("ENOENT")."""
    try:
        return cookie_in_map(fd, key) == socket_cookie(sock)
    except bpf.BpfError as exc:
        return exc.errno_name


def wait_until(check: Callable[[], bool], seconds: float, interval: float = 0.02) -> bool:
    """Whether `check()` came true within `seconds`: a bounded poll of state the kernel changes
    asynchronously (a work item, a counter a BPF program sets), ending as soon as it does."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def lookup_within(fd: int, key: bytes, seconds: float = 2.0) -> str:
    """Lookup result once the entry is gone, or "OK" if it is still there after `seconds`.

    Entries leave asynchronously after close() (the socket is released from a work item on
    some kernels), so a single lookup right after close() would blame the kernel too early.
    """
    state = "OK"

    def gone() -> bool:
        nonlocal state
        state = outcome(bpf.map_lookup, fd, key, 8)
        return state != "OK"

    wait_until(gone, seconds)
    return state
