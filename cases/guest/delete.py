"""Guest side of cases/test_delete.py: deleting entries, and entries leaving with their socket."""
import ctypes
import socket

from harness.agent import libbpf as bpf
from harness.agent.observe import lookup_within, outcome
from harness.agent.sockets import closing_all, tcp_listener, tcp_pair


def delete_missing(map_type):
    with bpf.created_map(map_type, 4, 8, 2) as fd:
        return {"missing_key": outcome(bpf.map_delete, fd, bpf.u32(0)),
                "key_past_max_entries": outcome(bpf.map_delete, fd, bpf.u32(5))}


def delete_present(map_type):
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 2) as fd, closing_all(a, b):
        bpf.map_update(fd, bpf.u32(0), bpf.u64(a.fileno()))
        return {"delete": outcome(bpf.map_delete, fd, bpf.u32(0)),
                "lookup_after": outcome(bpf.map_lookup, fd, bpf.u32(0), 8)}


def closed_socket_leaves_map(map_type):
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 2) as fd, closing_all(a, b):
        bpf.map_update(fd, bpf.u32(0), bpf.u64(a.fileno()))
        before = outcome(bpf.map_lookup, fd, bpf.u32(0), 8)
        a.close()
        return {"lookup_before_close": before, "lookup_after_close": lookup_within(fd, bpf.u32(0))}


def _connect_unspec(sock):
    """connect() with an AF_UNSPEC address: disconnects (for a listener: stops listening)."""
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.create_string_buffer(16)  # sa_family = AF_UNSPEC (0), rest zero
    if libc.connect(sock.fileno(), addr, 16) != 0:
        raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")


def listener_after_connect_unspec(map_type):
    """A listener in a map is disconnected with connect(AF_UNSPEC): does its entry stay?"""
    listener = tcp_listener(socket.AF_INET)
    with bpf.created_map(map_type, 4, 8, 2) as fd, closing_all(listener):
        bpf.map_update(fd, bpf.u32(0), bpf.u64(listener.fileno()))
        return {"connect_unspec": outcome(_connect_unspec, listener),
                "lookup_after": lookup_within(fd, bpf.u32(0), seconds=0.5),
                "insert_again": outcome(bpf.map_update, fd, bpf.u32(1),
                                        bpf.u64(listener.fileno()))}
