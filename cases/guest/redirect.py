"""Guest side of cases/test_redirect.py: where redirected bytes arrive.

The source is an established TCP pair c0<->p0 with p0 at key 0. The target at key 1 is a socket
of the kind under test ("target"), usually with a connected peer ("target_peer"). The verdict
program redirects what p0 receives (sk_skb) or what p0 sends (sk_msg) to key 1: egress sends it
out of the target (so its peer receives it), BPF_F_INGRESS queues it on the target itself.

The wait for the bytes ends at the first arrival anywhere, or as soon as the verdict program has
recorded an SK_DROP (`results`): then nothing can arrive. An sk_skb verdict's SK_DROP frees the
skb in sk_psock_verdict_apply() (its __SK_DROP case, through sk_psock_map_verd(); 5.10, 6.1,
6.12 and 7.3 skmsg.c), and an sk_msg verdict runs inside sendmsg, whose SK_DROP frees the data
and fails the send with EACCES (tcp_bpf_send_verdict(), the same kernels' tcp_bpf.c). One send
is one run of the program here: p0 receives one skb and the parser makes it one message, or p0
sends once. Only bytes that go nowhere without a drop wait out the `settle` bound.
"""
import contextlib
import struct

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.settle import first_arrivals
from harness.agent.sockets import closing_all, tcp_listener, tcp_pair, udp_pair, unix_pair

MAPS = {"map": "sock_map", "hash": "sock_hash"}
PAYLOAD = b"kconform-redirect"
MISSING_KEY = 3
SK_DROP, SK_PASS = 0, 1
NOT_YET = -1  # results[0] before the send, until the program writes what the helper returned


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


def _results(o):
    """(what the helper last returned or NOT_YET, how many times the program ran)."""
    results = o.map_fd("results")
    ret = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(0), 8))[0]
    runs = struct.unpack("<q", bpf.map_lookup(results, bpf.u32(1), 8))[0]
    return ret, runs


def _dropped(o):
    """Whether the program's one run recorded SK_DROP. Its own write, not the slot's initial 0:
    the slot holds NOT_YET until then, so the answer does not rest on the order in which another
    CPU sees the program's two writes."""
    return _results(o) == (SK_DROP, 1)


def redirect(obj, kind, helper, flags, target="tcp", settle=1.0):
    """kind: 'skb' (parser + stream_verdict), 'skb_verdict' (skb_verdict, no parser) or 'msg'
    (sk_msg); helper: 'map' or 'hash'; settle: how long to wait for bytes that are neither
    received nor dropped."""
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
        bpf.map_update(o.map_fd("results"), bpf.u32(0), struct.pack("<q", NOT_YET))
        obs["send"] = outcome(sender.send, PAYLOAD)
        watch = {"c0": c0, "p0": p0}
        if dest is not None and target != "listener":
            watch["target"] = dest
        if peer is not None:
            watch["target_peer"] = peer
        got = first_arrivals(watch, settle, nothing_will_come=lambda: _dropped(o))
        ret, runs = _results(o)
        ret = SK_DROP if ret == NOT_YET else ret  # a program that never ran reads as it always has
        obs.update({"received_by": sorted(got), "intact": all(v == PAYLOAD for v in got.values()),
                    "helper_returned": {SK_PASS: "SK_PASS", SK_DROP: "SK_DROP"}.get(ret, ret),
                    "program_ran": runs > 0})
        return obs
