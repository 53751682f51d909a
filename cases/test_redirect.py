"""The four redirect helpers, egress and ingress.

map_sockmap.rst, bpf_sk_redirect_map(), bpf_sk_redirect_hash(), bpf_msg_redirect_map(),
bpf_msg_redirect_hash(): "The BPF_F_INGRESS value in flags is used to select the ingress path
otherwise the egress path is selected."
"""
import pytest

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG")
BPF_F_INGRESS = 1


@pytest.mark.parametrize("kind", ["skb", "msg"])
@pytest.mark.parametrize("helper", ["map", "hash"])
@pytest.mark.parametrize("direction, flags", [("egress", 0), ("ingress", BPF_F_INGRESS)])
def test_redirect_helper_delivers_to_the_selected_path(guest, expect, bpf_object, kind, helper,
                                                       direction, flags):
    observed = guest.call("redirect", obj=bpf_object("sockmap_progs"), kind=kind, helper=helper,
                          flags=flags)
    expect("R1", observed, direction)
