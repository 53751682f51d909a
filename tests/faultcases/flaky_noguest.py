"""Cases that fail on purpose without a guest, for --rerun-failed's protocol and reports
(tests/test_flaky.py); never collected on their own. They take the `kernel` parameter only, so
nothing is fetched or booted, and set the user_properties the real `expect` fixture sets.

Each run appends "<kernel> <case> <attempt> <worker>" to $KCONFORM_FLAKY_STATE/runs (the host's
state: a rerun's guest is a fresh one, so only the host can count attempts).
"""
import json
import os
from pathlib import Path

import pytest

from harness.plugin.run import CRASHED_KEY


def _run(kernel: str, case: str) -> int:
    runs = Path(os.environ["KCONFORM_FLAKY_STATE"]) / "runs"
    before = runs.read_text().splitlines() if runs.exists() else []
    attempt = 1 + sum(1 for line in before if line.split()[:2] == [kernel, case])
    with runs.open("a") as out:
        out.write(f"{kernel} {case} {attempt} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\n")
    return attempt


def _judged(request, behaviour, verdict, observed):
    request.node.user_properties += [
        ("behaviour", behaviour), ("variant", ""), ("section", "User space / fake(): 'a quote'"),
        ("title", f"fake behaviour {behaviour}"), ("expected", json.dumps({"update": "OK"})),
        ("observed", json.dumps(observed)), ("source", "tests/faultcases/flaky_noguest.py"),
        ("reason", ""), ("verdict", verdict)]


def test_a_fails_on_its_first_attempt_only(request, kernel):
    attempt = _run(kernel, "first_only")
    if attempt == 1:
        _judged(request, "U1", "fail", {"update": "EBUSY"})
        pytest.fail(f"mismatch: update: expected 'OK', observed 'EBUSY' (attempt {attempt})",
                    pytrace=False)
    _judged(request, "U1", "pass", {"update": "OK"})


def test_b_always_fails(request, kernel):
    attempt = _run(kernel, "always")
    _judged(request, "U2", "fail", {"update": f"EBUSY{attempt}"})
    pytest.fail(f"mismatch: update: expected 'OK', observed 'EBUSY{attempt}'", pytrace=False)


def test_c_crashes_on_its_first_attempt_only(request, kernel):
    if _run(kernel, "crash_first") == 1:
        request.node.stash[CRASHED_KEY] = True  # what the guest fixture marks when it died
        pytest.fail("the guest died during tests.guest.faults:panic", pytrace=False)


def test_d_passes(request, kernel):
    _run(kernel, "passes")
    _judged(request, "U4", "pass", {"update": "OK"})
