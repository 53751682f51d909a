"""Which sockets a sockmap/sockhash accepts (socket family, type and state).

map_sockmap.rst, "User space / bpf_map_update_elem()": the update retrieves the socket behind
the fd and attaches a psock; sockets that cannot carry one are refused.
"""
import pytest

from cases.maps import EACH_MAP_TYPE

FAMILIES = pytest.mark.parametrize("family", [
    "ipv4", pytest.param("ipv6", marks=pytest.mark.requires_config("CONFIG_IPV6"))])


@EACH_MAP_TYPE
@FAMILIES
def test_tcp_socket_not_listening_or_connected_is_eopnotsupp(guest, expect, map_type, family):
    expect("U8", guest.call("tcp_states", map_type=map_type, family=family), map_type)


@EACH_MAP_TYPE
@FAMILIES
def test_tcp_listening_and_established_sockets_are_accepted(guest, expect, map_type, family):
    expect("U9", guest.call("tcp_states", map_type=map_type, family=family), map_type)


@EACH_MAP_TYPE
@FAMILIES
def test_udp_socket_never_bound(guest, expect, map_type, family):
    expect("U10", guest.call("udp_states", map_type=map_type, family=family), map_type)


@EACH_MAP_TYPE
@FAMILIES
def test_udp_bound_and_connected_sockets_are_accepted(guest, expect, map_type, family):
    expect("U11", guest.call("udp_states", map_type=map_type, family=family), map_type)


@EACH_MAP_TYPE
def test_unix_dgram_socket(guest, expect, map_type):
    expect("U12", guest.call("unix_kinds", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_unix_stream_socketpair(guest, expect, map_type):
    expect("U13", guest.call("unix_kinds", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_raw_and_packet_sockets_are_eopnotsupp(guest, expect, map_type):
    expect("U16", guest.call("other_families", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_unconnected_unix_stream_socket_is_refused(guest, expect, map_type):
    expect("U14", guest.call("unix_stream_unconnected", map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_vsock_stream_socket_only_when_connected(guest, expect, map_type):
    obs = guest.call("vsock_states", map_type=map_type)
    if "unavailable" in obs:
        pytest.skip(f"no vsock loopback transport in this guest: {obs['unavailable']}")
    expect("U15", obs, map_type)
