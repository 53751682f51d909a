"""Guest side of cases/test_iterate.py: BPF_MAP_GET_NEXT_KEY over sockmap and sockhash."""
from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import closing_all, tcp_pair


def _walk(fd, limit=16):
    keys, key = [], None
    while len(keys) < limit:
        try:
            key = bpf.map_get_next_key(fd, key, 4)
        except OSError as exc:
            return keys, bpf.errno_name(exc.errno)
        keys.append(int.from_bytes(key, "little"))
    return keys, "no end"


def sockmap_walk():
    """max_entries 4, only index 1 filled: every index is walked, then ENOENT."""
    a, b = tcp_pair()
    with bpf.created_map("sockmap", 4, 8, 4) as fd, closing_all(a, b):
        bpf.map_update(fd, bpf.u32(1), bpf.u64(a.fileno()))
        keys, end = _walk(fd)
        return {"keys": keys, "end": end,
                "next_after_last": outcome(bpf.map_get_next_key, fd, bpf.u32(3), 4)}


def sockhash_walk():
    a, b = tcp_pair()
    with bpf.created_map("sockhash", 4, 8, 4) as fd, closing_all(a, b):
        bpf.map_update(fd, bpf.u32(10), bpf.u64(a.fileno()))
        bpf.map_update(fd, bpf.u32(20), bpf.u64(b.fileno()))
        keys, end = _walk(fd)
        restart = int.from_bytes(bpf.map_get_next_key(fd, bpf.u32(99), 4), "little")
        return {"keys": sorted(keys), "end": end, "unknown_key_restarts": restart in (10, 20)}


COUNTS = ("with_key", "with_socket", "final")


def iterator_calls(obj, map_type):
    """An iter/sockmap program over a 4-slot map holding 2 sockets: how often it is called."""
    with bpf.BpfObject(obj) as o, bpf.created_map(map_type, 4, 8, 4) as fd, \
            bpf.created_map("array", 4, 8, 1) as array:
        prog = o.prog_fd("prog_iter_count")
        a, b = tcp_pair()
        with closing_all(a, b):
            bpf.map_update(fd, bpf.u32(1), bpf.u64(a.fileno()))
            bpf.map_update(fd, bpf.u32(2), bpf.u64(b.fileno()))
            try:
                bpf.iter_read(prog, fd)
            except bpf.BpfError as exc:
                return {"iterate": exc.errno_name}
            counts = o.map_fd("counts")
            obs = {name: int.from_bytes(bpf.map_lookup(counts, bpf.u32(i), 8), "little")
                   for i, name in enumerate(COUNTS)}
            obs["iterate"] = "OK"
            obs["map_fd_zero"] = outcome(bpf.link_create, prog, 0, "trace_iter", iter_map_fd=0)
            obs["array_map"] = outcome(bpf.link_create, prog, 0, "trace_iter", iter_map_fd=array)
            return obs
