"""The redirect matrix's cases as collected (ids, socket-kind options), and how a row of them
shares guest calls (cases/test_redirect_matrix.py), on a fake guest."""
import re
import subprocess
import sys

from cases.test_redirect_matrix import RowObservations
from harness.judging import expectations as ex
from tests.conftest import REPO

KINDS = ["tcp4", "tcp6", "udp4", "udp6", "unix_stream", "unix_dgram", "vsock_stream",
         "vsock_seqpacket"]


def test_the_ids_name_the_whole_combination_after_the_kernel():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "cases/test_redirect_matrix.py", "--collect-only", "-q",
                           "--kernel", "debian-7.3"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    ids = re.findall(r"test_redirect_matrix\[(.*)\]", proc.stdout)
    assert len(ids) == 576 and len(set(ids)) == 576
    assert "debian-7.3-sockhash-sk_skb-ingress-udp6-unix_dgram" in ids
    assert all(re.fullmatch(r"debian-7\.3-sock(map|hash)-sk_(skb|msg)-(in|e)gress-\w+-\w+", i)
               for i in ids)


class FakeGuest:
    """Answers redirect_matrix calls; `hang_on` loses the guest when a call reaches it."""

    def __init__(self, hang_on=None):
        self.kernel, self.down, self.calls, self.hang_on = "debian-7.3", None, [], hang_on

    def bounded_wait(self, seconds):
        return seconds

    def call(self, fn, **kwargs):
        self.calls.append(kwargs["targets"])
        if self.hang_on in kwargs["targets"]:
            self.down = {"guest": "hang"}
            return self.down
        return {t: {"received_by": ["target"], "seen_as": t} for t in kwargs["targets"]}


def _row(program="sk_skb", direction="ingress"):
    matrix = next(b.matrix for b in ex.load().values()
                  if b.matrix and (b.matrix.program, b.matrix.direction) == (program, direction))
    combos = [c for c in matrix.combinations() if (c.map, c.source) == ("sockmap", "tcp4")]
    return matrix, combos


def test_a_row_is_one_guest_call_for_the_targets_the_run_selected():
    matrix, combos = _row()
    selected = {c.variant for c in combos if c.target in ("udp4", "vsock_stream")}
    rows, guest = RowObservations(), FakeGuest()
    for combo in combos:
        if combo.variant in selected:
            assert rows.observe(guest, lambda name: name, matrix, combo,
                                selected)["seen_as"] == combo.target
    assert guest.calls == [["udp4", "vsock_stream"]]


def test_after_a_lost_guest_the_row_asks_one_target_at_a_time():
    matrix, combos = _row()
    selected = {c.variant for c in combos}
    rows, guest = RowObservations(), FakeGuest(hang_on="unix_dgram")
    first = rows.observe(guest, lambda name: name, matrix, combos[0], selected)
    assert first == {"guest": "hang"} and guest.calls == [KINDS]
    guest, calls = FakeGuest(hang_on="unix_dgram"), []  # the replacement guest
    answers = {}
    for combo in combos[1:]:
        answers[combo.target] = rows.observe(guest, lambda name: name, matrix, combo, selected)
        calls += guest.calls
        if guest.down is not None:
            guest = FakeGuest(hang_on="unix_dgram")  # and its replacement
        guest.calls = []
    assert calls == [[t] for t in KINDS[1:]]  # tcp4 hung the first guest: it is not asked again
    assert answers["unix_dgram"] == {"guest": "hang"}
    assert answers["vsock_seqpacket"]["seen_as"] == "vsock_seqpacket"
