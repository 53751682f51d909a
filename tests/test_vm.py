"""kconform on real kernels: the suite, a wrong expectation, injected faults, interrupts, a killed
worker, a damaged cache, and plain debian-5.10 past the E1/E3 deadlock.

These boot Debian kernels under QEMU (TCG here), so they take minutes; `-m "not vm"` skips them.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from harness.cache import cache_dir, check_manifest
from harness.kernels import KernelProvider
from harness.reports import results
from harness.versions import compare_debian
from tests.conftest import DEADLOCKING_5_10, REPO, leftover_guests

pytestmark = pytest.mark.vm


def test_suite_passes_on_5_10_and_6_1_with_one_boot_per_kernel(reference_run):
    proc = reference_run
    assert proc.returncode == 0
    assert re.search(r"\b\d+ passed\b", proc.stdout) and "failed" not in proc.stdout
    # 5.10 predates unix sockets in sockmap and skb_verdict: the differences are asserted
    assert re.search(rf"^{re.escape(DEADLOCKING_5_10)}: 5\.10\.223-1 \(uname [^)]+\): "
                     r"\d+ expected-difference", proc.stdout, re.M)
    assert re.search(r"^debian-6.1: 6\.1\.\S+ \(uname [^)]+\): "
                     r"(\d+ expected-difference, )?\d+ pass$", proc.stdout, re.M)
    logs = sorted(p.name for p in (proc.results / "console").iterdir())
    # One guest per kernel, on one worker each: loadgroup kept each kernel together. 5.10.223
    # deadlocks on the doc's SK_PASS examples (E1, E3: an expected, cited hang). Those run last,
    # so it boots one replacement (between the two hangs), none after the last. Console logs are
    # named <kernel>-<worker>-<n>, the kernel's '@' written as '_'.
    prefixes = {"5.10": DEADLOCKING_5_10.replace("@", "_") + "-", "6.1": "debian-6.1-"}
    by_kernel = {k: [log[len(prefix):] for log in logs if log.startswith(prefix)]
                 for k, prefix in prefixes.items()}
    assert len(by_kernel["6.1"]) == 1 and len(by_kernel["5.10"]) == 2, logs
    assert len({log.split("-")[0] for log in by_kernel["5.10"]}) == 1, logs  # one worker
    cases = results.load(proc.results).for_kernel(DEADLOCKING_5_10)
    hangs = sorted(c.behaviour for c in cases if c.observed == {"guest": "hang"})
    assert hangs == ["E1", "E3"] and all(c.verdict == "expected-difference" for c in cases
                                         if c.behaviour in ("E1", "E3")), hangs
    text = proc.junit.read_text()
    assert 'name="kernel_version" value="5.10.223-1"' in text
    assert 'name="kernel_version" value="6.1.' in text


def test_debian_5_10_follows_its_security_suite_past_the_e1_e3_deadlock(run_pytest):
    """Plain debian-5.10 is the newest bullseye-security build, which has 8ca2a1eeadf0 (5.10.233):
    the doc's SK_PASS examples pass there, on one boot (no hang, no replacement guest)."""
    proc = run_pytest("cases", "--kernel", "debian-5.10", "--behaviour", "E1,E3")
    assert proc.returncode == 0
    res = results.load(proc.results)
    kernel = res.kernels["debian-5.10"]
    assert kernel.suite == "bullseye-security", kernel
    assert kernel.version and compare_debian(kernel.version, "5.10.233") > 0, kernel.version
    assert sorted(c.behaviour for c in res.cases) == ["E1", "E1", "E3"]
    assert {c.verdict for c in res.cases} == {"pass"}, [(c.case, c.observed) for c in res.cases]
    assert len(list((proc.results / "console").iterdir())) == 1


