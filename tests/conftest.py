import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The last Debian 5.10 with the E1/E3 deadlock (CVE-2024-56694, 5.10.223 until 5.10.233): plain
# debian-5.10 follows bullseye-security, past the fix, so tests that need the hang name this one.
DEADLOCKING_5_10 = "debian-5.10@5.10.223-1"


def child_pytest(results: Path, *args, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Run pytest with kconform's plugin in a child process, as a user's command line would."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--results-dir={results}",
           *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    proc.results = results
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    return proc


@pytest.fixture
def release_held_entries():
    """hold_in_use holds a cache entry for the life of the process: a test that holds entries
    (its own cache's) lets go of them, so the next test's prune or build sees them free."""
    from harness import cache
    yield
    for fd in cache._held_in_use.values():
        os.close(fd)
    cache._held_in_use.clear()


@pytest.fixture
def run_pytest(tmp_path):
    def run(*args, env=None, timeout=900):
        return child_pytest(tmp_path / "results", *args, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The conformance suite on 5.10 and debian-6.1 the default way (QEMU, the host's root, two
    workers): what other ways of running the same cases are compared with. 5.10 is pinned to
    5.10.223-1, the regression window of the E1/E3 deadlock (CVE-2024-56694): its expected hangs
    and the replacement boot they cost are part of what the reference run checks."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = child_pytest(tmp / "results", "cases", "--kernel",
                        f"{DEADLOCKING_5_10},debian-6.1", "-n", "2",
                        f"--junitxml={tmp / 'junit.xml'}")
    proc.junit = tmp / "junit.xml"
    return proc


def verdicts_of(results_dir: Path, kernel: str) -> dict:
    """{(file, case without the kernel): verdict} of one kernel in a run's report.json."""
    from harness.reports import results
    cases = results.load(results_dir).for_kernel(kernel)
    return {(c.file, c.case): c.verdict for c in cases}


def leftover_guests(pid: int) -> list[str]:
    """Processes a run with this pid started and left behind (guests are named kconform-<pid>)."""
    out = subprocess.run(["pgrep", "-af", f"kconform-{pid}"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]
