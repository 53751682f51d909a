"""Guest side of cases/test_redirect_matrix.py: one source kind, every target kind.

For each target kind a fresh source pair (source, source_peer) and target pair (target,
target_peer) are made; the source is at key 0 and the target at key 1 of the map, whose verdict
program redirects to key 1 with the direction's flags. The sk_skb program is a stream verdict
with no parser: every kernel since 5.10 takes that, and from 5.13 on it runs where an
skb_verdict program would (skmsg.c sk_psock_verdict_recv() takes either). sk_skb
runs on what the source receives, so source_peer sends; sk_msg runs on what the source sends.
Ingress queues the bytes on the target (the target reads them), egress sends them out of the
target (its peer reads them). What was observed is reported per target, so each combination is
its own case on the host.

No sleeps: the verdict program counts its runs in `results`. A combination is done at the first
arrival anywhere (a redirect is handed to the target's work queue, so it comes a little after
the verdict ran), or as soon as the program dropped the bytes; only bytes that never arrive
wait out the `settle` bound the host gives (scaled for emulation).
"""
import contextlib
import select
import socket
import struct
import time

from harness.agent import libbpf as bpf
from harness.agent.observe import errno_name, outcome
from harness.agent.sockets import closing_all, tcp_pair, udp_pair, unix_pair

MAPS = {"sockmap": "sock_map", "sockhash": "sock_hash"}
PROGRAMS = {"sk_skb": ("prog_skb_redirect", "stream_verdict"),
            "sk_msg": ("prog_msg_redirect", "msg_verdict")}
FLAGS = {"egress": 0, "ingress": 1}  # BPF_F_INGRESS
PAYLOAD = b"kconform-matrix"
OOB = b"!"
# results[0] before each send, until the program writes what the helper returned: an SK_DROP
# read from the slot is then the program's own (its initial 0, or the previous combination's
# drop, is not), whatever order another CPU sees the program's two writes in (as redirect.py)
NOT_YET = -1
VMADDR_CID_LOCAL = 1


def _vsock_pair(kind, wait):
    """A connected vsock pair over the loopback transport; its handshake runs in a work queue,
    so connect and accept wait, within `wait` seconds."""
    listener = socket.socket(socket.AF_VSOCK, kind)
    with contextlib.ExitStack() as undo:
        undo.callback(listener.close)
        listener.bind((VMADDR_CID_LOCAL, socket.VMADDR_PORT_ANY))
        listener.listen(1)
        client = socket.socket(socket.AF_VSOCK, kind)
        undo.push(lambda *exc: client.close() if exc[0] else None)  # kept only if all went well
        client.settimeout(wait)
        listener.settimeout(wait)
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        accepted.settimeout(None)
        client.settimeout(None)
        return client, accepted


PAIRS = {
    "tcp4": lambda wait: tcp_pair(socket.AF_INET),
    "tcp6": lambda wait: tcp_pair(socket.AF_INET6),
    "udp4": lambda wait: udp_pair(socket.AF_INET),
    "udp6": lambda wait: udp_pair(socket.AF_INET6),
    "unix_stream": lambda wait: unix_pair(socket.SOCK_STREAM),
    "unix_dgram": lambda wait: unix_pair(socket.SOCK_DGRAM),
    "vsock_stream": lambda wait: _vsock_pair(socket.SOCK_STREAM, wait),
    "vsock_seqpacket": lambda wait: _vsock_pair(socket.SOCK_SEQPACKET, wait),
}


def _runs(results_fd):
    return struct.unpack("<q", bpf.map_lookup(results_fd, bpf.u32(1), 8))[0]


def _helper_returned(results_fd):
    ret = struct.unpack("<q", bpf.map_lookup(results_fd, bpf.u32(0), 8))[0]
    return {1: "SK_PASS", 0: "SK_DROP"}.get(ret, ret)


def _arrivals(socks, wait):
    """{name: bytes} of what arrives within `wait` seconds, read without blocking."""
    got = {}
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select(list(socks.values()), [], [], max(left, 0))
        for name, sock in socks.items():
            if sock in ready and name not in got:
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                except OSError:
                    continue
                if data:
                    got[name] = data
        if got or left <= 0:
            return got