def test_a_wrong_expectation_makes_the_case_fail(run_pytest, tmp_path):
    """Proof that the cases can fail: flip L2 (ENOSPC) and the real kernel disagrees."""
    data = (REPO / "cases" / "expectations.toml").read_text()
    flipped = data.replace('expect = { update = "OK", lookup = "ENOSPC" }',
                           'expect = { update = "OK", lookup = "OK" }')
    assert flipped != data
    path = tmp_path / "flipped.toml"
    path.write_text(flipped)
    proc = run_pytest("cases", "--kernel", "debian-6.1", "--expectations", str(path), "-k", "u32")
    assert proc.returncode == 1
    assert "2 failed" in proc.stdout
    assert "mismatch: lookup: expected 'OK', observed 'ENOSPC'" in proc.stdout
    assert "downloading" not in proc.stdout  # the first test fetched it; the cache serves it now


def test_injected_faults_fail_only_their_test_and_the_run_goes_on(run_pytest, tmp_path):
    known = tmp_path / "known_crashes.toml"
    known.write_text('[[crash]]\nfingerprint = "sysrq_handle_crash|__handle_sysrq"\n'
                     'reason = "sysrq-trigger crash injected by kconform\'s tests"\n')
    proc = run_pytest("tests/faultcases/inject.py", "--kernel", "debian-6.1", "-v", "-rA",
                      "--known-crashes", str(known))
    out = proc.stdout
    outcome = dict(re.findall(r"::(test_\w+)\[debian-6.1\] (PASSED|FAILED)", out))
    assert outcome == {"test_1_before": "PASSED", "test_2_panic": "FAILED",
                       "test_2_hang": "FAILED", "test_2_warning": "FAILED",
                       "test_2_agent_dies": "FAILED", "test_2_qemu_killed": "FAILED",
                       "test_2_verifier_rejects": "FAILED", "test_3_after": "PASSED"}, out
    sections = _failure_sections(out)
    assert "Kernel panic - not syncing: sysrq triggered crash" in sections["test_2_panic"]
    assert "crash fingerprint: sysrq_handle_crash|__handle_sysrq" in sections["test_2_panic"]
    assert ("known crash: sysrq-trigger crash injected by kconform's tests"
            in sections["test_2_panic"])
    assert "ran past 3" in sections["test_2_hang"]
    assert "WARNING: CPU: 0 PID:" in sections["test_2_warning"]
    assert "the guest died during" in sections["test_2_agent_dies"]
    assert re.search(r"the guest died during \S+hang \(the guest exited \(status -?\d+\)\)",
                     sections["test_2_qemu_killed"]), sections["test_2_qemu_killed"]
    assert "known crash" not in sections["test_2_agent_dies"]
    rejected = sections["test_2_verifier_rejects"]
    assert "tests.guest.faults:load_rejected raised in the guest: BpfError: " in rejected
    assert re.search(r"verifier log:\n--- read_past_the_packet\n(.*\n)*invalid access to packet",
                     rejected), rejected
    cases = {c.case: c for c in results.load(proc.results).cases}
    assert len(cases) == 8 and cases["test_2_panic"].verdict == "crashed"
    assert cases["test_2_verifier_rejects"].verdict == "fail"  # the guest is fine
    assert cases["test_2_panic"].known_crash.startswith("known crash: sysrq-trigger")
    # on the default boot, every guest that replaced a crashed or hung one was restored from
    # the kernel's snapshot (issue #17), saved by the first at the latest
    logs = sorted((proc.results / "console").iterdir(), key=lambda p: int(p.stem.rsplit("-")[-1]))
    assert len(logs) == 4, logs  # the panic, the agent's death and QEMU's each cost a guest
    assert all("kconform: restoring the guest saved at" in log.read_text() for log in logs[1:])
    record = results.load(proc.results).kernels["debian-6.1"]
    assert (record.guest_boot, record.rootfs) == ("restored", "image of host files")
    assert leftover_guests(_child_pid(proc)) == []


def _failure_sections(out: str) -> dict:
    parts = re.split(r"_{3,} (test_\w+)\[debian-6.1\] _{3,}", out)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _child_pid(proc) -> int:
    match = re.search(r"--name kconform-(\d+)", proc.stdout)
    assert match, "no vng command line in the output"
    return int(match.group(1))


