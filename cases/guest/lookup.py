"""Guest side of cases/test_lookup.py: what user space gets back from a sockmap lookup."""
from harness.agent import libbpf as bpf
from harness.agent.observe import outcome, socket_cookie, value_cookie
from harness.agent.sockets import closing_all, tcp_pair


def lookup_inserted_tcp_socket(map_type, value_size):
    """Insert an established TCP socket at key 0, look it up; compare with SO_COOKIE."""
    key_size = 4
    cli, srv = tcp_pair()
    with bpf.created_map(map_type, key_size, value_size, 2) as fd, closing_all(cli, srv):
        value = bpf.u64(cli.fileno()) if value_size == 8 else bpf.u32(cli.fileno())
        update = outcome(bpf.map_update, fd, bpf.u32(0), value)
        got = []
        lookup = outcome(lambda: got.append(bpf.map_lookup(fd, bpf.u32(0), value_size)))
        observed = {"update": update, "lookup": lookup}
        if got:
            observed["value_is_so_cookie"] = value_cookie(got[0]) == socket_cookie(cli)
        return observed


def lookup_missing(map_type):
    """An empty slot, a key never inserted, and (sockmap) an index past max_entries."""
    with bpf.created_map(map_type, 4, 8, 2) as fd:
        return {"empty_or_missing": outcome(bpf.map_lookup, fd, bpf.u32(0), 8),
                "past_max_entries": outcome(bpf.map_lookup, fd, bpf.u32(7), 8)}
