"""arm64 guests (issue 13): Debian's arm64 kernel booted under qemu-system-aarch64 (TCG) on the
arm64 build of the pinned root, compared with the same version's amd64 kernel; and the fault
paths (crash fingerprint, splat scan) on a real arm64 console."""
import json
import re
import subprocess
import sys

import pytest

from harness.reports import results

from .conftest import REPO, verdicts_of

pytestmark = pytest.mark.vm

AMD64, ARM64 = "debian-6.12", "debian-6.12-arm64"
JUDGED = {"pass", "expected-difference", "skipped"}


def test_the_suite_runs_on_arm64_and_compare_says_what_differs_from_amd64(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "suite", "--compare", AMD64, ARM64, "-n", "2",
         "-p", "no:cacheprovider", f"--results-dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=2400)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    run = results.load(out)
    arm64 = verdicts_of(out, ARM64)
    amd64 = verdicts_of(out, AMD64)
    assert len(arm64) == len(amd64) > 700  # every case of the suite ran on both
    wrong = {case: verdict for case, verdict in arm64.items() if verdict not in JUDGED}
    assert wrong == {}, proc.stdout[-4000:]
    kernel = run.kernels[ARM64]
    assert (kernel.arch, run.kernels[AMD64].arch) == ("arm64", "amd64")
    assert kernel.bpf_jit_enable == 1  # Debian's arm64 kernels run BPF JITed, as amd64's do
    assert re.search(r"debian-bookworm@\w+ arm64 \(python3 ", kernel.rootfs or ""), kernel
    # compare pairs the two architectures of one version and names them
    assert re.search(r"6\.12\.\d+-\d+ amd64 -> arm64", proc.stdout), proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:]  # no behaviour differs between them


def test_a_crash_and_a_warning_on_arm64_fail_their_tests_with_arm64s_evidence(run_pytest,
                                                                              tmp_path):
    known = tmp_path / "known_crashes.toml"
    known.write_text('[[crash]]\nfingerprint = "sysrq_handle_crash|__handle_sysrq"\n'
                     'reason = "sysrq-trigger crash injected by kconform\'s tests"\n')
    proc = run_pytest("tests/faultcases/inject.py", "--kernel", ARM64, "-v", "-rA",
                      "-k", "before or panic or warning or after", "--known-crashes", str(known))
    outcome = dict(re.findall(rf"::(test_\w+)\[{ARM64}\] (PASSED|FAILED)", proc.stdout))
    assert outcome == {"test_1_before": "PASSED", "test_2_panic": "FAILED",
                       "test_2_warning": "FAILED", "test_3_after": "PASSED"}, proc.stdout
    cases = {c.case: c for c in results.load(proc.results).cases}
    panic = cases["test_2_panic"]
    assert panic.verdict == "crashed"
    # arm64 prints "Call trace:", with the unwinder's frames and no "?" guesses
    assert (panic.known_crash or "").startswith("known crash: sysrq-trigger"), \
        json.dumps(panic.console)
    assert "WARNING: CPU: 0 PID:" in cases["test_2_warning"].message
