"""Guest side of cases/test_msg_helpers.py: what the sk_msg helpers do to real sendmsg() data.

One established TCP pair c<->p; p sits in a sockmap whose SK_MSG verdict program calls the helper
chosen in `msg_cfg` on what p sends. The program records one `msg_run` per run; c reads what
arrives after each send.

What arrives after a send is fixed when the send returns and p's TCP has every byte it took
acknowledged (settle.read_all_sent), not after a quiet moment: the verdict runs inside sendmsg
(tcp_bpf_sendmsg() -> tcp_bpf_send_verdict(), and tcp_bpf_sendpage() for sendfile() before 6.5;
5.10, 6.1, 6.12 and 7.3 tcp_bpf.c), and the program always returns SK_PASS, so by then the bytes
it passed are in p's TCP (tcp_bpf_push()) and the bytes a cork holds are in psock->cork, which
only a later sendmsg or sendpage hands on (no timer flushes it in any of those kernels).
"""
import os
import struct
import tempfile

from harness.agent import libbpf as bpf
from harness.agent.settle import read_all_sent
from harness.agent.sockets import closing_all, tcp_pair

OPS = {"none": 0, "apply": 1, "cork": 2, "pull": 3, "push": 4, "pop": 5}
MAX_RUNS = 16
RUN = struct.Struct("<qIIII")


def payload(size):
    return bytes(ord("a") + i % 26 for i in range(size))


def _ret(value):
    return "OK" if value == 0 else (bpf.errno_name(-value) if value < 0 else value)


def run_helper(obj, op, a=0, b=0, flags=0, first_run_only=True, sends=(100,), sendfile=False,
               wait=0.3):
    """Send `sends` (sizes) from p; report each program run and what c received after each
    (wait: the bound on p's bytes being acknowledged, after which c reads until quiet that
    long)."""
    with bpf.BpfObject(obj) as o:
        sock_map = o.map_fd("sock_map")
        bpf.prog_attach(o.prog_fd("prog_msg_helper"), sock_map, "msg_verdict")
        bpf.map_update(o.map_fd("msg_cfg"), bpf.u32(0),
                       struct.pack("<IIIII", OPS[op], a, b, flags, 1 if first_run_only else 0))
        c, p = tcp_pair()
        with closing_all(c, p):
            bpf.map_update(sock_map, bpf.u32(0), bpf.u64(p.fileno()))
            received, sent = [], b""
            for size in sends:
                data = payload(size)
                send_result = _send(p, data, sendfile)
                sent += data
                received.append((send_result, read_all_sent(p, c, wait)))
            count = struct.unpack("<I", bpf.map_lookup(o.map_fd("run_count"), bpf.u32(0), 4))[0]
            runs = []
            for i in range(min(count, MAX_RUNS)):
                ret, size, before, after, _ = RUN.unpack(
                    bpf.map_lookup(o.map_fd("runs"), bpf.u32(i), RUN.size))
                runs.append({"helper_returned": _ret(ret), "size": size,
                             "seen_before": before, "seen_after": after})
            got = b"".join(r for _, r in received)
            extra = {}
            if op == "pop":
                extra["received_is_sent_without_popped"] = got == sent[:a] + sent[a + b:]
            return {**extra, "program_runs": count, "runs": runs,
                    "send_results": [s for s, _ in received],
                    "received_after_each_send": [len(r) for _, r in received],
                    "received": len(got), "sent": len(sent), "received_is_sent": got == sent,
                    "received_bytes": got.decode("ascii", "replace")[:256]}


def _send(sock, data, sendfile):
    try:
        if not sendfile:
            return sock.send(data)
        with tempfile.TemporaryFile() as f:
            f.write(data)
            f.flush()
            return os.sendfile(sock.fileno(), f.fileno(), 0, len(data))
    except OSError as exc:
        return bpf.errno_name(exc.errno)