def _settle(watch, results_fd, before, settle):
    """(what arrived, whether the verdict ran): done at the first arrival (one send goes one
    place), or once the program dropped it, else after `settle` seconds."""
    got = {}
    deadline = time.monotonic() + settle
    while True:
        got = _arrivals(watch, 0.01)
        ran = _runs(results_fd) > before  # read after the arrivals: a verdict counts, then queues
        if got or (ran and _helper_returned(results_fd) == "SK_DROP"):
            return got, ran
        if time.monotonic() >= deadline:
            return got, ran


def _one(o, map_name, program, direction, source_kind, target_kind, oob, settle):
    connect_wait = settle * 8  # a handshake is several work-queue round trips
    fd = o.map_fd(MAPS[map_name])
    results = o.map_fd("results")
    obs = {}
    with contextlib.ExitStack() as stack:
        try:
            source, source_peer = PAIRS[source_kind](connect_wait)
            stack.enter_context(closing_all(source, source_peer))
            target, target_peer = PAIRS[target_kind](connect_wait)
            stack.enter_context(closing_all(target, target_peer))
        except TimeoutError:
            return {"sockets": "timed out"}  # not a kind the kernel lacks: the case fails
        except OSError as exc:
            return {"sockets": errno_name(exc.errno or 0)}
        obs["target_insert"] = outcome(bpf.map_update, fd, bpf.u32(1),
                                       bpf.u64(target.fileno()))
        obs["source_insert"] = outcome(bpf.map_update, fd, bpf.u32(0),
                                       bpf.u64(source.fileno()))
        if obs["target_insert"] != "OK" or obs["source_insert"] != "OK":
            return obs
        sender = source if program == "sk_msg" else source_peer
        before = _runs(results)
        bpf.map_update(results, bpf.u32(0), struct.pack("<q", NOT_YET))
        obs["send"] = outcome(sender.send, PAYLOAD)
        if oob:
            obs["send_oob"] = outcome(sender.send, OOB, socket.MSG_OOB)
        got, ran = _settle({"target": target, "target_peer": target_peer, "source": source,
                            "source_peer": source_peer}, results, before, settle)
        obs["verdict_ran"] = ran
        obs["helper_returned"] = _helper_returned(results) if ran else None
        obs["received_by"] = sorted(got)
        # exactly what was sent in band: an OOB byte that came along in band is not intact
        obs["intact"] = all(v == PAYLOAD for v in got.values())
        if oob:
            obs["oob"] = _oob_fate({"target": target, "target_peer": target_peer,
                                    "source": source, "source_peer": source_peer})
        return obs


def _oob_fate(watch):
    """Which socket holds the out-of-band byte (read with MSG_OOB), if any. Looked at once, with
    no wait: an AF_UNIX sender hands its OOB skb to the receiver inside send() (queue_oob()), and
    an sk_skb verdict reads it there too (unix_stream_read_skb() frees it), so by now it is
    wherever it will be."""
    for name, sock in watch.items():
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            continue
        # urgent data is an exceptional condition; recv itself would first wait out the timeout
        if not select.select([], [], [sock], 0)[2]:
            continue
        with contextlib.suppress(OSError):
            if sock.recv(1, socket.MSG_OOB | socket.MSG_DONTWAIT) == OOB:
                return name
    return None


def redirect_matrix(obj, map_name, program, direction, source, targets, oob, settle):
    """{target kind: observation} for one source kind (oob: it also sends MSG_OOB)."""
    name, attach_type = PROGRAMS[program]
    out = {}
    # only the row's program: the verifier's work for the object's seven others was half the
    # load (6.6 against 13.1 ms in an arm64 guest), 72 loads per kernel
    with bpf.BpfObject(obj, only=[name]) as o:
        fd = o.map_fd(MAPS[map_name])
        attached = outcome(bpf.prog_attach, o.prog_fd(name), fd, attach_type)
        if attached != "OK":
            return {target: {"attach": attached} for target in targets}
        # the program's configuration, the same for the row: redirect to key 1 of this map type
        # with the direction's flags (the program reads it each run; nothing writes it back)
        bpf.map_update(o.map_fd("cfg"), bpf.u32(0),
                       struct.pack("<III", 1, FLAGS[direction], 1 if map_name == "sockhash" else 0))
        for target in targets:
            out[target] = _one(o, map_name, program, direction, source, target, oob, settle)
            # each combination starts with an empty map: the next pairs reuse keys 0 and 1
            for key in (0, 1):
                with contextlib.suppress(OSError):
                    bpf.map_delete(fd, bpf.u32(key))
    return out
