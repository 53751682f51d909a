"""Issue 18 point 3 on a real guest: --rerun-failed tells a flaky case from a real failure.

tests/faultcases/flaky.py holds a case made to fail on its first attempt only, one that always
fails, one that panics the kernel and one that makes it warn (each on its first attempt only,
so each would pass if run again), and one that passes. Each run records on the host which guest
it ran on (the guest is replaced between attempts, so only the host can count them).
"""
import re
import xml.etree.ElementTree as ET

import pytest

from harness.reports import junit, results
from tests.conftest import leftover_guests
from tests.test_vm import _child_pid

pytestmark = pytest.mark.vm


def test_a_case_that_fails_once_is_flaky_and_one_that_always_fails_stays_fail(run_pytest,
                                                                                tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    proc = run_pytest("tests/faultcases/flaky.py", "--kernel", "debian-6.1", "--rerun-failed",
                      "2", "-v", env={"KCONFORM_FLAKY_STATE": str(state)})
    assert proc.returncode == 1  # the case that always fails, and the two crashes
    cases = {c.case: c for c in results.load(proc.results).cases}
    assert {name: c.verdict for name, c in cases.items()} == {
        "test_1_fails_on_its_first_attempt_only": "flaky", "test_2_always_fails": "fail",
        # a crash is never flaky: neither the panic nor the WARNING splat is run again
        "test_3_panics_on_its_first_attempt_only": "crashed",
        "test_4_warns_on_its_first_attempt_only": "crashed", "test_5_passes": "pass"}
    runs = [line.split() for line in (state / "runs").read_text().splitlines()]
    assert [(case, int(attempt)) for case, attempt, _ in runs] == [
        ("first_only", 1), ("always", 1), ("panic_first", 1), ("warning_first", 1),
        ("passes", 1),
        # after every other case of the kernel: round 1, then round 2 for the one still failing
        ("first_only", 2), ("always", 2), ("always", 3)]
    boot = [guest for *_, guest in runs]
    # the first guest ran cases 1-3 (3 panicked it); its replacement 4 and 5; then one fresh
    # guest per round, not one per case: round 1 ran both cases on one, round 2 on another
    assert boot[0] == boot[1] == boot[2] and boot[3] == boot[4]
    assert boot[5] == boot[6] and len({boot[0], boot[3], boot[5], boot[7]}) == 4, runs
    logs = sorted(p.name for p in (proc.results / "console").iterdir())
    assert logs == [f"debian-6.1-main-{n}.log" for n in range(4)], logs  # four boots

    flaky = cases["test_1_fails_on_its_first_attempt_only"]
    (attempt,) = flaky.attempts
    assert (attempt.number, attempt.verdict) == (1, "fail")
    assert "made to fail on its first attempt only (this is attempt 1)" in attempt.message
    assert attempt.console_log.endswith("/debian-6.1-main-0.log")  # the first guest's
    failing = cases["test_2_always_fails"]
    assert [(a.number, a.verdict) for a in failing.attempts] == [(1, "fail"), (2, "fail")]
    assert "(this is attempt 3)" in failing.message
    assert [re.search(r"this is attempt (\d)", a.message).group(1) for a in failing.attempts] \
        == ["1", "2"]
    # each attempt names the guest it ran on: the first, round 1's, and round 2's for the last
    assert [a.console_log.rsplit("-", 1)[1] for a in failing.attempts] == ["0.log", "2.log"]
    assert failing.console_log.endswith("/debian-6.1-main-3.log")
    assert cases["test_3_panics_on_its_first_attempt_only"].attempts == []

    xml = ET.parse(proc.results / results.REPORT_JUNIT).getroot()
    testcases = {tc.get("name"): tc for tc in xml.iter("testcase")}
    tc = testcases[junit.testcase_name(flaky)]
    assert tc.find("failure") is None and len(tc.findall("flakyFailure")) == 1
    tc = testcases[junit.testcase_name(failing)]
    assert tc.find("failure") is not None and len(tc.findall("rerunFailure")) == 2
    # the kernel's tally: these cases call no expect(), so pytest's words stand for their verdicts
    assert re.search(r"^debian-6\.1: 6\.1\.\S+ \(uname [^)]+\): 2 crashed, 1 failed, 1 flaky, "
                     r"1 passed$", proc.stdout, re.M), proc.stdout
    assert re.search(r"= 3 failed, 1 passed, 3 rerun, 1 flaky in ", proc.stdout)
    assert leftover_guests(_child_pid(proc)) == []
