"""Turning guest-side actions into observations: an errno name, or "OK"."""
import socket

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
