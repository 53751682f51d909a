"""A candidate kernel package (issue 15, point 4): a real Debian .deb as --kernel boots with its
modules, is judged by its package version, is recorded as local and unverified with its
sha256, and `suite --compare` holds it against the archive build."""
import hashlib
import json
import subprocess
import sys

import pytest

from harness.cache import cache_dir
from harness.kernels import KernelProvider
from tests.conftest import REPO

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def candidate_deb():
    """debian-6.1's current image package, as apt-get download gets it; kept in the cache."""
    dest = cache_dir() / "test-packages"
    dest.mkdir(exist_ok=True)
    debs = sorted(dest.glob("linux-image-*.deb"))
    provider = KernelProvider()
    current = provider.versions(provider.specs["debian-6.1"])[-1]
    wanted = [d for d in debs if f"_{current.version}_" in d.name]
    if wanted:
        return wanted[0]
    for stale in debs:  # an older build's package, from before a security update
        stale.unlink()
    (deb,) = provider.download_packages("debian-6.1", dest)
    return deb


def test_a_kernel_deb_boots_with_its_modules_and_compares_with_the_archive_build(
        candidate_deb, tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "suite", "--compare", "debian-6.1",
         str(candidate_deb), "-k", "test_lookup or test_eligibility", "-p", "no:cacheprovider",
         f"--results-dir={results}"], cwd=REPO, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 behaviour(s) regressed" in proc.stdout
    report = json.loads((results / "report.json").read_text())
    archive, local = report["kernels"]["debian-6.1"], report["kernels"][str(candidate_deb)]
    assert local["version"] == archive["version"] and local["uname"] == archive["uname"]
    digest = hashlib.sha256(candidate_deb.read_bytes()).hexdigest()
    assert local["suite"].startswith("local, unverified") and digest in local["suite"]
    verdicts = {c["case"]: c["verdict"] for c in report["cases"]
                if c["kernel"] == str(candidate_deb)}
    # every case ran: 9p is a module in Debian's generic flavour, so a kernel booted without its
    # modules mounts no root and runs none
    assert verdicts and all(v in ("pass", "expected-difference") for v in verdicts.values())
