"""cgroup v2 groups of kconform's own, for cases that attach a program to a cgroup.

A sock_ops program attached to the root cgroup runs for every TCP socket of the machine, and on
an SSH target that machine is a real host. A case attaches to a group kconform makes instead,
/sys/fs/cgroup/kconform-<agent pid>-<agent start time>-<n>, with only the agent in it while the
case creates its sockets (a socket belongs to the cgroup of the process that made it, so the
program sees the case's sockets and no others); the group is removed when the case ends.

An agent killed in the middle of a case leaves its group behind, with the program still attached
(an attachment outlives the process that made it). Every agent, when it starts, removes the
groups whose agent is gone: it detaches what is attached to them, then removes them. The pid and
start time in the name tell a dead agent's group from a live one's (two workers may share a
target), even after the pid is reused.

Guest side only, standard library only (it also runs on SSH targets).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import struct
import sys
from collections.abc import Iterator

PREFIX = "kconform-"
CGROUP2_SUPER_MAGIC = 0x63677270
# Every bpf_attach_type number a kernel may have: querying a cgroup for one that is not a cgroup
# type answers an error, which is skipped. Listing only the cgroup types would miss newer ones.
ATTACH_TYPES = range(64)

_counter = itertools.count(1)


def _is_cgroup2(path: str) -> bool:
    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is the first field
    statfs = ctypes.CDLL(None, use_errno=True).statfs
    statfs.argtypes, statfs.restype = [ctypes.c_char_p, ctypes.c_void_p], ctypes.c_int
    if int(statfs(path.encode(), buf)) != 0:
        return False
    f_type: int = struct.unpack_from("<q", buf.raw)[0]
    return f_type == CGROUP2_SUPER_MAGIC


@contextlib.contextmanager
def cgroup2_root() -> Iterator[str]:
    """The path of the cgroup v2 root: the system's mount, or a private one while the block runs
    (a guest without systemd may not have mounted it)."""
    for path in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if _is_cgroup2(path):
            yield path
            return
    # Imported here, not at the top: the agent imports this module as it starts, and under TCG
    # these two cost 0.4 s of every boot that mostly never needs a private mount.
    import subprocess
    import tempfile
    where = tempfile.mkdtemp(prefix="kconform-cgroup2-")
    try:
        subprocess.run(["mount", "-t", "cgroup2", "none", where], check=True, capture_output=True)
        try:
            yield where
        finally:
            subprocess.run(["umount", where], capture_output=True)
    finally:
        os.rmdir(where)


def process_start(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; comm may hold spaces


def _own_group() -> str:
    """Where this process is in the v2 hierarchy ('/' or '/user.slice/...')."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    return "/"


def _move_self(group_dir: str) -> None:
    with open(os.path.join(group_dir, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


@contextlib.contextmanager
def case_cgroup() -> Iterator[int]:
    """An fd of a new cgroup holding this process (the agent) while the block runs; the agent
    goes back where it was, the group is emptied of programs and removed, when the block ends."""
    pid = os.getpid()
    name = f"{PREFIX}{pid}-{process_start(pid)}-{next(_counter)}"
    with cgroup2_root() as root:
        group = os.path.join(root, name)
        home = os.path.join(root, _own_group().lstrip("/"))
        os.mkdir(group, 0o755)
        try:
            fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _move_self(group)
                try:
                    yield fd
                finally:
                    try:
                        _move_self(home)
                    except OSError:  # the group the agent came from is gone
                        _move_self(root)
                    detach_all(fd)
            finally:
                os.close(fd)
        finally:
            os.rmdir(group)


def detach_all(cgroup_fd: int) -> int:
    """Detach every program attached to a cgroup; how many were."""
    from harness.agent import libbpf as bpf
    detached = 0
    for attach_type, prog_id in attached(cgroup_fd):
        try:
            prog_fd = bpf.prog_get_fd_by_id(prog_id)
        except bpf.BpfError:
            continue  # released meanwhile
        try:
            bpf.prog_detach(prog_fd, cgroup_fd, attach_type)
            detached += 1
        except bpf.BpfError:
            pass  # detached meanwhile
        finally:
            os.close(prog_fd)
    return detached


def _owner_gone(name: str) -> bool:
    """Whether the agent that made group `name` is gone (a name not of kconform's form: no)."""
    parts = name[len(PREFIX):].split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return False
    return process_start(int(parts[0])) != int(parts[1])


def remove_left_behind() -> list[str]:
    """Remove the groups of agents that died in a case; one line per group for the console."""
    notes = []
    with cgroup2_root() as root:
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if not name.startswith(PREFIX) or not os.path.isdir(path) or not _owner_gone(name):
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    detached = detach_all(fd)
                finally:
                    os.close(fd)
                os.rmdir(path)
                notes.append(f"kconform: removed cgroup {name} left by a dead agent ({detached} "
                             "program(s) detached)")
            except (OSError, RuntimeError) as exc:  # RuntimeError: no libbpf on this machine
                notes.append(f"kconform: could not remove cgroup {path} left by a dead agent: "
                             f"{exc}")
    return notes


def left_behind() -> dict[str, int]:
    """The kconform groups on this machine and how many programs each has attached (for tests)."""
    found: dict[str, int] = {}
    with cgroup2_root() as root:
        for name in sorted(os.listdir(root)):
            if name.startswith(PREFIX) and os.path.isdir(os.path.join(root, name)):
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    found[name] = len(attached(fd))
                finally:
                    os.close(fd)
    return found


def attached(cgroup_fd: int) -> list[tuple[int, int]]:
    """(attach type, program id) of every program attached to a cgroup."""
    from harness.agent import libbpf as bpf
    found: list[tuple[int, int]] = []
    for attach_type in ATTACH_TYPES:
        try:
            ids = bpf.prog_query(cgroup_fd, attach_type, max_ids=64)["prog_ids"]
        except bpf.BpfError:
            continue  # not an attach type of this kernel, or not a cgroup one
        found += [(attach_type, prog_id) for prog_id in ids]
    return found


def clean_at_start() -> list[str]:
    """Called by the agent as it starts: never stops it, says what it did on the console."""
    try:
        notes = remove_left_behind()
    except Exception as exc:  # no cgroup2, no mount(8): nothing kconform made can be there
        notes = [f"kconform: looking for cgroups left by a dead agent failed: {exc}"]
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    return notes
