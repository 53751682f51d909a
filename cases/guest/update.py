"""Guest side of cases/test_update.py: BPF_MAP_UPDATE_ELEM flags and limits from user space."""
import os

from harness.agent import libbpf as bpf
from harness.agent.observe import cookie_in_map, lookup_within, outcome, socket_cookie
from harness.agent.sockets import closing_all, tcp_pair

u32, u64 = bpf.u32, bpf.u64


def update_flags(map_type):
    """NOEXIST on an occupied key, EXIST on an empty one, ANY/EXIST replacing."""
    a, b = tcp_pair()
    c, d = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 4) as fd, closing_all(a, b, c, d):
        obs = {"noexist_empty": outcome(bpf.map_update, fd, u32(0), u64(a.fileno()),
                                        bpf.BPF_NOEXIST)}
        obs["noexist_occupied"] = outcome(bpf.map_update, fd, u32(0), u64(c.fileno()),
                                          bpf.BPF_NOEXIST)
        obs["exist_empty"] = outcome(bpf.map_update, fd, u32(1), u64(c.fileno()), bpf.BPF_EXIST)
        obs["exist_occupied"] = outcome(bpf.map_update, fd, u32(0), u64(c.fileno()), bpf.BPF_EXIST)
        obs["exist_replaced_socket"] = cookie_in_map(fd, u32(0)) == socket_cookie(c)
        obs["any_occupied"] = outcome(bpf.map_update, fd, u32(0), u64(a.fileno()), bpf.BPF_ANY)
        obs["any_replaced_socket"] = cookie_in_map(fd, u32(0)) == socket_cookie(a)
        return obs


def update_bad_flags(map_type):
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 4) as fd, closing_all(a, b):
        return {"flags_3": outcome(bpf.map_update, fd, u32(0), u64(a.fileno()), 3),
                "f_lock": outcome(bpf.map_update, fd, u32(0), u64(a.fileno()), bpf.BPF_F_LOCK)}


def sockmap_key_out_of_range():
    a, b = tcp_pair()
    with bpf.created_map("sockmap", 4, 8, 2) as fd, closing_all(a, b):
        return {"key_2": outcome(bpf.map_update, fd, u32(2), u64(a.fileno())),
                "key_1": outcome(bpf.map_update, fd, u32(1), u64(a.fileno()))}


def sockhash_full():
    a, b = tcp_pair()
    with bpf.created_map("sockhash", 4, 8, 1) as fd, closing_all(a, b):
        obs = {"first": outcome(bpf.map_update, fd, u32(7), u64(a.fileno())),
               "new_key_when_full": outcome(bpf.map_update, fd, u32(8), u64(b.fileno())),
               "existing_key_when_full": outcome(bpf.map_update, fd, u32(7), u64(b.fileno()))}
        obs["existing_key_replaced"] = cookie_in_map(fd, u32(7)) == socket_cookie(b)
        return obs


def update_bad_values(map_type):
    """A value that is not a socket fd: -1, a closed fd number, a pipe."""
    with bpf.created_map(map_type, 4, 8, 4) as fd:
        r, w = os.pipe()
        # Freed after the map exists, so no fd opened in between can reuse the number.
        closed = os.dup(r)
        os.close(closed)
        try:
            return {"minus_one": outcome(bpf.map_update, fd, u32(0), u64(2**64 - 1)),
                    "closed_fd": outcome(bpf.map_update, fd, u32(0), u64(closed)),
                    "pipe": outcome(bpf.map_update, fd, u32(0), u64(r))}
        finally:
            os.close(r)
            os.close(w)


def same_socket_twice(map_type):
    """One socket under two keys of one map and in a second map, no programs attached."""
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 4) as fd1, bpf.created_map(map_type, 4, 8, 4) as fd2, \
            closing_all(a, b):
        return {"first_key": outcome(bpf.map_update, fd1, u32(0), u64(a.fileno())),
                "second_key": outcome(bpf.map_update, fd1, u32(1), u64(a.fileno())),
                "second_map": outcome(bpf.map_update, fd2, u32(0), u64(a.fileno()))}


def replaced_with_itself_then_closed(map_type):
    """Update a key with the socket it already holds, then close the socket (75e072a390da)."""
    a, b = tcp_pair()
    with bpf.created_map(map_type, 4, 8, 2) as fd, closing_all(a, b):
        first = outcome(bpf.map_update, fd, u32(0), u64(a.fileno()))
        again = outcome(bpf.map_update, fd, u32(0), u64(a.fileno()))
        a.close()
        return {"first_update": first, "same_socket_again": again,
                "lookup_after_close": lookup_within(fd, u32(0))}
