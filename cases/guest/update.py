"""Guest side of cases/test_update.py: BPF_MAP_UPDATE_ELEM flags and limits from user space."""
import os

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome, socket_cookie
from harness.agent.sockets import closing_all, tcp_pair


def key(map_type, k):
    return bpf.u32(k)


def new_map(map_type, max_entries=4):
    return bpf.map_create(map_type, 4, 8, max_entries)


def update_flags(map_type):
    """NOEXIST on an occupied key, EXIST on an empty one, ANY/EXIST replacing."""
    fd = new_map(map_type)
    a, b = tcp_pair()
    c, d = tcp_pair()
    with closing_all(a, b, c, d):
        obs = {"noexist_empty": outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(a.fileno()),
                                        bpf.BPF_NOEXIST)}
        obs["noexist_occupied"] = outcome(bpf.map_update, fd, key(map_type, 0),
                                          bpf.u64(c.fileno()), bpf.BPF_NOEXIST)
        obs["exist_empty"] = outcome(bpf.map_update, fd, key(map_type, 1), bpf.u64(c.fileno()),
                                     bpf.BPF_EXIST)
        obs["exist_occupied"] = outcome(bpf.map_update, fd, key(map_type, 0),
                                        bpf.u64(c.fileno()), bpf.BPF_EXIST)
        cookie = int.from_bytes(bpf.map_lookup(fd, key(map_type, 0), 8), "little")
        obs["exist_replaced_socket"] = cookie == socket_cookie(c)
        obs["any_occupied"] = outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(a.fileno()),
                                      bpf.BPF_ANY)
        cookie = int.from_bytes(bpf.map_lookup(fd, key(map_type, 0), 8), "little")
        obs["any_replaced_socket"] = cookie == socket_cookie(a)
        os.close(fd)
        return obs


def update_bad_flags(map_type):
    fd = new_map(map_type)
    a, b = tcp_pair()
    with closing_all(a, b):
        obs = {"flags_3": outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(a.fileno()), 3),
               "f_lock": outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(a.fileno()),
                                 bpf.BPF_F_LOCK)}
        os.close(fd)
        return obs


def sockmap_key_out_of_range():
    fd = new_map("sockmap", max_entries=2)
    a, b = tcp_pair()
    with closing_all(a, b):
        obs = {"key_2": outcome(bpf.map_update, fd, bpf.u32(2), bpf.u64(a.fileno())),
               "key_1": outcome(bpf.map_update, fd, bpf.u32(1), bpf.u64(a.fileno()))}
        os.close(fd)
        return obs


def sockhash_full():
    fd = new_map("sockhash", max_entries=1)
    a, b = tcp_pair()
    with closing_all(a, b):
        obs = {"first": outcome(bpf.map_update, fd, bpf.u32(7), bpf.u64(a.fileno())),
               "new_key_when_full": outcome(bpf.map_update, fd, bpf.u32(8), bpf.u64(b.fileno())),
               "existing_key_when_full": outcome(bpf.map_update, fd, bpf.u32(7),
                                                 bpf.u64(b.fileno()))}
        cookie = int.from_bytes(bpf.map_lookup(fd, bpf.u32(7), 8), "little")
        obs["existing_key_replaced"] = cookie == socket_cookie(b)
        os.close(fd)
        return obs


def update_bad_values(map_type):
    """A value that is not a socket fd: -1, a closed fd number, a pipe."""
    fd = new_map(map_type)
    r, w = os.pipe()
    closed = os.dup(r)
    os.close(closed)
    obs = {"minus_one": outcome(bpf.map_update, fd, key(map_type, 0), (2**64 - 1).to_bytes(8, "little")),
           "closed_fd": outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(closed)),
           "pipe": outcome(bpf.map_update, fd, key(map_type, 0), bpf.u64(r))}
    for f in (r, w, fd):
        os.close(f)
    return obs


def same_socket_twice(map_type):
    """One socket under two keys of one map and in a second map, no programs attached."""
    fd1, fd2 = new_map(map_type), new_map(map_type)
    a, b = tcp_pair()
    with closing_all(a, b):
        obs = {"first_key": outcome(bpf.map_update, fd1, key(map_type, 0), bpf.u64(a.fileno())),
               "second_key": outcome(bpf.map_update, fd1, key(map_type, 1), bpf.u64(a.fileno())),
               "second_map": outcome(bpf.map_update, fd2, key(map_type, 0), bpf.u64(a.fileno()))}
        os.close(fd1)
        os.close(fd2)
        return obs
