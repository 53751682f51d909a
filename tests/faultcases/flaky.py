"""Cases made to fail on purpose on a real guest, for --rerun-failed (tests/test_flaky_vm.py);
never collected on their own.

Each run of a case appends "<case> <attempt> <guest>" to $KCONFORM_FLAKY_STATE/runs: the state
is the host's, since the guest is replaced between attempts, and <guest> (the name of the guest's
console log, one per guest kconform starts) shows which guest each run had. Not the kernel's boot
id: a guest restored from a snapshot (--guest-boot snapshot) is a fresh guest with the saved
one's boot id.
"""
import os
from pathlib import Path


def _run(guest, case: str) -> int:
    """Record this run of `case`; its attempt number, 1 for the first."""
    state = Path(os.environ["KCONFORM_FLAKY_STATE"])
    guest.call("tests.guest.flaky:boot_id")  # the guest answers: it is up
    boot = guest.session.machine.console.log_path.name
    runs = state / "runs"
    before = runs.read_text().splitlines() if runs.exists() else []
    attempt = 1 + sum(1 for line in before if line.split()[0] == case)
    with runs.open("a") as out:
        out.write(f"{case} {attempt} {boot}\n")
    return attempt


def test_1_fails_on_its_first_attempt_only(guest):
    attempt = _run(guest, "first_only")
    assert attempt > 1, f"made to fail on its first attempt only (this is attempt {attempt})"


def test_2_always_fails(guest):
    attempt = _run(guest, "always")
    assert attempt < 0, f"made to fail on every attempt (this is attempt {attempt})"


def test_3_panics_on_its_first_attempt_only(guest):
    """A crash is never flaky: this one is not run again, though it would pass."""
    if _run(guest, "panic_first") == 1:
        guest.call("tests.guest.faults:panic")


def test_4_warns_on_its_first_attempt_only(guest):
    """Nor a splat: the kernel's WARNING fails the case as crashed, and it is not run again."""
    if _run(guest, "warning_first") == 1:
        guest.call("tests.guest.faults:fake_warning")


def test_5_passes(guest):
    _run(guest, "passes")
