"""harness/ type-checks under mypy --strict (mypy.ini): a wrong type is a failing test here, not
an AttributeError in the middle of a run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.paths import REPO_ROOT


def test_harness_type_checks_strictly():
    mypy = Path(sys.executable).parent / "mypy"
    proc = subprocess.run([str(mypy), "--config-file", str(REPO_ROOT / "mypy.ini")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_type_check_catches_a_wrong_type(tmp_path):
    """The same configuration rejects what strict mode is for (so the test above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def size(path):\n    return len(path)\n\nsize(3)\n")
    mypy = Path(sys.executable).parent / "mypy"
    proc = subprocess.run([str(mypy), "--config-file", str(REPO_ROOT / "mypy.ini"), str(bad)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "no-untyped-def" in proc.stdout, proc.stdout
