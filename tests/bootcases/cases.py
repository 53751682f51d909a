"""Two cases on one guest, for tests/test_boot_health.py; never collected on their own. The
replayed machine answers every call as a healthy agent would, without running anything."""


def test_1_first_on_the_guest(guest):
    assert guest.call("tests.bootcases.cases:answered_by_the_replay") is None


def test_2_next_on_the_same_guest(guest):
    assert guest.call("tests.bootcases.cases:answered_by_the_replay") is None
