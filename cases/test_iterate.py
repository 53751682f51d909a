"""Iterating a map: keys with BPF_MAP_GET_NEXT_KEY (array semantics for sockmap, hash semantics
for sockhash), and sockets with an iter/sockmap BPF iterator."""
import pytest

from cases.maps import EACH_MAP_TYPE


def test_sockmap_get_next_key_walks_every_index_then_enoent(guest, expect):
    expect("N1", guest.call("sockmap_walk"))


def test_sockhash_get_next_key_walks_present_keys_then_enoent(guest, expect):
    expect("N2", guest.call("sockhash_walk"))


# An iterator program is attached by its BTF id (bpf_iter__sockmap): without the kernel's BTF,
# loading it is ESRCH.
@pytest.mark.requires_config("CONFIG_DEBUG_INFO_BTF")
@EACH_MAP_TYPE
def test_iterator_visits_each_slot_then_ends_with_a_null_call(guest, expect, bpf_object,
                                                              map_type):
    expect("I1", guest.call("iterator_calls", obj=bpf_object("iter_sockmap"), map_type=map_type),
           map_type)
