"""A case whose rerun cannot be set up (its round's guest could not be had, say): it must end as
its real failure, not as a case that never ran (tests/test_flaky.py). Never collected alone."""
import pytest

from tests.faultcases.flaky_noguest import _judged, _run


@pytest.fixture
def round_guest(kernel):
    if _run(kernel, "setup") > 1:  # the first run's setup works, a rerun's does not
        raise RuntimeError("not booting it again: the guest died 3 times")


def test_fails_then_its_rerun_fails_in_setup(request, kernel, round_guest):
    _judged(request, "U1", "fail", {"update": "EBUSY"})
    pytest.fail("mismatch: update: expected 'OK', observed 'EBUSY'", pytrace=False)
