"""The cgroups sock_ops cases attach to, in real guests and on an SSH target; run by
tests/test_ssh_hardening.py, never collected on their own."""

GUEST = "tests.guest.sock_ops_cgroup:"


def test_a_case_program_sees_only_the_cases_sockets(guest, bpf_object):
    scope = guest.call(GUEST + "program_scope", obj=bpf_object("sock_ops"))
    # the client was made in the case's group; the listener (and so the socket it accepted)
    # outside it, like every other socket of the machine
    assert scope["ran"] == {"listener": 0, "accepted": 0, "connected": 1}, scope
    assert (scope["on_group"], scope["on_root"]) == (1, 0), scope
    assert scope["left_after"] == {}, scope


def test_an_agent_start_removes_only_dead_agents_groups(guest, bpf_object):
    found = guest.call(GUEST + "cleanup_at_start", obj=bpf_object("sock_ops"))
    assert found["before"] == {found["dead"]: 1, found["live"]: 1, found["other"]: 1}, found
    assert found["after"] == {found["live"]: 1, found["other"]: 1}, found
    assert found["notes"] == [(f"kconform: removed cgroup {found['dead']} left by a dead agent "
                               "(1 program(s) detached)")], found


def test_killed_in_a_case(guest, bpf_object):
    guest.call(GUEST + "die_in_a_case_cgroup", obj=bpf_object("sock_ops"))


def test_the_next_connection_finds_nothing_left(guest):
    assert guest.call(GUEST + "left_behind") == {}
