"""Guest side of cases/test_delete.py: deleting entries, and entries leaving with their socket."""
import time

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import closing_all, tcp_pair


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


def _gone_within(fd, key, seconds=2.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = outcome(bpf.map_lookup, fd, key, 8)
        if state != "OK":
            return state
        time.sleep(0.02)
    return "OK"


def closed_socket_leaves_map(map_type):
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 2) as fd, closing_all(a, b):
        bpf.map_update(fd, bpf.u32(0), bpf.u64(a.fileno()))
        before = outcome(bpf.map_lookup, fd, bpf.u32(0), 8)
        a.close()
        return {"lookup_before_close": before, "lookup_after_close": _gone_within(fd, bpf.u32(0))}

