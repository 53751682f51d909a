"""Guest side of cases/test_create.py: map creation through BPF_MAP_CREATE."""
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
    return {"value_2": _create(map_type, value_size=2), "value_16": _create(map_type, value_size=16)}


def create_with_key_size(map_type, key_size):
    return {"create": _create(map_type, key_size=key_size)}


def create_with_zero_entries(map_type):
    return {"create": _create(map_type, max_entries=0)}


def create_with_no_prealloc(map_type):
    return {"create": _create(map_type, map_flags=BPF_F_NO_PREALLOC)}
