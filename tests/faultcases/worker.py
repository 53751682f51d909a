"""A test that kills its own xdist worker while its guest is up; run by tests/test_vm.py, never
collected on its own. xdist runs a crashed test again on the replacement worker, so it kills only
the first time (KCONFORM_KILLED_MARK records that it did)."""
import os
import signal
from pathlib import Path


def test_1_kills_its_worker(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
    mark = Path(os.environ["KCONFORM_KILLED_MARK"])
    if not mark.exists():
        mark.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: no cleanup runs here


def test_2_after(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
