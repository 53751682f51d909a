"""The redirect matrix: from every socket kind a map takes to every other, both map types.

map_sockmap.rst, each of bpf_sk_redirect_map(), bpf_sk_redirect_hash(), bpf_msg_redirect_map()
and bpf_msg_redirect_hash(): "Both ingress and egress interfaces can be used for redirection."
The doc names no socket kinds; cases/redirect_support.toml says, with sources, what each kernel
does for each pair (behaviours R7-R10, one per program and direction). cases/conftest.py
generates the cases from the expectations: every map type x source x target of each of those
behaviours, with AF_UNIX stream also as a source that sends MSG_OOB, as the kernel's
prog_tests/sockmap_redir.c has them.

Each combination is its own case, but one guest call observes a source against every target
(loading the BPF object and attaching once), and the other cases of that row read their part.
"""
from __future__ import annotations

from collections import defaultdict

import pytest

pytestmark = pytest.mark.requires_config("CONFIG_NET_SOCK_MSG")

# How long the guest waits, on hardware, for bytes that reach no socket it watches; a redirect
# that arrives does so within milliseconds, and the wait ends there.
SETTLE_SECONDS = 0.25


class RowObservations:
    """One guest call per kernel, map, program, direction and source: what each selected target
    got, kept for the row's other cases. A call that loses the guest keeps nothing and fails its
    case (its console shows which target it was at); the row's later cases then ask for their
    own target alone, so one target that hangs a kernel does not take the row with it."""

    def __init__(self):
        self.rows = {}
        self.one_at_a_time = set()

    def observe(self, guest, bpf_object, matrix, combo, selected):
        row = (guest.kernel, combo.map, combo.program, combo.direction, combo.source)
        seen = self.rows.setdefault(row, {})
        if combo.target not in seen:
            targets = [combo.target] if row in self.one_at_a_time else [
                t for t in matrix.table.kinds if t not in seen
                and f"{combo.map}-{combo.source}-{t}" in selected]
            observed = guest.call("redirect_matrix", obj=bpf_object("sockmap_progs"),
                                  map_name=combo.map, program=combo.program,
                                  direction=combo.direction, source=combo.source_kind,
                                  targets=targets, oob=combo.oob,
                                  settle=guest.bounded_wait(SETTLE_SECONDS),
                                  timeout=guest.bounded_wait(1.5 * len(targets)))
            if guest.down is not None:
                self.one_at_a_time.add(row)
                return observed
            seen.update(observed)
        return seen[combo.target]


ROWS = RowObservations()


@pytest.fixture(scope="session")
def selected_variants(request):
    """{(kernel, behaviour): the variants this run selected}: a row asks the guest only for
    them (-k or a case's rerun line picks a few)."""
    chosen = defaultdict(set)
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and getattr(item, "originalname", "") == "test_redirect_matrix":
            params = callspec.params
            chosen[params["kernel"], params["behaviour"]].add(params["variant"])
    return chosen


def test_redirect_matrix(guest, expect, bpf_object, behaviours, selected_variants, kernel,
                         behaviour, variant):
    matrix = behaviours[behaviour].matrix
    combo = matrix.table.combination(matrix.program, matrix.direction, variant)
    observed = ROWS.observe(guest, bpf_object, matrix, combo,
                            selected_variants[kernel, behaviour])
    expect(behaviour, observed, variant)
