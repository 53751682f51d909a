"""The generic map helpers on sockmaps from BPF programs: bpf_map_lookup_elem(),
bpf_map_update_elem() and bpf_map_delete_elem() in "Kernel BPF", and which program types the
verifier lets use them.
"""


def test_tc_program_copies_a_socket_between_maps(guest, expect, bpf_object):
    expect("O2", guest.call("tc_copies_socket", obj=bpf_object("update_from_bpf")))


def test_bpf_lookup_of_an_empty_slot_is_null(guest, expect, bpf_object):
    expect("L4", guest.call("tc_lookup_of_empty_slot", obj=bpf_object("update_from_bpf")))


def test_sock_ops_cannot_use_the_generic_update_helper(guest, expect, bpf_object):
    expect("O2b", guest.call("load_result", obj=bpf_object("update_from_bpf"),
                             prog="prog_sockops_generic_update"))


def test_kprobe_cannot_delete_from_a_sockmap(guest, expect, bpf_object):
    expect("O3", guest.call("load_result", obj=bpf_object("update_from_bpf"),
                            prog="prog_kprobe_delete"))
