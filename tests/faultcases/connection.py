"""A lost SSH connection between healthy tests, run on an SSH target by tests/test_targets_vm.py;
never collected on its own."""


def test_1_before(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")


def test_2_connection_lost(guest):
    guest.call("tests.guest.faults:drop_connection")


def test_3_after(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
