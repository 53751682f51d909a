"""Guest side of cases/test_stream_parser.py: a parser that splits one send into messages, and
one that joins two sends into one message.

The socket (the accepted end of a loopback TCP pair) is in stream_parser.bpf.c's sock_map at key
0 with its parser and verdict; the peer sends. The parser returns the message length user space
sets; the verdict redirects each message into the target (another TCP socket, at key 1) with
BPF_F_INGRESS, and both record every call and the skb->len they saw. The target reads.
Bounded waits on events, not sleeps: the second send of a join waits until the parser has seen
the first (so they are two skbs, not one); reading waits until every byte sent is read (or a
bound passes), and after a split until the target is quiet for `quiet` seconds. That one is
silence as the observation: a kernel that delivers a message twice queues the copies through the
target's backlog work (sk_psock_skb_redirect() -> sk_psock_backlog()), where nothing user space
can see says whether another is still to come.
"""
import select
import socket
import struct
import time

from harness.agent import libbpf as bpf
from harness.agent.observe import wait_until
from harness.agent.sockets import closing_all, tcp_pair

MAX_CALLS = 8  # as in stream_parser.bpf.c
SPLIT = b"abcdEFGHijkl"  # one send, three messages of 4 bytes
JOIN = (b"abcd", b"EFGHijkl")  # two sends, one message of 12 bytes


def _calls(o, who):
    """(count, [skb->len of each call]) that the parser (who 0) or the verdict (1) recorded."""
    raw = bpf.map_lookup(o.map_fd("seen"), bpf.u32(who), 4 + 4 * MAX_CALLS)
    count, *lens = struct.unpack(f"<I{MAX_CALLS}I", raw)
    return count, lens[:min(count, MAX_CALLS)]


def _read_all(sock, size, wait, quiet):
    """What `sock` reads until `size` bytes came or `wait` passed, then until it is quiet for
    `quiet` seconds. The socket is made non-blocking: a Python socket with a timeout waits for
    readiness before it calls recv() at all."""
    got, deadline = b"", time.monotonic() + wait
    sock.setblocking(False)
    while True:
        # the bytes sent first, within the bound; then whatever comes before a quiet moment (a
        # kernel that delivers a message twice queues the copies through the backlog work)
        left = deadline - time.monotonic() if len(got) < size else quiet
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return got
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            continue
        if not data:
            return got
        got += data


def parsed(obj, mode, settle, quiet):
    """mode "split": the parser says 4 bytes and one send carries 12; mode "join": the parser
    says 12 and two sends carry 4 and 8. settle: the bound on the parser's first call and on the
    bytes sent arriving; quiet: how long a split's target must be quiet after them."""
    sends = (SPLIT,) if mode == "split" else JOIN
    length = 4 if mode == "split" else sum(map(len, JOIN))
    sent = b"".join(sends)
    with bpf.BpfObject(obj) as o:
        fd = o.map_fd("sock_map")
        bpf.map_update(o.map_fd("parser_cfg"), bpf.u32(0), bpf.u32(length))
        bpf.prog_attach(o.prog_fd("prog_parser"), fd, "stream_parser")
        bpf.prog_attach(o.prog_fd("prog_verdict"), fd, "stream_verdict")
        peer, sock = tcp_pair()
        target_peer, target = tcp_pair()
        with closing_all(peer, sock, target_peer, target):
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bpf.map_update(fd, bpf.u32(1), bpf.u64(target.fileno()))  # before the source
            bpf.map_update(fd, bpf.u32(0), bpf.u64(sock.fileno()))
            obs = {}
            for i, chunk in enumerate(sends):
                peer.send(chunk)
                if i < len(sends) - 1:
                    obs["parser_saw_the_first_send"] = wait_until(
                        lambda: _calls(o, 0)[0] > 0, settle, interval=0.005)
            # only a split makes several messages, which a kernel could deliver more than once
            got = _read_all(target, len(sent), settle, quiet if mode == "split" else 0)
            runs, lens = _calls(o, 1)
            obs.update({"verdict_runs": runs, "verdict_skb_len": lens,
                        "received": "as sent" if got == sent else f"{len(got)} bytes: {got!r}"})
            return obs
