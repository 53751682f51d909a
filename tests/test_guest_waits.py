"""The events that end the guest-side cases' waits for bytes (cases/guest/redirect.py), on fake
results: each ends early only on what proves the outcome. No VM."""
from __future__ import annotations

import struct

import pytest

from cases.guest import redirect


class FakeObject:
    """A BpfObject whose `results` map (sockmap_progs.bpf.c: [0] what the helper last
    returned, [1] the program's runs) holds what the test says."""

    def __init__(self, returned: int, runs: int) -> None:
        self.slots = {0: returned, 1: runs}

    def map_fd(self, name: str) -> int:
        assert name == "results"
        return 42


@pytest.fixture
def results(monkeypatch):
    def make(returned: int, runs: int) -> FakeObject:
        o = FakeObject(returned, runs)
        monkeypatch.setattr(redirect.bpf, "map_lookup", lambda fd, key, size: struct.pack(
            "<q", o.slots[struct.unpack("<I", key)[0]]))
        return o
    return make


@pytest.mark.parametrize("returned, runs, dropped", [
    (redirect.SK_DROP, 1, True),
    (redirect.NOT_YET, 0, False),  # the program has not run
    (redirect.SK_DROP, 0, False),  # what the slot held before the case marked it
    (redirect.NOT_YET, 1, False),  # the count is seen before the program's own write
    (redirect.SK_PASS, 1, False),  # a redirect: its bytes are on their way
    (redirect.SK_DROP, 2, False),  # not the one run a send makes here
])
def test_only_the_programs_own_sk_drop_ends_the_wait(results, returned, runs, dropped):
    assert redirect._dropped(results(returned, runs)) is dropped
