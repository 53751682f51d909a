"""sock_ops programs adding sockets: bpf_sock_map_update() and bpf_sock_hash_update().

map_sockmap.rst, "bpf_sock_map_update()" / "bpf_sock_hash_update()": "Add an entry to, or update
a map referencing sockets. The skops is used as a new value for the entry associated to key."
"""
import pytest

from cases.maps import EACH_MAP_TYPE

# The sock_ops program is attached to a cgroup of kconform's own (harness/agent/cgroups.py).
pytestmark = pytest.mark.requires_config("CONFIG_CGROUP_BPF")


@EACH_MAP_TYPE
def test_sock_ops_callbacks_add_the_socket_they_run_for(guest, expect, bpf_object, map_type):
    expect("O1", guest.call("sock_ops_update", obj=bpf_object("sock_ops"), map_type=map_type),
           map_type)
