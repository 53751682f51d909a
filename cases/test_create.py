"""Map creation (BPF_MAP_CREATE): the sizes and flags a sockmap/sockhash accepts.

map_sockmap.rst, note under the introduction: the value type is either __u32 or __u64.
"""
import pytest

from cases.maps import EACH_MAP_TYPE


@EACH_MAP_TYPE
def test_value_size_4_and_8_are_accepted(guest, expect, map_type):
    expect("C1", guest.call("create_with_value_sizes", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_value_size_other_than_4_or_8_is_einval(guest, expect, map_type):
    expect("C3", guest.call("create_with_bad_value_size", map_type=map_type), map_type)


def test_sockmap_key_size_other_than_4_is_einval(guest, expect):
    expect("C2", guest.call("create_with_key_size", map_type="sockmap", key_size=8))


@pytest.mark.parametrize("key_size, behaviour",
                         [(0, "C6a"), (513, "C6b"), (512, "C6c"), (1, "C6c")])
def test_sockhash_key_size_limits(guest, expect, key_size, behaviour):
    expect(behaviour, guest.call("create_with_key_size", map_type="sockhash", key_size=key_size))


@EACH_MAP_TYPE
def test_zero_max_entries_is_einval(guest, expect, map_type):
    expect("C4", guest.call("create_with_zero_entries", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_no_prealloc_flag_is_einval(guest, expect, map_type):
    expect("C5", guest.call("create_with_no_prealloc", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_creation_without_privileges_is_eperm(guest, expect, map_type):
    expect("C7", guest.call("create_unprivileged", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_btf_key_and_value_types_are_refused(guest, expect, bpf_object, map_type):
    expect("C8", guest.call("create_with_btf_ids", map_type=map_type,
                            obj=bpf_object("sockmap_progs")), map_type)
