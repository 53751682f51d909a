"""Guest side of cases/test_map_scale.py: a map of many sockets, and one socket in many maps.

Counts, not lists, are reported: a case of a thousand entries says how many of them behaved,
so a mismatch reads "511 of 512" rather than a diff of hundreds of items.
"""
import contextlib
import resource
import socket

from harness.agent import libbpf as bpf
from harness.agent.observe import (
    cookie_in_map,
    holds_socket,
    outcome,
    socket_cookie,
    wait_until,
)
from harness.agent.sockets import closing_all, tcp_pair

ENTRIES = 512
MAPS = 64
# Sockhash keys spread over the key space rather than 0..n-1: a hash of small integers.
HASH_KEY_STRIDE = 2654435761


def _key(map_type, i):
    return bpf.u32(i if map_type == "sockmap" else (i * HASH_KEY_STRIDE) & 0xFFFFFFFF)


@contextlib.contextmanager
def _open_files_for(count):
    """Room for `count` more descriptors than the agent has now (a guest's soft limit is often
    1024), restored afterwards: the agent lives on to the next case."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _bound_udp_sockets(n):
    """Bound UDP sockets: a map takes them (hashed), and they cost one syscall pair each,
    where a TCP socket would need a connection."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _present(fd, keys):
    return sum(outcome(bpf.map_lookup, fd, key, 8) == "OK" for key in keys)


def _walk(fd, limit):
    """(keys seen, what ended the walk) of BPF_MAP_GET_NEXT_KEY from the start."""
    seen, key = [], None
    while len(seen) <= limit:
        try:
            key = bpf.map_get_next_key(fd, key, 4)
        except OSError as exc:
            return seen, bpf.errno_name(exc.errno or 0)
        seen.append(key)
    return seen, "no end"


def many_entries(map_type, settle):
    """ENTRIES sockets in one map of that size: insert, look up, walk, delete half, close all."""
    with _open_files_for(ENTRIES), bpf.created_map(map_type, 4, 8, ENTRIES) as fd:
        socks = _bound_udp_sockets(ENTRIES)
        with closing_all(socks):
            keys = [_key(map_type, i) for i in range(ENTRIES)]
            pairs = list(zip(keys, socks, strict=True))
            inserted = sum(outcome(bpf.map_update, fd, key, bpf.u64(s.fileno()),
                                   bpf.BPF_NOEXIST) == "OK" for key, s in pairs)
            obs = {"inserted": inserted, "lookups_with_the_socket_cookie": sum(
                holds_socket(fd, key, s) is True for key, s in pairs)}  # one lookup each
            walked, end = _walk(fd, ENTRIES)
            obs["walk_visits_every_key_once"] = sorted(walked) == sorted(keys)
            obs["walk_end"] = end
            obs["deleted"] = sum(outcome(bpf.map_delete, fd, key) == "OK"
                                 for key in keys[::2])
            obs["present_after_deleting_half"] = _present(fd, keys)
            for s in socks:
                s.close()
            # the close release may be deferred: bounded, and the count is the last look's
            # (each look is ENTRIES lookups: one more after the wait would double the cost)
            present = ENTRIES

            def emptied():
                nonlocal present
                present = _present(fd, keys)
                return present == 0
            wait_until(emptied, settle)
            obs["present_after_closing_all"] = present
            return obs


def one_socket_in_many_maps(obj, map_type, settle):
    """One TCP socket in MAPS maps: the first has a msg verdict (the socket inherits it), the
    others none; then a map with another msg verdict, one with the same msg verdict again, and
    one with a stream verdict; then the socket is closed."""
    with bpf.BpfObject(obj) as o, contextlib.ExitStack() as stack:
        peer, sock = tcp_pair()
        stack.enter_context(closing_all(peer, sock))

        def new_map(program=None, attach_type=None):
            fd = stack.enter_context(bpf.created_map(map_type, 4, 8, 1))
            if program:
                bpf.prog_attach(o.prog_fd(program), fd, attach_type)
            return fd

        def insert(fd):
            return outcome(bpf.map_update, fd, bpf.u32(0), bpf.u64(sock.fileno()))

        first = new_map("prog_msg_pass", "msg_verdict")
        plain = [new_map() for _ in range(MAPS - 1)]
        obs = {"first_map_with_a_msg_verdict": insert(first),
               "maps_without_programs_taking_it": sum(insert(fd) == "OK" for fd in plain),
               "another_msg_verdict": insert(new_map("prog_msg_pass_other", "msg_verdict")),
               "the_same_msg_verdict_again": insert(new_map("prog_msg_pass", "msg_verdict"))}
        skb = new_map("prog_skb_pass", "stream_verdict")
        obs["a_stream_verdict"] = insert(skb)
        member_of = [first, *plain, skb]
        cookie = socket_cookie(sock)
        obs["maps_holding_it"] = sum(outcome(bpf.map_lookup, fd, bpf.u32(0), 8) == "OK"
                                     and cookie_in_map(fd, bpf.u32(0)) == cookie
                                     for fd in member_of)
        sock.close()
        wait_until(lambda: not _present_in(member_of), settle)  # a deferred close release
        obs["maps_holding_it_after_close"] = _present_in(member_of)
        return obs


def _present_in(fds):
    return sum(outcome(bpf.map_lookup, fd, bpf.u32(0), 8) == "OK" for fd in fds)
