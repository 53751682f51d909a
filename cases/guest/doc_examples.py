"""Guest side of cases/test_doc_examples.py: the doc's example programs and user-space sample,
run on real sockets.

Both verdict examples redirect to the one socket their map holds, with flags 0 (egress): data
that socket receives goes back out of it, so its peer gets its own bytes back.

The programs are the doc's as written, so they count nothing; the wait ends at the first arrival
instead. Each example's verdict depends on the connection alone (its local port, its 4-tuple),
so every message of the one send gets the same verdict, and a verdict sends an skb one way only
(sk_psock_verdict_apply(), 5.10, 6.1, 6.12 and 7.3 skmsg.c: __SK_PASS queues it on the server's
own ingress, directly or through its backlog work; __SK_REDIRECT hands it to the backlog work
that sends it out of the server; __SK_DROP frees it). So once all the bytes came back to the
client the server's application gets none, and once it read them all none come back: the other
socket is looked at once, without waiting. A drop shows nowhere, so only that waits out the
`settle` bound.
"""
import socket
import struct

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome
from harness.agent.settle import first_arrivals
from harness.agent.sockets import closing_all, received, tcp_listener, tcp_pair

PAYLOAD = b"kconform-doc-example"
DOC_PORT = 10000


def _exchange(client, server, settle):
    """client sends; what comes back to the client, and what the server application reads."""
    client.send(PAYLOAD)
    got = first_arrivals({"client": client, "server": server}, settle)
    echoed, delivered = got.get("client"), got.get("server")
    if echoed == PAYLOAD and delivered is None:
        delivered = received(server, wait=0)
    elif delivered == PAYLOAD and echoed is None:
        echoed = received(client, wait=0)
    elif got:  # part of the bytes, somewhere: the other socket gets the whole wait
        echoed = received(client, settle) if echoed is None else echoed
        delivered = received(server, settle) if delivered is None else delivered
    return {"client_got_its_bytes_back": echoed == PAYLOAD,
            "server_application_got_bytes": delivered == PAYLOAD}


def local_port_verdict(obj, port, settle):
    """The doc's sockmap example: parser + 'lport == 10000' verdict on sock_map_rx."""
    with bpf.BpfObject(obj, only=["bpf_prog_parser", "bpf_prog_verdict"]) as o:
        fd = o.map_fd("sock_map_rx")
        bpf.prog_attach(o.prog_fd("bpf_prog_parser"), fd, "stream_parser")
        bpf.prog_attach(o.prog_fd("bpf_prog_verdict"), fd, "stream_verdict")
        listener = tcp_listener(socket.AF_INET, port=port)
        client, server = tcp_pair(listener=listener)
        with closing_all(listener, client, server):
            bpf.map_update(fd, bpf.u32(0), bpf.u64(server.fileno()))
            return _exchange(client, server, settle)


def _socket_key(server, ports_in_host_order=False):
    """struct socket_key as the doc's extract_socket_key() builds it for the server's skbs:
    addresses in network order; ports in network order in the low 16 bits of a u32."""
    local_ip, local_port = server.getsockname()
    remote_ip, remote_port = server.getpeername()
    port = (lambda p: p) if ports_in_host_order else socket.htons
    return (socket.inet_aton(remote_ip) + socket.inet_aton(local_ip)
            + struct.pack("<II", port(remote_port), port(local_port)))


def socket_key_verdict(obj, key_layout, settle):
    """The doc's sockhash example: the server inserted under its own 4-tuple key."""
    with bpf.BpfObject(obj, only=["bpf_prog_parser", "bpf_prog_verdict_hash"]) as o:
        fd = o.map_fd("sock_hash_rx")
        bpf.prog_attach(o.prog_fd("bpf_prog_parser"), fd, "stream_parser")
        bpf.prog_attach(o.prog_fd("bpf_prog_verdict_hash"), fd, "stream_verdict")
        client, server = tcp_pair()
        with closing_all(client, server):
            key = _socket_key(server, ports_in_host_order=(key_layout == "ports_host_order"))
            bpf.map_update(fd, key, bpf.u64(server.fileno()))
            return _exchange(client, server, settle)


def user_space_sample(obj, settle):
    """The doc's create_sample_sockmap(): 4-byte values, parser + verdict, BPF_NOEXIST insert."""
    with bpf.BpfObject(obj, only=["bpf_prog_parser", "bpf_prog_verdict"]) as o:
        client, server = tcp_pair()
        with closing_all(client, server), bpf.created_map("sockmap", 4, 4, 1) as fd:
            obs = {"attach_parser": outcome(bpf.prog_attach, o.prog_fd("bpf_prog_parser"), fd,
                                            "stream_parser"),
                   "attach_verdict": outcome(bpf.prog_attach, o.prog_fd("bpf_prog_verdict"), fd,
                                             "stream_verdict"),
                   "update_noexist": outcome(bpf.map_update, fd, bpf.u32(0),
                                             bpf.u32(server.fileno()), bpf.BPF_NOEXIST)}
            obs.update(_exchange(client, server, settle))
            return obs
