"""The GitHub workflow: checked by a real workflow linter (actionlint, from the venv), and kept in
step with the kernels and commands it runs."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.kernels import load_specs
from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
KERNELS_YML = WORKFLOWS / "kernels.yml"


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "actionlint"
    if not binary.exists():
        pytest.fail(f"no actionlint beside {sys.executable}: it comes with requirements.txt "
                    "(./kconform test installs it)")
    args = [str(binary), "-no-color"]
    if shutil.which("shellcheck"):  # actionlint then checks every run: script with it too
        args.append(f"-shellcheck={shutil.which('shellcheck')}")
    return subprocess.run([*args, *map(str, paths)], cwd=REPO, capture_output=True, text=True)


def test_workflows_pass_actionlint():
    proc = actionlint(*sorted(WORKFLOWS.glob("*.yml")))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = KERNELS_YML.read_text().replace("needs: suite", "needs: suites")
    assert broken != KERNELS_YML.read_text()
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "kernels.yml"
    path.write_text(broken)
    proc = actionlint(path)
    assert proc.returncode == 1
    assert 'job "grid" needs job "suites" which does not exist' in proc.stdout


def test_the_matrix_runs_every_known_kernel_and_merges_them():
    text = KERNELS_YML.read_text()
    matrix = re.search(r"^\s+kernel: \[(.*)\]$", text, re.M).group(1)
    assert [k.strip() for k in matrix.split(",")] == list(load_specs())
    suite = re.search(r"./kconform suite --kernel \"\$KERNEL\" --rootfs debian-bookworm "
                      r"--results-dir \"results/\$KERNEL\"", text)
    assert suite, "each kernel job runs the suite on its kernel, on the pinned root, into " \
                  "results/<kernel>"
    assert "~/.cache/kconform/rootfs" in text, "the pinned root is cached with the kernels"
    assert 'cat "results/$KERNEL/report.md" >> "$GITHUB_STEP_SUMMARY"' in text
    assert "path: results/${{ matrix.kernel }}/" in text
    assert "./kconform merge artifacts/results-*/report.json -o results/merged" in text
    assert "cat results/merged/report.md >> \"$GITHUB_STEP_SUMMARY\"" in text
    assert re.search(r"needs: suite\n\s+if: always\(\)", text), \
        "the grid is made even when a kernel fails"
