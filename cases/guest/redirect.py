"""Guest side of cases/test_redirect.py: where redirected bytes arrive.

The source is an established TCP pair c0<->p0 with p0 at key 0. The target at key 1 is a socket
of the kind under test ("target"), usually with a connected peer ("target_peer"). The verdict
program redirects what p0 receives (sk_skb) or what p0 sends (sk_msg) to key 1: egress sends it
out of the target (so its peer receives it), BPF_F_INGRESS queues it on the target itself.
"""
import contextlib
import struct

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import arrivals, closing_all, tcp_listener, tcp_pair, udp_pair, unix_pair

MAPS = {"map": "sock_map", "hash": "sock_hash"}
PAYLOAD = b"kconform-redirect"
MISSING_KEY = 3


def _target(kind):
    """(socket to put at key 1 or None, its peer or None, sockets to close)."""
    if kind == "tcp":
        peer, target = tcp_pair()
        return target, peer, [peer, target]
    if kind == "listener":
        listener = tcp_listener()
        return listener, None, [listener]
    if kind == "udp":
        target, peer = udp_pair()
        return target, peer, [target, peer]
    if kind == "unix_stream":
        target, peer = unix_pair()
        return target, peer, [target, peer]
    if kind == "missing":
        return None, None, []
    raise ValueError(f"unknown redirect target {kind!r}")


def redirect(obj, kind, helper, flags, target="tcp"):
    """kind: 'skb' (parser + stream_verdict), 'skb_verdict' (skb_verdict, no parser) or 'msg'
    (sk_msg); helper: 'map' or 'hash'."""
    with bpf.BpfObject(obj) as o, contextlib.ExitStack() as stack:
        fd = o.map_fd(MAPS[helper])
        if kind == "skb":
            bpf.prog_attach(o.prog_fd("prog_parser"), fd, "stream_parser")
            bpf.prog_attach(o.prog_fd("prog_skb_redirect"), fd, "stream_verdict")
        elif kind == "skb_verdict":
            attached = outcome(bpf.prog_attach, o.prog_fd("prog_skb_verdict_redirect"), fd,
                               "skb_verdict")
            if attached != "OK":
                return {"attach": attached}
        else:
            bpf.prog_attach(o.prog_fd("prog_msg_redirect"), fd, "msg_verdict")
        key = MISSING_KEY if target == "missing" else 1
        bpf.map_update(o.map_fd("cfg"), bpf.u32(0),
                       struct.pack("<III", key, flags, 1 if helper == "hash" else 0))
        c0, p0 = tcp_pair()
        dest, peer, owned = _target(target)
        stack.enter_context(closing_all(c0, p0, *owned))
        obs = {}
        if dest is not None:
            # Insert the target first: the source's programs must not see it half set up.
            obs["target_insert"] = outcome(bpf.map_update, fd, bpf.u32(1), bpf.u64(dest.fileno()))
            if obs["target_insert"] != "OK":
                return obs
        bpf.map_update(fd, bpf.u32(0), bpf.u64(p0.fileno()))
        sender = p0 if kind == "msg" else c0
        obs["send"] = outcome(sender.send, PAYLOAD)
        watch = {"c0": c0, "p0": p0}
        if dest is not None and target != "listener":
            watch["target"] = dest
        if peer is not None:
            watch["target_peer"] = peer
        got = arrivals(watch)
        results = o.map_fd("results")
        ret = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(0), 8))[0]
        runs = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(1), 8))[0]
        obs.update({"received_by": sorted(got), "intact": all(v == PAYLOAD for v in got.values()),
                    "helper_returned": {1: "SK_PASS", 0: "SK_DROP"}.get(ret, ret),
                    "program_ran": runs > 0})
        return obs
