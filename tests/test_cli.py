"""The command line a user types, without booting: names, errors, collection."""
import subprocess
import sys

from tests.conftest import REPO


def test_collect_only_downloads_and_boots_nothing(run_pytest, tmp_path):
    cache = tmp_path / "cache"
    proc = run_pytest("cases", "--kernel", "all", "--collect-only", "-q",
                      env={"KCONFORM_CACHE": str(cache)})
    assert proc.returncode == 0
    assert "test_lookup_with_u64_value_returns_socket_cookie[debian-7.3-sockhash]" in proc.stdout
    assert not (cache / "trees").exists() or not any((cache / "trees").iterdir())
    assert not (proc.results / "console").exists()


def test_unknown_kernel_is_a_usage_error_listing_known_names(run_pytest):
    proc = run_pytest("cases", "--kernel", "debian-4.19", "--collect-only")
    assert proc.returncode == 4
    assert "unknown kernel 'debian-4.19'" in proc.stderr and "debian-6.12" in proc.stderr


def test_kernel_ids_select_by_kernel_and_behaviour(run_pytest):
    proc = run_pytest("cases", "--kernel", "all", "--collect-only", "-q",
                      "-k", "debian-7.3 and u32")
    lines = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(lines) == 2 and all("debian-7.3" in line and "u32" in line for line in lines)


def test_kconform_lists_kernels():
    out = subprocess.run([sys.executable, "-m", "harness.cli", "kernels"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "debian-5.10" in out and "(default)" in out
