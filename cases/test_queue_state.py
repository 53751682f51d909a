"""Bytes a verdict program queued on a socket, as FIONREAD and MSG_PEEK see them.

map_sockmap.rst, introduction: "When a socket is inserted into one of these maps, its socket
callbacks are replaced and a struct sk_psock is attached to it", and the verdict program "can
return a verdict of __SK_DROP, __SK_PASS, or __SK_REDIRECT"; the redirect helpers' BPF_F_INGRESS
"is used to select the ingress path". Bytes that pass, or are redirected to a socket's ingress,
are that socket's received data: the doc gives them no other semantics, so FIONREAD counts them
and recv(MSG_PEEK) returns them without taking them, as for any received bytes.
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG")

# The bound on waiting, on hardware, for queued bytes to make the reader readable: they come
# within milliseconds, and the wait ends there; only a reader that never turns readable waits
# it out.
SETTLE_SECONDS = 0.5


def test_fionread_and_peek_see_bytes_an_skb_verdict_passed_on_tcp(guest, expect, bpf_object):
    observed = guest.call("passed_to_itself", obj=bpf_object("counted_verdicts"), kind="tcp",
                          settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("Q1", observed)


@pytest.mark.parametrize("program", ["skb", "msg"])
def test_fionread_and_peek_see_bytes_redirected_to_a_tcp_sockets_ingress(guest, expect,
                                                                         bpf_object, program):
    observed = guest.call("redirected_into", obj=bpf_object("counted_verdicts"),
                          program=program, settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("Q2", observed, program)


def test_fionread_and_peek_see_a_datagram_an_skb_verdict_passed_on_udp(guest, expect,
                                                                       bpf_object):
    observed = guest.call("passed_to_itself", obj=bpf_object("counted_verdicts"), kind="udp",
                          settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("Q3", observed)


def test_fionread_and_peek_of_bytes_an_skb_verdict_passed_on_unix_stream(guest, expect,
                                                                       bpf_object):
    observed = guest.call("passed_to_itself", obj=bpf_object("counted_verdicts"),
                          kind="unix_stream", settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("Q4", observed)


# Without a verdict nothing takes the bytes off the receive queue: a kernel that counts only the
# psock queue there (929e30f93125 before 04af4efde58a) says 0.
def test_fionread_counts_bytes_of_a_tcp_socket_in_a_map_without_a_verdict(guest, expect):
    observed = guest.call("in_a_map_without_verdict", settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("Q5", observed)
