"""Guest side of cases/test_create.py: map creation through BPF_MAP_CREATE."""
import os

from harness.agent import libbpf as bpf
from harness.agent.observe import outcome

BPF_F_NO_PREALLOC = 1


def _create(map_type, key_size=4, value_size=8, max_entries=4, map_flags=0):
    def attempt():
        with bpf.created_map(map_type, key_size, value_size, max_entries, map_flags=map_flags):
            pass
    return outcome(attempt)


def create_with_value_sizes(map_type):
    return {"value_4": _create(map_type, value_size=4), "value_8": _create(map_type, value_size=8)}


def create_with_bad_value_size(map_type):
    return {"value_2": _create(map_type, value_size=2),
            "value_16": _create(map_type, value_size=16)}


def create_with_key_size(map_type, key_size):
    return {"create": _create(map_type, key_size=key_size)}


def create_with_zero_entries(map_type):
    return {"create": _create(map_type, max_entries=0)}


def create_with_no_prealloc(map_type):
    return {"create": _create(map_type, map_flags=BPF_F_NO_PREALLOC)}


NOBODY = 65534
UNPRIV_SYSCTL = "/proc/sys/kernel/unprivileged_bpf_disabled"


def _as_nobody(map_type):
    """Create a map in a child that dropped root (and with it every capability)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the agent
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, _create(map_type).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result or "child failed"


def create_unprivileged(map_type):
    """Map creation without CAP_NET_ADMIN/CAP_BPF, with the distro sysctl and with unprivileged
    BPF enabled (then an ARRAY map shows that bpf() itself is open to the user)."""
    with open(UNPRIV_SYSCTL) as f:
        saved = f.read().strip()
    obs = {"unprivileged_bpf_disabled": saved, "default_sysctl": _as_nobody(map_type)}
    try:
        with open(UNPRIV_SYSCTL, "w") as f:
            f.write("0")
    except OSError as exc:
        obs["unprivileged_bpf_enabled"] = f"sysctl locked: {bpf.errno_name(exc.errno)}"
        return obs
    try:
        obs["unprivileged_bpf_enabled"] = _as_nobody(map_type)
        obs["array_map_unprivileged_bpf_enabled"] = _as_nobody("array")
    finally:
        with open(UNPRIV_SYSCTL, "w") as f:
            f.write(saved)
    return obs


BTF_KIND_TYPEDEF = 8


def create_with_btf_ids(map_type, obj):
    """Key and value BTF type ids of the right sizes (__u32, __u64 from a loaded object's BTF)."""
    with bpf.BpfObject(obj) as o:
        btf_fd, key_id = o.btf_type_id("__u32", BTF_KIND_TYPEDEF)
        _, value_id = o.btf_type_id("__u64", BTF_KIND_TYPEDEF)

        def attempt():
            with bpf.created_map(map_type, 4, 8, 4, btf_fd=btf_fd, btf_key_type_id=key_id,
                                 btf_value_type_id=value_id):
                pass
        return {"with_btf_ids": outcome(attempt), "without": _create(map_type)}
