import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_pytest(tmp_path):
    """Run pytest with kconform's plugin in a child process, as a user's command line would."""

    def run(*args, env=None, timeout=900):
        results = tmp_path / "results"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
               f"--results-dir={results}", *args]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
        proc.results = results
        print(proc.stdout[-6000:], proc.stderr[-3000:])
        return proc

    return run


def leftover_guests(pid: int) -> list[str]:
    """Processes a run with this pid started and left behind (guests are named kconform-<pid>)."""
    out = subprocess.run(["pgrep", "-af", f"kconform-{pid}"], capture_output=True, text=True)
    return [l for l in out.stdout.splitlines() if "pgrep" not in l]
