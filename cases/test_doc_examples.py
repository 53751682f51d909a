"""The doc's own examples (map_sockmap.rst, "Examples"), compiled as written and run on sockets:
the sockmap verdict that redirects by local port 10000, the sockhash verdict keyed by
struct socket_key, and the user-space create_sample_sockmap().
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER")
DOC_PORT = 10000
# Some stable kernels deadlock on these (E1, E3): say so sooner than the case timeout.
HANG_TIMEOUT = 10
# How long the guest waits, on hardware, for bytes that reach neither the client nor the server
# application (a drop: cases/guest/doc_examples.py ends every other wait at the first arrival);
# an echo comes through the server's backlog work within milliseconds.
SETTLE_SECONDS = 0.25


@pytest.mark.parametrize("port", [DOC_PORT, DOC_PORT + 1], ids=["port_10000", "other_port"])
def test_local_port_verdict_redirects_only_port_10000(guest, expect, bpf_object, port):
    expect("E1", guest.call("local_port_verdict", obj=bpf_object("doc_examples"), port=port,
                            settle=guest.bounded_wait(SETTLE_SECONDS), timeout=HANG_TIMEOUT),
           "port_10000" if port == DOC_PORT else "other_port")


@pytest.mark.parametrize("key_layout", ["as_documented", "ports_host_order"])
def test_socket_key_verdict_finds_the_socket_by_its_4_tuple(guest, expect, bpf_object,
                                                            key_layout):
    expect("E2", guest.call("socket_key_verdict", obj=bpf_object("doc_examples"),
                            key_layout=key_layout, settle=guest.bounded_wait(SETTLE_SECONDS),
                            timeout=HANG_TIMEOUT), key_layout)


def test_user_space_sample_creates_attaches_and_inserts(guest, expect, bpf_object):
    expect("E3", guest.call("user_space_sample", obj=bpf_object("doc_examples"),
                            settle=guest.bounded_wait(SETTLE_SECONDS), timeout=HANG_TIMEOUT))
