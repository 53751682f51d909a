"""Updates from user space (bpf_map_update_elem): flags, limits and values.

map_sockmap.rst, "User space / bpf_map_update_elem()": the value is the socket's fd; flags are
BPF_ANY, BPF_NOEXIST, BPF_EXIST.
"""
from cases.maps import EACH_MAP_TYPE


@EACH_MAP_TYPE
def test_noexist_on_an_occupied_key_is_eexist(guest, expect, map_type):
    expect("U1", guest.call("update_flags", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_exist_on_an_empty_key_is_enoent(guest, expect, map_type):
    expect("U2", guest.call("update_flags", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_any_and_exist_replace_the_socket(guest, expect, map_type):
    expect("U3", guest.call("update_flags", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_flags_beyond_exist_are_einval(guest, expect, map_type):
    expect("U4", guest.call("update_bad_flags", map_type=map_type), map_type)


def test_sockmap_key_past_max_entries_is_e2big(guest, expect):
    expect("U5", guest.call("sockmap_key_out_of_range"))


def test_full_sockhash_refuses_new_keys_and_replaces_existing(guest, expect):
    expect("U6", guest.call("sockhash_full"))


@EACH_MAP_TYPE
def test_value_that_is_not_a_socket_fd_is_refused(guest, expect, map_type):
    expect("U7", guest.call("update_bad_values", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_one_socket_under_two_keys_and_in_two_maps(guest, expect, map_type):
    expect("U17", guest.call("same_socket_twice", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_replacing_a_socket_with_itself_then_closing_removes_the_entry(guest, expect, map_type):
    expect("U19", guest.call("replaced_with_itself_then_closed", map_type=map_type), map_type)
