"""Guest side of tests/faultcases/sock_ops_cgroup.py: the cgroups sock_ops cases attach to."""
import os
import signal
import socket
import struct
import subprocess

from harness.agent import cgroups
from harness.agent import libbpf as bpf
from harness.agent.sockets import tcp_pair

SOCK_OPS = bpf.ATTACH_TYPES["cgroup_sock_ops"]
RESULT = struct.Struct("<qII")
KEYS = {0: "listener", 1: "accepted", 2: "connected"}


def _root_sock_ops():
    with cgroups.cgroup2_root() as root:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return bpf.prog_query(fd, SOCK_OPS)["prog_ids"]
        finally:
            os.close(fd)


def program_scope(obj):
    """Which sockets a program attached to the case's cgroup sees: the listener is made before
    the case enters its group (as any other process's socket would be), the client inside it."""
    outside = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    outside.settimeout(2)
    outside.bind(("127.0.0.1", 0))
    port = outside.getsockname()[1]
    with bpf.BpfObject(obj) as o, cgroups.case_cgroup() as group:
        prog = o.prog_fd("prog_sockops_update")
        bpf.prog_attach(prog, group, "cgroup_sock_ops")
        try:
            bpf.map_update(o.map_fd("ops_cfg"), bpf.u32(0), struct.pack("<II", port, 0))
            outside.listen(4)
            cli, acc = tcp_pair(listener=outside)
            cli.close()
            acc.close()
            ran = {name: RESULT.unpack(bpf.map_lookup(o.map_fd("ops_results"), bpf.u32(key),
                                                      RESULT.size))[1]
                   for key, name in KEYS.items()}
            on_group = len(bpf.prog_query(group, SOCK_OPS)["prog_ids"])
            on_root = len(_root_sock_ops())
        finally:
            bpf.prog_detach(prog, group, "cgroup_sock_ops")
            outside.close()
    return {"ran": ran, "on_group": on_group, "on_root": on_root,
            "left_after": cgroups.left_behind()}


def cleanup_at_start(obj):
    """What an agent's start removes: a group of a dead agent, program and all; not a live
    agent's group, nor a directory kconform did not name."""
    sleeper = subprocess.Popen(["sleep", "30"])
    dead = f"{cgroups.PREFIX}{sleeper.pid}-{cgroups.process_start(sleeper.pid)}-1"
    sleeper.kill()
    sleeper.wait()
    live = f"{cgroups.PREFIX}{os.getpid()}-{cgroups.process_start(os.getpid())}-999"
    other = cgroups.PREFIX + "not-ours"
    with bpf.BpfObject(obj) as o, cgroups.cgroup2_root() as root:
        for name in (dead, live, other):
            os.mkdir(os.path.join(root, name))
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_DIRECTORY)
            try:
                bpf.prog_attach(o.prog_fd("prog_sockops_update"), fd, "cgroup_sock_ops")
            finally:
                os.close(fd)
        before = cgroups.left_behind()
        notes = cgroups.remove_left_behind()
        after = cgroups.left_behind()
        for name in (live, other):
            fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_DIRECTORY)
            try:
                cgroups.detach_all(fd)
            finally:
                os.close(fd)
            os.rmdir(os.path.join(root, name))
    return {"before": before, "after": after, "notes": notes, "dead": dead, "live": live,
            "other": other}


def die_in_a_case_cgroup(obj):
    """The agent killed in the middle of a sock_ops case: its group and program stay behind."""
    with bpf.BpfObject(obj) as o, cgroups.case_cgroup() as group:
        bpf.prog_attach(o.prog_fd("prog_sockops_update"), group, "cgroup_sock_ops")
        os.kill(os.getpid(), signal.SIGKILL)


def left_behind():
    return cgroups.left_behind()
