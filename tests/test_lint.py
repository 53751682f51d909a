"""ruff over the code kconform ships and tests (ruff.toml: line length, target, rules): a lint
finding fails ./kconform test with ruff's own lines, which name the file, line and rule."""
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

RUFF = Path(sys.executable).with_name("ruff")  # pinned in requirements.txt, in the venv
LINTED = ("harness", "tests", "cases")


def test_ruff_finds_nothing():
    assert RUFF.is_file(), f"{RUFF} is missing: pip install -r requirements.txt into the venv"
    proc = subprocess.run([str(RUFF), "check", "--no-cache", "--output-format", "concise",
                           *LINTED], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
