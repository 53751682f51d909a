"""A map with many entries, and one socket in many maps.

map_sockmap.rst, introduction: the maps hold "references to sockets via their socket
descriptors", a sockmap "backed by an array that uses an integer key", a sockhash "hash backed";
and "A sock object may be in multiple maps, but can only inherit a single parse or verdict
program. If adding a sock object to a map would result in having multiple parser programs the
update will return an EBUSY error." Nothing in the doc limits either number below a map's
max_entries.
"""
import pytest

from cases.maps import EACH_MAP_TYPE

pytestmark = pytest.mark.requires_config("CONFIG_NET_SOCK_MSG")

# The bound on waiting, on hardware, for closed sockets to leave their maps (the release may be
# deferred to a work item): it ends as soon as they are gone.
SETTLE_SECONDS = 1.0


@EACH_MAP_TYPE
def test_a_map_of_512_sockets_looks_up_walks_and_empties(guest, expect, map_type):
    observed = guest.call("many_entries", map_type=map_type,
                          settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("N3", observed, map_type)


@EACH_MAP_TYPE
def test_one_socket_in_64_maps_inherits_one_program_of_each_kind(guest, expect, bpf_object,
                                                                 map_type):
    observed = guest.call("one_socket_in_many_maps", obj=bpf_object("counted_verdicts"),
                          map_type=map_type, settle=guest.bounded_wait(SETTLE_SECONDS))
    expect("N4", observed, map_type)
