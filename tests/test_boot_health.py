"""A splat while the kernel boots is checked too: saved boots of a real debian-6.1 guest, replayed
through the plugin by a fake machine (tests/bootcases/replay.py), no QEMU."""
from __future__ import annotations

import os
import subprocess
import sys

from harness.paths import REPO_ROOT
from harness.reports import results


def replay(tmp_path, stem: str, console: str | None = None,
           ) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.bootcases.replay",
         "tests/bootcases/cases.py", "--kernel", "debian-6.1", f"--results-dir={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KCONFORM_REPLAY_BOOT": stem,
             **({"KCONFORM_REPLAY_CONSOLE": console} if console else {})})
    verdicts = {c.case: str(c.verdict) for c in results.load(out).cases}
    return proc, verdicts


def test_a_warning_while_booting_fails_the_first_test_on_that_guest(tmp_path):
    """tests/data/boot-6.1-warning.*: debian-6.1 booted with a WARNING record written to
    /dev/kmsg before the agent started (the way tests/guest/faults.py:fake_warning writes one)."""
    proc, verdicts = replay(tmp_path, "boot-6.1-warning")
    assert proc.returncode == 1, proc.stdout
    assert "the kernel reported a problem while it booted" in proc.stdout
    assert "WARNING: CPU: 0 PID: 1 at net/core/sock_map.c:1 kconform_boot_warning" in proc.stdout
    assert verdicts == {"test_1_first_on_the_guest": "crashed",
                        "test_2_next_on_the_same_guest": "pass"}
    assert "debian-6.1: 6.1.176-1 (uname 6.1.0-50-amd64): 1 crashed, 1 pass" in proc.stdout


def test_a_clean_boot_fails_nothing(tmp_path):
    """tests/data/boot-6.1-clean.hello.json is that hello with the WARNING record taken out of
    its boot log (replayed with boot-6.1-clean.log, a real clean boot's console)."""
    proc, verdicts = replay(tmp_path, "boot-6.1-clean")
    assert proc.returncode == 0, proc.stdout
    assert set(verdicts.values()) == {"pass"}


def test_an_ssh_targets_old_taint_is_no_boot_finding(tmp_path):
    """tests/data/ssh-6.1-tainted.hello.json: the hello an agent on an SSH target sends (no
    --boot-log, so no boot_log) from a kernel tainted W since some earlier day: not this run's."""
    proc, verdicts = replay(tmp_path, "ssh-6.1-tainted", console="boot-6.1-clean.log")
    assert proc.returncode == 0, proc.stdout
    assert set(verdicts.values()) == {"pass"}
