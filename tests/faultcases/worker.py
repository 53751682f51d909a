"""A test that kills its own xdist worker while its guest is up; run by tests/test_vm.py, never
collected on its own."""
import os
import signal


def test_1_kills_its_worker(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no cleanup runs here


def test_2_after(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
