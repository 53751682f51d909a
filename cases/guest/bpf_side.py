"""Guest side of cases/test_bpf_side.py: the map helpers as BPF programs use them on sockmaps.

Programs are loaded one at a time (BpfObject(only=...)), since whether the verifier accepts a
program is itself the observation.
"""

from harness.agent import libbpf as bpf
from harness.agent.observe import holds_socket
from harness.agent.sockets import closing_all, tcp_pair

TC_ACT_OK, TC_ACT_SHOT = 0, 2
PACKET = bytes(14) + bytes([0x45]) + bytes(49)  # an Ethernet frame with an IPv4 header start


def _rejected(exc):
    """The errno of a refused load and the verifier's reason (its last lines before the stats)."""
    lines = [line for line in (exc.verifier_log or "").splitlines()
             if line.strip() and not line.startswith(("processed ", "---"))]
    return {"load": exc.errno_name, "verifier_says": " / ".join(lines[-2:])}


def load_result(obj, prog):
    """"OK" if the verifier accepts the program, else the errno and the verifier's reason."""
    try:
        with bpf.BpfObject(obj, only=[prog]):
            return {"load": "OK"}
    except bpf.BpfError as exc:
        return _rejected(exc)


def tc_copies_socket(obj):
    """A tc program looks a socket up in one sockmap and adds it to a sockmap and a sockhash."""
    try:
        o = bpf.BpfObject(obj, only=["prog_tc_copy"])
    except bpf.BpfError as exc:
        return _rejected(exc)
    with o:
        a, b = tcp_pair()
        with closing_all(a, b):
            bpf.map_update(o.map_fd("src_map"), bpf.u32(0), bpf.u64(a.fileno()))
            copy = bpf.prog_test_run(o.prog_fd("prog_tc_copy"), PACKET)
            return {"load": "OK",
                    "copy_program": "all updates OK" if copy == TC_ACT_OK else "an update failed",
                    # true or false, as before the helpers were shared: a failed lookup is false
                    "sockmap_holds_socket":
                        holds_socket(o.map_fd("dst_map"), bpf.u32(0), a) is True,
                    "sockhash_holds_socket":
                        holds_socket(o.map_fd("dst_hash"), bpf.u32(0), a) is True}


def tc_lookup_of_empty_slot(obj):
    """A tc program looks up an empty sockmap slot (and releases what it gets, if anything)."""
    with bpf.BpfObject(obj, only=["prog_tc_lookup_empty"]) as o:
        empty = bpf.prog_test_run(o.prog_fd("prog_tc_lookup_empty"), PACKET)
        return {"lookup_of_empty_slot": "NULL" if empty == TC_ACT_OK else "a socket"}
