"""Guest side of cases/test_sock_ops.py: sock_ops programs adding sockets to maps.

The program is attached, for the length of one case, to a cgroup kconform makes for it with only
the agent inside while the case creates its sockets (harness/agent/cgroups.py): never the root
cgroup, whose every TCP socket it would see (on an SSH target, a real host's). It acts only on
the port the case writes into `ops_cfg`.
"""
import socket
import struct

from harness.agent import libbpf as bpf
from harness.agent.cgroups import case_cgroup
from harness.agent.observe import holds_socket, outcome
from harness.agent.sockets import closing_all, tcp_pair

MAPS = {"sockmap": "sock_map", "sockhash": "sock_hash"}


RESULT = struct.Struct("<qII")
KEYS = {0: "listener", 1: "accepted", 2: "connected"}


def sock_ops_update(obj, map_type):
    """Listen, accept and connect on one port; what the helper returned in each callback and
    whether each map entry holds that very socket (by cookie)."""
    with bpf.BpfObject(obj) as o, case_cgroup() as cgroup:
        prog = o.prog_fd("prog_sockops_update")
        bpf.prog_attach(prog, cgroup, "cgroup_sock_ops")
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.settimeout(2)
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            bpf.map_update(o.map_fd("ops_cfg"), bpf.u32(0),
                           struct.pack("<II", port, 1 if map_type == "sockhash" else 0))
            listener.listen(4)
            cli, acc = tcp_pair(listener=listener)
            with closing_all(listener, cli, acc):
                socks = {"listener": listener, "accepted": acc, "connected": cli}
                fd = o.map_fd(MAPS[map_type])
                obs = {}
                for key, name in KEYS.items():
                    ret, ran, _ = RESULT.unpack(bpf.map_lookup(o.map_fd("ops_results"),
                                                               bpf.u32(key), RESULT.size))
                    obs[name + "_helper"] = ("OK" if ret == 0 else bpf.errno_name(-ret)) \
                        if ran else "not called"
                    obs[name + "_in_map"] = holds_socket(fd, bpf.u32(key), socks[name])
                return obs
        finally:
            outcome(bpf.prog_detach, prog, cgroup, "cgroup_sock_ops")
