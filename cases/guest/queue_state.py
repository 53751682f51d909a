"""Guest side of cases/test_queue_state.py: what FIONREAD and MSG_PEEK see of bytes a verdict
queued on a socket's psock.

A socket in a map with a verdict program gets its bytes through the verdict, which puts them on
the socket's psock queue (ingress_msg), not on its receive queue. Each function makes one such
socket (the reader), gets PAYLOAD queued on it one way, waits (bounded) until the reader is
readable, then reads in this order: FIONREAD, recv(MSG_PEEK), recv, FIONREAD again. Reads
never block: a read that finds nothing says EAGAIN.
"""
import contextlib
import fcntl
import select
import socket
import struct
import termios

from harness.agent import libbpf as bpf
from harness.agent.observe import errno_name, outcome
from harness.agent.sockets import closing_all, tcp_pair, udp_pair, unix_pair

PAYLOAD = b"kconform-queued!"  # 16 bytes: FIONREAD should say 16
# Slots of `runs` in counted_verdicts.bpf.c, per program.
RUNS = {"prog_skb_pass": 0, "prog_skb_redirect_ingress": 1, "prog_msg_redirect_ingress": 2}
PAIRS = {"tcp": tcp_pair, "udp": udp_pair, "unix_stream": unix_pair}


def _fionread(sock):
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError as exc:
        return errno_name(exc.errno or 0)
    return struct.unpack("i", raw)[0]


def _read(sock, flags=0):
    """What one read of a non-blocking socket returns: "payload", "EOF", an errno name, or the
    length of anything else."""
    try:
        data = sock.recv(4096, flags)
    except OSError as exc:
        return errno_name(exc.errno or 0)
    if data == PAYLOAD:
        return "payload"
    return "EOF" if not data else f"{len(data)} other bytes"


def _runs(o, program):
    return struct.unpack("<Q", bpf.map_lookup(o.map_fd("runs"), bpf.u32(RUNS[program]), 8))[0]


def _read_queue(reader, settle):
    # Non-blocking, not just MSG_DONTWAIT: a Python socket with a timeout waits for readiness
    # before it calls recv() at all.
    reader.setblocking(False)
    obs = {"readable": bool(select.select([reader], [], [], settle)[0])}
    obs["fionread"] = _fionread(reader)
    obs["peek"] = _read(reader, socket.MSG_PEEK)
    obs["recv_after_peek"] = _read(reader)
    obs["fionread_after_recv"] = _fionread(reader)
    return obs


def _attached(o, map_name, program, attach_type):
    fd = o.map_fd(map_name)
    bpf.prog_attach(o.prog_fd(program), fd, attach_type)
    return fd


def passed_to_itself(obj, kind, settle):
    """The reader is in a map whose stream verdict passes (SK_PASS) what it receives; its peer
    sends. kind: tcp, udp or unix_stream."""
    with bpf.BpfObject(obj) as o:
        fd = _attached(o, "pass_map", "prog_skb_pass", "stream_verdict")
        reader, peer = PAIRS[kind]()
        with closing_all(reader, peer):
            obs = {"insert": outcome(bpf.map_update, fd, bpf.u32(0), bpf.u64(reader.fileno()))}
            if obs["insert"] != "OK":
                return obs
            peer.send(PAYLOAD)
            obs.update(_read_queue(reader, settle))
            obs["verdict_ran"] = _runs(o, "prog_skb_pass") > 0
            return obs


def redirected_into(obj, program, settle):
    """The reader (TCP, key 1) gets PAYLOAD by a BPF_F_INGRESS redirect from a socket at key 0:
    program "skb" redirects what that socket receives, "msg" what it sends."""
    name, attach_type, map_name = {
        "skb": ("prog_skb_redirect_ingress", "stream_verdict", "skb_redirect_map"),
        "msg": ("prog_msg_redirect_ingress", "msg_verdict", "msg_redirect_map")}[program]
    with bpf.BpfObject(obj) as o, contextlib.ExitStack() as stack:
        fd = _attached(o, map_name, name, attach_type)
        source, source_peer = tcp_pair()
        reader, reader_peer = tcp_pair()
        stack.enter_context(closing_all(source, source_peer, reader, reader_peer))
        bpf.map_update(fd, bpf.u32(1), bpf.u64(reader.fileno()))
        bpf.map_update(fd, bpf.u32(0), bpf.u64(source.fileno()))
        (source if program == "msg" else source_peer).send(PAYLOAD)
        obs = _read_queue(reader, settle)
        obs["verdict_ran"] = _runs(o, name) > 0
        return obs


def in_a_map_without_verdict(settle):
    """The reader (TCP) is in a map with no programs: its bytes stay on its receive queue."""
    reader, peer = tcp_pair()
    with bpf.created_map("sockmap", 4, 8, 1) as fd, closing_all(reader, peer):
        bpf.map_update(fd, bpf.u32(0), bpf.u64(reader.fileno()))
        peer.send(PAYLOAD)
        return _read_queue(reader, settle)
