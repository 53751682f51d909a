"""Deleting entries (bpf_map_delete_elem), and entries leaving when their socket goes.

map_sockmap.rst, "User space / bpf_map_delete_elem()": returns 0 on success, or negative error.
"""
from cases.maps import EACH_MAP_TYPE


@EACH_MAP_TYPE
def test_delete_of_a_present_entry_removes_it(guest, expect, map_type):
    expect("D0", guest.call("delete_present", map_type=map_type), map_type)


def test_sockmap_delete_of_empty_or_out_of_range_slot_is_einval(guest, expect):
    expect("D1", guest.call("delete_missing", map_type="sockmap"))


def test_sockhash_delete_of_missing_key_is_enoent(guest, expect):
    expect("D2", guest.call("delete_missing", map_type="sockhash"))


@EACH_MAP_TYPE
def test_closed_socket_leaves_the_map(guest, expect, map_type):
    expect("D3", guest.call("closed_socket_leaves_map", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_listener_disconnected_with_connect_af_unspec_stays_until_close(guest, expect, map_type):
    expect("D3b", guest.call("listener_after_connect_unspec", map_type=map_type), map_type)
