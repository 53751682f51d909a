"""Attaching programs to maps (BPF_PROG_ATTACH on the map fd) and what programs do to inserts.

map_sockmap.rst: the attach types msg_parser/BPF_SK_MSG_VERDICT, stream_parser, stream_verdict,
skb_verdict; "Users are not allowed to attach stream_verdict and skb_verdict programs to the same
map"; "If adding a sock object to a map would result in having multiple parser programs the update
will return an EBUSY error."
"""
import pytest

from cases.maps import EACH_MAP_TYPE

pytestmark = pytest.mark.requires_config("CONFIG_BPF_STREAM_PARSER", "CONFIG_NET_SOCK_MSG")


@EACH_MAP_TYPE
def test_each_attach_type_attaches_and_reattaching_replaces(guest, expect, bpf_object, map_type):
    expect("P1", guest.call("attach_each_type", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_skb_verdict_attach_type(guest, expect, bpf_object, map_type):
    expect("P2", guest.call("attach_skb_verdict", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
@pytest.mark.parametrize("first", ["stream_verdict", "skb_verdict"])
def test_stream_verdict_and_skb_verdict_on_one_map_is_ebusy(guest, expect, bpf_object, map_type,
                                                            first):
    expect("P3", guest.call("stream_and_skb_verdict_together", obj=bpf_object("sockmap_progs"),
                            map_type=map_type, first=first), first)


@EACH_MAP_TYPE
def test_socket_with_parser_into_a_second_map_with_parser_is_ebusy(guest, expect, bpf_object,
                                                                   map_type):
    expect("U18", guest.call("socket_with_programs_into_second_map",
                             obj=bpf_object("sockmap_progs"), map_type=map_type,
                             with_programs=True), map_type)


@EACH_MAP_TYPE
def test_attach_flags_and_non_sockmap_targets_are_refused(guest, expect, bpf_object, map_type):
    expect("P4", guest.call("attach_errors", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_detach_of_a_program_not_attached_or_of_another_type(guest, expect, bpf_object,
                                                            map_type):
    expect("P6", guest.call("detach_errors", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_udp_and_unix_sockets_into_a_map_with_a_stream_parser(guest, expect, bpf_object,
                                                             map_type):
    expect("P7", guest.call("non_tcp_into_map_with_parser", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_prog_query_on_the_map_fd(guest, expect, bpf_object, map_type):
    expect("P8", guest.call("query_programs", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_bpf_link_for_a_map_attach_type(guest, expect, bpf_object, map_type):
    expect("K1", guest.call("link_for_map", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)


@EACH_MAP_TYPE
def test_bpf_link_errors(guest, expect, bpf_object, map_type):
    expect("K2", guest.call("link_errors", obj=bpf_object("sockmap_progs"),
                            map_type=map_type), map_type)
