"""Cases that need no guest, for the reporting tests (tests/test_report.py); never collected on
their own. They take the `kernel` parameter only, so nothing is fetched or booted, and set the
user_properties that the real `expect` fixture sets."""
import json
import os
import signal
import time
from pathlib import Path

import pytest


def _judged(request, behaviour, verdict, observed, reason="", source="tests/reportcases"):
    request.node.user_properties += [
        ("behaviour", behaviour), ("variant", ""), ("section", "User space / fake(): 'a quote'"),
        ("title", f"fake behaviour {behaviour}"), ("expected", json.dumps(observed)),
        ("observed", json.dumps(observed)), ("source", source), ("reason", reason),
        ("verdict", verdict)]


def test_a_pass(request, kernel):
    _judged(request, "U1", "pass", {"update": "OK"})


def test_b_expected_difference_on_5_10(request, kernel):
    if kernel == "debian-5.10":
        _judged(request, "U2", "expected-difference", {"update": "EOPNOTSUPP"},
                reason="came in 5.15", source="a commit")
    else:
        _judged(request, "U2", "pass", {"update": "OK"})


def test_c_fails_before_expect(kernel):
    raise RuntimeError("the guest-side function raised")
    expect("U3", {})  # noqa: F821 - never reached; tells the report which behaviour this is


@pytest.mark.behaviour("U4")
def test_d_marked(kernel):
    assert kernel == "debian-5.10", "only 5.10 passes this one"


@pytest.mark.parametrize("behaviour", ["U5"])
def test_d_behaviour_as_parameter(kernel, behaviour):
    raise RuntimeError("no observation")
    expect(behaviour, {})  # noqa: F821 - never reached either


# Cases that finish before test_e_killed on the second kernel (tests/test_report.py counts them).
FINISHED_BEFORE_THE_KILL = 11


def test_e_killed(request, kernel):
    if os.environ.get("KCONFORM_FAKE_KILL") == kernel:
        if not hasattr(request.config, "workerinput"):
            _wait_for_the_reports(Path(request.config.option.results_dir))
        os.kill(os.getpid(), signal.SIGKILL)  # the run dies here, as on a host OOM or kill -9


def _wait_for_the_reports(results):
    """The reports are rewritten as cases finish, but a rewrite that took long waits a moment
    (recording.py): on a loaded machine the case before this one may not be written yet. Kill
    once it is (bounded), so the test sees what a kill at any later moment leaves."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            cases = json.loads((results / "report.json").read_text())["cases"]
        except (OSError, ValueError, KeyError):
            cases = []
        if len(cases) >= FINISHED_BEFORE_THE_KILL:
            return
        time.sleep(0.05)
