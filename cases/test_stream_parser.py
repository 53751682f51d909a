"""A stream parser that splits one send into several messages, and one that joins sends.

map_sockmap.rst, introduction: "The parser program determines how much data has been parsed and
therefore how much data needs to be queued to come to a verdict." A parser that returns less
than one send carries makes several messages of it, each its own verdict; one that returns more
holds the bytes until that many came, and the verdict runs once on all of them. The verdict
redirects each message into a second socket (BPF_F_INGRESS), which reads what was sent, once.
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER")

# Not SK_PASS: through a stream parser it deadlocks 5.10.223-5.10.232 and 6.1.91-6.1.119
# (CVE-2024-56694), which E1 and E3 check; a redirect behaves the same on every kernel.

# The bound on waiting, on hardware, for the parser's first call and for the bytes to be read:
# both come within milliseconds and the wait ends there.
SETTLE_SECONDS = 0.5
# How long, on hardware, a split's target must then be quiet to show each message came once: a
# copy would come from the same backlog work as the first bytes, and does (on 5.10.223 under TCG
# all three copies were in the target's first read, 1 ms after the send). As long as the
# matrix's settle for the same kind of wait.
QUIET_SECONDS = 0.25


def test_parser_length_below_a_send_splits_it_into_one_verdict_per_message(guest, expect,
                                                                           bpf_object):
    observed = guest.call("parsed", obj=bpf_object("stream_parser"), mode="split",
                          settle=guest.bounded_wait(SETTLE_SECONDS),
                          quiet=guest.bounded_wait(QUIET_SECONDS))
    expect("P9", observed)


def test_parser_length_above_a_send_joins_sends_into_one_verdict(guest, expect, bpf_object):
    observed = guest.call("parsed", obj=bpf_object("stream_parser"), mode="join",
                          settle=guest.bounded_wait(SETTLE_SECONDS), quiet=0)
    expect("P10", observed)
