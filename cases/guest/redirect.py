"""Guest side of cases/test_redirect.py: where redirected bytes arrive.

Two established TCP pairs, c0<->p0 and c1<->p1, with p0 at key 0 and p1 at key 1. The verdict
program redirects what p0 receives (sk_skb) or what p0 sends (sk_msg) to key 1: egress sends it
out of p1 (so c1 receives it), BPF_F_INGRESS queues it on p1 (so p1 receives it).
"""
import select
import struct

from harness.agent import libbpf as bpf
from harness.agent.sockets import closing_all, tcp_pair

MAPS = {"map": "sock_map", "hash": "sock_hash"}
PAYLOAD = b"kconform-redirect"


def _arrivals(socks, wait=1.0):
    got = {}
    ready, _, _ = select.select(list(socks.values()), [], [], wait)
    for name, s in socks.items():
        if s in ready:
            try:
                data = s.recv(4096)
            except OSError:
                continue
            if data:
                got[name] = data
    return got


def redirect(obj, kind, helper, flags):
    """kind: 'skb' (stream_verdict) or 'msg' (sk_msg); helper: 'map' or 'hash'."""
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd(MAPS[helper])
        if kind == "skb":
            bpf.prog_attach(o.prog_fd("prog_parser"), fd, "stream_parser")
            bpf.prog_attach(o.prog_fd("prog_skb_redirect"), fd, "stream_verdict")
        else:
            bpf.prog_attach(o.prog_fd("prog_msg_redirect"), fd, "msg_verdict")
        bpf.map_update(o.map_fd("cfg"), bpf.u32(0),
                       struct.pack("<III", 1, flags, 1 if helper == "hash" else 0))
        c0, p0 = tcp_pair()
        c1, p1 = tcp_pair()
        with closing_all(c0, p0, c1, p1):
            bpf.map_update(fd, bpf.u32(0), bpf.u64(p0.fileno()))
            bpf.map_update(fd, bpf.u32(1), bpf.u64(p1.fileno()))
            sender = c0 if kind == "skb" else p0
            sender.send(PAYLOAD)
            got = _arrivals({"c0": c0, "p0": p0, "c1": c1, "p1": p1})
            results = o.map_fd("results")
            ret = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(0), 8))[0]
            runs = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(1), 8))[0]
            return {"received_by": sorted(got), "intact": all(v == PAYLOAD for v in got.values()),
                    "helper_returned": {1: "SK_PASS", 0: "SK_DROP"}.get(ret, ret),
                    "program_ran": runs > 0}