def _qemu_guests() -> set[str]:
    out = subprocess.run(["pgrep", "-f", "qemu-system.* -name kconform-"], capture_output=True,
                         text=True).stdout
    return set(out.split())


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_leaves_valid_reports_and_no_processes(tmp_path, signum):
    out_dir = tmp_path / "results"
    before = _qemu_guests()
    # The whole suite, so the signal lands while cases run. It is sent once pytest's progress
    # line shows three cases done, read as the child prints it (unbuffered): report.json is
    # rewritten at most every 1/20 of the run, and the suite on a direct boot is over before a
    # poll of it sees three cases.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             f"--results-dir={out_dir}", "cases", "--kernel", "debian-6.1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    seen = bytearray()

    def read() -> None:
        while chunk := os.read(proc.stdout.fileno(), 4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def finished() -> int:  # the dots of "cases/test_x.py ..." lines
        return sum(line.split(" ", 1)[1].count(".") for line in bytes(seen).decode(
            errors="replace").splitlines() if line.startswith("cases/") and " " in line)

    try:
        assert _wait_for(lambda: finished() >= 3, 300), "no case finished"
        proc.send_signal(signum)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        proc.kill()
    out = bytes(seen).decode(errors="replace")
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
    res = results.load(out_dir)
    assert 3 <= len(res.cases) < 150 and res.runs[0].complete is False
    assert len(list(ET.parse(out_dir / results.REPORT_JUNIT).getroot().iter("testcase"))) \
        == len(res.cases)
    assert leftover_guests(proc.pid) == [] and _qemu_guests() == before


def test_a_killed_worker_leaves_no_guest_behind(run_pytest, tmp_path):
    before = _qemu_guests()
    proc = run_pytest("tests/faultcases/worker.py", "--kernel", "debian-6.1", "-n", "1",
                      env={"KCONFORM_KILLED_MARK": str(tmp_path / "killed")})
    assert proc.returncode == 1
    assert re.search(r"worker 'gw0' crashed while running .*test_1_kills_its_worker", proc.stdout)
    # xdist reports the crash as a failure and runs the test again on a new worker
    assert "1 failed, 2 passed" in proc.stdout
    assert {c.case: c.verdict for c in results.load(proc.results).cases} == {
        "test_1_kills_its_worker": "pass", "test_2_after": "pass"}  # the last run counts
    # the dead worker's guest is reaped, though nothing ran in that worker after the kill
    assert _wait_for(lambda: _qemu_guests() == before, 15), _qemu_guests() - before


def test_a_truncated_cached_kernel_is_fetched_again(run_pytest, tmp_path):
    """A private cache holding a copy of the debian-6.1 tree whose image was cut in half."""
    real_cache = cache_dir()
    real = KernelProvider().get("debian-6.1")
    cache = tmp_path / "cache"
    (cache / "trees").mkdir(parents=True)
    tree = cache / "trees" / real.root.name
    subprocess.run(["cp", "-al", str(real.root), str(tree)], check=True)
    for keep in ["apt", "resolved", *[p.name for p in real_cache.glob("kvm-kernel-probe-*")]]:
        subprocess.run(["cp", "-a", str(real_cache / keep), str(cache / keep)], check=True)
    image = tree / "boot" / real.vmlinuz.name
    whole = image.read_bytes()
    image.unlink()  # a hard link to the real cache: write a truncated copy in its place
    image.write_bytes(whole[:len(whole) // 2])
    proc = run_pytest("cases", "--kernel", "debian-6.1", "-k", "u32",
                      env={"KCONFORM_CACHE": str(cache)})
    assert proc.returncode == 0 and "2 passed" in proc.stdout
    assert (f"cached tree {tree} is damaged (boot/{real.vmlinuz.name} is {len(whole) // 2} bytes, "
            f"expected {len(whole)}); fetching again") in proc.stdout
    assert f"debian-6.1: downloading {real.package_version}" in proc.stdout
    assert check_manifest(tree)[0] and check_manifest(real.root)[0]
