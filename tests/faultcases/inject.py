"""Faults injected into real guests; run by tests/test_vm.py, never collected on their own.

Each scenario puts one fault between healthy tests, so the test that caused it can be checked to
fail with the evidence and the ones after it to still run on a replacement guest.
"""
import subprocess
import threading
from pathlib import Path

from harness.bpf import build
from harness.machines.qemu import guest_name


def test_1_before(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")


def test_2_panic(guest):
    guest.call("tests.guest.faults:panic")


def test_2_hang(guest):
    guest.call("tests.guest.faults:hang", seconds=60, timeout=3)


def test_2_warning(guest):
    guest.call("tests.guest.faults:fake_warning")


def test_2_agent_dies(guest):
    guest.call("tests.guest.faults:kill_agent")


def test_2_qemu_killed(guest):
    """QEMU killed from outside (the OOM killer, an impatient admin) in the middle of a call."""
    threading.Timer(2.0, subprocess.run, args=(
        ["pkill", "-KILL", "-f", f"/qemu-system-[^ ]+ .*-name {guest_name()} "],)).start()
    guest.call("tests.guest.faults:hang", seconds=60)


def test_2_verifier_rejects(guest):
    rejected = build("rejected", source_dir=Path(__file__).parent.parent / "bpf", arch=guest.arch)
    guest.call("tests.guest.faults:load_rejected", obj=rejected)


def test_3_after(guest):
    assert "pid" in guest.call("tests.guest.faults:healthy")
