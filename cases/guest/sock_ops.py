"""Guest side of cases/test_sock_ops.py: sock_ops programs adding sockets to maps.

The program is attached to the root cgroup (v2) for the length of one case, so every TCP socket
in the guest passes through it; it acts only on the port the case writes into `ops_cfg`.
"""
import contextlib
import ctypes
import os
import socket
import struct
import subprocess
import tempfile

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome, socket_cookie
from harness.agent.sockets import closing_all, tcp_pair

MAPS = {"sockmap": "sock_map", "sockhash": "sock_hash"}
CGROUP2_SUPER_MAGIC = 0x63677270


def _is_cgroup2(path):
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is the first field
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(path.encode(), buf) != 0:
        return False
    return struct.unpack_from("<q", buf.raw)[0] == CGROUP2_SUPER_MAGIC


@contextlib.contextmanager
def root_cgroup():
    """An fd of the cgroup v2 root, mounting cgroup2 privately if the guest has not."""
    if _is_cgroup2("/sys/fs/cgroup"):
        fd = os.open("/sys/fs/cgroup", os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    where = tempfile.mkdtemp(prefix="kconform-cgroup2-")
    subprocess.run(["mount", "-t", "cgroup2", "none", where], check=True, capture_output=True)
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)
        subprocess.run(["umount", where], capture_output=True)
        os.rmdir(where)


RESULT = struct.Struct("<qII")
KEYS = {0: "listener", 1: "accepted", 2: "connected"}


def sock_ops_update(obj, map_type):
    """Listen, accept and connect on one port; what the helper returned in each callback and
    whether each map entry holds that very socket (by cookie)."""
    with bpf.BpfObject(obj) as o, root_cgroup() as cgroup:
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
                    try:
                        cookie = struct.unpack("<Q", bpf.map_lookup(fd, bpf.u32(key), 8))[0]
                        obs[name + "_in_map"] = cookie == socket_cookie(socks[name])
                    except bpf.BpfError as exc:
                        obs[name + "_in_map"] = exc.errno_name
                return obs
        finally:
            outcome(bpf.prog_detach, prog, cgroup, "cgroup_sock_ops")
