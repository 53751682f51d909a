"""map_sockmap.rst, "User space / bpf_map_lookup_elem()": the entry returned is a socket cookie.

The value size decides what user space can get back: with 8-byte values the lookup returns the
socket's cookie (the note on __u64 values), with 4-byte values it has nowhere to put one.
"""
from cases.maps import EACH_MAP_TYPE


@EACH_MAP_TYPE
def test_lookup_with_u64_value_returns_socket_cookie(guest, expect, map_type):
    observed = guest.call("lookup_inserted_tcp_socket", map_type=map_type, value_size=8)
    expect("L1", observed, variant=map_type)


@EACH_MAP_TYPE
def test_lookup_with_u32_value_fails_enospc(guest, expect, map_type):
    observed = guest.call("lookup_inserted_tcp_socket", map_type=map_type, value_size=4)
    expect("L2", observed, variant=map_type)


@EACH_MAP_TYPE
def test_lookup_of_a_missing_entry_is_enoent(guest, expect, map_type):
    expect("L3", guest.call("lookup_missing", map_type=map_type), variant=map_type)
