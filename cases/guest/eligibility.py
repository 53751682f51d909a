"""Guest side of cases/test_eligibility.py: which sockets a map accepts, by family and state."""
import os
import socket
import subprocess

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.sockets import (
    FAMILIES,
    closing_all,
    loopback,
    tcp_listener,
    tcp_pair,
    udp_pair,
    unix_pair,
)


def _insert(map_type, sock):
    with bpf.created_map(map_type, 4, 8, 4) as fd:
        return outcome(bpf.map_update, fd, bpf.u32(0), bpf.u64(sock.fileno()))


def tcp_states(map_type, family):
    fam = FAMILIES[family]
    new = socket.socket(fam, socket.SOCK_STREAM)
    bound = socket.socket(fam, socket.SOCK_STREAM)
    bound.bind((loopback(fam), 0))
    listener = tcp_listener(fam)
    cli, srv = tcp_pair(fam)
    with closing_all(new, bound, listener, cli, srv):
        return {"new": _insert(map_type, new), "bound": _insert(map_type, bound),
                "listening": _insert(map_type, listener), "established": _insert(map_type, cli),
                "accepted": _insert(map_type, srv)}


def udp_states(map_type, family):
    fam = FAMILIES[family]
    unbound = socket.socket(fam, socket.SOCK_DGRAM)
    bound = socket.socket(fam, socket.SOCK_DGRAM)
    bound.bind((loopback(fam), 0))
    a, b = udp_pair(fam)
    with closing_all(unbound, bound, a, b):
        return {"unbound": _insert(map_type, unbound), "bound": _insert(map_type, bound),
                "connected": _insert(map_type, a)}


def unix_kinds(map_type):
    sa, sb = unix_pair(socket.SOCK_STREAM)
    da, db = unix_pair(socket.SOCK_DGRAM)
    with closing_all(sa, sb, da, db):
        return {"stream_pair": _insert(map_type, sa), "dgram_pair": _insert(map_type, da)}


def other_families(map_type):
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with closing_all(raw, packet):
        return {"raw_inet": _insert(map_type, raw), "packet": _insert(map_type, packet)}


def unix_stream_unconnected(map_type):
    """AF_UNIX stream sockets that are not connected: new, and listening (U14)."""
    new = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(f"\0kconform-u14-{listening.fileno()}")
    listening.listen(1)
    with closing_all(new, listening):
        return {"unconnected": _insert(map_type, new), "listening": _insert(map_type, listening)}


VMADDR_CID_LOCAL = 1


def vsock_states(map_type):
    """AF_VSOCK stream sockets over the loopback transport: connected, and never connected."""
    # a process costs a tenth of a second under TCG: none when the module is already there
    if not os.path.isdir("/sys/module/vsock_loopback"):
        subprocess.run(["modprobe", "vsock_loopback"], capture_output=True, timeout=10)
    try:
        listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        return {"unavailable": f"AF_VSOCK: {exc}"}
    with closing_all(listener):
        listener.settimeout(2)
        try:
            listener.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
            listener.listen(1)
            cli = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            cli.settimeout(2)
            cli.connect((VMADDR_CID_LOCAL, listener.getsockname()[1]))
            acc, _ = listener.accept()
        except OSError as exc:
            return {"unavailable": f"vsock loopback: {exc}"}
        fresh = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        with closing_all(cli, acc, fresh):
            return {"connected": _insert(map_type, cli), "accepted": _insert(map_type, acc),
                    "unconnected": _insert(map_type, fresh)}
