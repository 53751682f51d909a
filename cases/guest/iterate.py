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
