"""shutdown() of a TCP socket that has an skb verdict program, and of its peer.

map_sockmap.rst, introduction: "When a socket is inserted into one of these maps, its socket
callbacks are replaced and a struct sk_psock is attached to it." The doc replaces the callbacks
that carry received data to the verdict and names nothing else: a half-close is still a TCP
half-close (the side that shut down writing sends its end of stream, the other side reads it
after the bytes sent before it, and a shut-down direction fails as it would without the map),
and the socket stays in the map until it is closed, which removes it.
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER")

# The bound on waiting, on hardware, for a read that an event makes ready (bytes, end of
# stream): they come within milliseconds and the wait ends there.
SETTLE_SECONDS = 0.5


@pytest.mark.parametrize("how", ["shut_rd", "shut_wr", "shut_rdwr"])
def test_shutdown_of_a_socket_with_an_skb_verdict(guest, expect, bpf_object, how):
    observed = guest.call("shut_itself", obj=bpf_object("counted_verdicts"), how=how,
                          settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("S1", observed, how)


def test_peer_shutdown_reaches_a_socket_with_an_skb_verdict_after_its_bytes(guest, expect,
                                                                            bpf_object):
    observed = guest.call("peer_shut_wr", obj=bpf_object("counted_verdicts"),
                          settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("S2", observed)
