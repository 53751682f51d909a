"""Iterating keys (BPF_MAP_GET_NEXT_KEY): array semantics for sockmap, hash for sockhash."""


def test_sockmap_get_next_key_walks_every_index_then_enoent(guest, expect):
    expect("N1", guest.call("sockmap_walk"))


def test_sockhash_get_next_key_walks_present_keys_then_enoent(guest, expect):
    expect("N2", guest.call("sockhash_walk"))
