"""Guest side of cases/test_shutdown.py: shutdown() on a TCP socket that has an skb verdict.

The socket (the accepted end of a loopback pair) is at key 0 of counted_verdicts' pass_map,
whose stream verdict passes (SK_PASS, counted in `runs`) what it receives; its peer is the
client end. Every wait is on an event (readable, end of stream) with the host's bound, and
reads never block.
"""
import select
import socket
import struct
import time

from harness.agent import libbpf as bpf
from harness.agent.observe import errno_name, holds_socket, lookup_within, outcome
from harness.agent.sockets import closing_all, tcp_pair

PAYLOAD = b"kconform-shutdown"
REPLY = b"kconform-reply"
HOW = {"shut_rd": socket.SHUT_RD, "shut_wr": socket.SHUT_WR, "shut_rdwr": socket.SHUT_RDWR}
SKB_PASS_RUNS = 0  # slot of prog_skb_pass in counted_verdicts' `runs`


def _read(sock, wait=None):
    """What one read returns: "payload", "reply", "EOF", an errno name, or the length of other
    bytes; with `wait`, once `sock` is readable within that many seconds ("nothing" if not).
    The socket is made non-blocking: a Python socket with a timeout waits for readiness before
    it calls recv() at all, MSG_DONTWAIT or not."""
    sock.setblocking(False)
    if wait is not None and not select.select([sock], [], [], wait)[0]:
        return "nothing"
    try:
        data = sock.recv(4096)
    except OSError as exc:
        return errno_name(exc.errno or 0)
    names = {PAYLOAD: "payload", REPLY: "reply", b"": "EOF"}
    return names.get(data, f"{len(data)} other bytes")


def _verdict_runs(o):
    raw = bpf.map_lookup(o.map_fd("runs"), bpf.u32(SKB_PASS_RUNS), 8)
    return struct.unpack("<Q", raw)[0]


def _in_map(o, sock):
    return holds_socket(o.map_fd("pass_map"), bpf.u32(0), sock)


def _closed_leaves_map(o, sock, wait):
    """Close `sock`: the lookup result once its entry is gone (the release may be deferred to
    a work item), or "OK" if it is still there after `wait` seconds."""
    sock.close()
    return lookup_within(o.map_fd("pass_map"), bpf.u32(0), wait)


def shut_itself(obj, how, settle):
    """The socket shuts down `how` (shut_rd, shut_wr, shut_rdwr), then reads, sends, and is
    looked up; with shut_wr its peer also sends to it through the verdict."""
    with bpf.BpfObject(obj) as o:
        bpf.prog_attach(o.prog_fd("prog_skb_pass"), o.map_fd("pass_map"), "stream_verdict")
        peer, sock = tcp_pair()
        with closing_all(peer, sock):
            bpf.map_update(o.map_fd("pass_map"), bpf.u32(0), bpf.u64(sock.fileno()))
            sock.shutdown(HOW[how])
            obs = {"own_recv": _read(sock), "own_send": outcome(sock.send, REPLY)}
            obs["peer_reads"] = _read(peer, settle)
            obs["in_map"] = _in_map(o, sock)
            if how == "shut_wr":
                before = _verdict_runs(o)
                peer.send(PAYLOAD)
                obs["peer_bytes_read"] = _read(sock, settle)
                obs["peer_bytes_passed_the_verdict"] = _verdict_runs(o) > before
            obs["left_map_on_close"] = _closed_leaves_map(o, sock, settle)
            return obs


def _until_eof(sock, wait):
    """Everything read until end of stream: (bytes, "EOF") or (bytes, why it stopped first)."""
    got, deadline = b"", time.monotonic() + wait
    sock.setblocking(False)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return got, "no end of stream"
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue  # readable without data: keep waiting for the end, within the bound
        except OSError as exc:
            return got, errno_name(exc.errno or 0)
        if not data:
            return got, "EOF"
        got += data


def peer_shut_wr(obj, settle):
    """The peer sends PAYLOAD and shuts down writing (its FIN follows the bytes): the socket
    reads the bytes, then end of stream; it stays in the map and can still answer."""
    with bpf.BpfObject(obj) as o:
        bpf.prog_attach(o.prog_fd("prog_skb_pass"), o.map_fd("pass_map"), "stream_verdict")
        peer, sock = tcp_pair()
        with closing_all(peer, sock):
            bpf.map_update(o.map_fd("pass_map"), bpf.u32(0), bpf.u64(sock.fileno()))
            peer.send(PAYLOAD)
            peer.shutdown(socket.SHUT_WR)
            got, end = _until_eof(sock, settle)
            obs = {"bytes_before_end": "payload" if got == PAYLOAD else f"{len(got)} bytes",
                   "end": end, "verdict_ran": _verdict_runs(o) > 0, "in_map": _in_map(o, sock),
                   "reply": outcome(sock.send, REPLY)}
            obs["peer_reads_reply"] = _read(peer, settle)
            obs["left_map_on_close"] = _closed_leaves_map(o, sock, settle)
            return obs
