"""The four redirect helpers, egress and ingress.

map_sockmap.rst, bpf_sk_redirect_map(), bpf_sk_redirect_hash(), bpf_msg_redirect_map(),
bpf_msg_redirect_hash(): "The BPF_F_INGRESS value in flags is used to select the ingress path
otherwise the egress path is selected."
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG")
BPF_F_INGRESS = 1
# How long the guest waits, on hardware, for bytes that neither arrive nor were dropped by the
# verdict (cases/guest/redirect.py ends the wait at an arrival or at the program's SK_DROP): the
# bound the wait always had, now scaled for emulation.
SETTLE_SECONDS = 1.0


@pytest.fixture
def redirect(guest, bpf_object):
    def run(**kwargs):
        return guest.call("redirect", obj=bpf_object("sockmap_progs"),
                          settle=guest.bounded_wait(SETTLE_SECONDS), **kwargs)
    return run


@pytest.mark.parametrize("kind", ["skb", "msg"])
@pytest.mark.parametrize("helper", ["map", "hash"])
@pytest.mark.parametrize("direction, flags", [("egress", 0), ("ingress", BPF_F_INGRESS)])
def test_redirect_helper_delivers_to_the_selected_path(redirect, expect, kind, helper, direction,
                                                       flags):
    observed = redirect(kind=kind, helper=helper, flags=flags)
    expect("R1", observed, direction)


@pytest.mark.parametrize("kind", ["skb", "msg"])
@pytest.mark.parametrize("helper", ["map", "hash"])
def test_redirect_flags_other_than_ingress_drop(redirect, expect, kind, helper):
    observed = redirect(kind=kind, helper=helper, flags=2)
    expect("R2", observed, kind)


@pytest.mark.parametrize("kind", ["skb", "msg"])
@pytest.mark.parametrize("target", ["missing", "listener"])
def test_redirect_to_a_missing_key_or_a_listener_drops(redirect, expect, kind, target):
    observed = redirect(kind=kind, helper="map", flags=0, target=target)
    expect("R3", observed, f"{kind}_{target}")


# Through a map with a stream parser (P7 refuses such targets on newer kernels) and through a
# map with only an skb_verdict program.
@pytest.mark.parametrize("kind", ["skb", "skb_verdict"])
@pytest.mark.parametrize("target", ["udp", "unix_stream"])
@pytest.mark.parametrize("direction, flags", [("egress", 0), ("ingress", BPF_F_INGRESS)])
def test_skb_redirect_to_udp_and_unix_targets(redirect, expect, kind, target, direction, flags):
    observed = redirect(kind=kind, helper="map", flags=flags, target=target)
    expect("R4", observed, f"{kind}_{target}_{direction}")


@pytest.mark.parametrize("target", ["udp", "unix_stream"])
def test_msg_egress_redirect_to_a_non_tcp_socket_drops_with_eacces(redirect, expect, target):
    observed = redirect(kind="msg", helper="map", flags=0, target=target)
    expect("R5", observed, target)
