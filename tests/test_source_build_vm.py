"""A developer's loop on a real tree (issue 15, point 3): Debian's linux-source-6.1 built with
--build agrees with Debian's own 6.1 kernel of that version; with one real upstream fix reverted
and rebuilt, `compare` names that behaviour as a regression and nothing else. The source and its
builds stay in the cache, so a second run builds nothing."""
import os
import subprocess
import sys
import tarfile

import pytest

from harness.cache import cache_dir
from harness.kernels import KernelProvider
from tests.conftest import REPO

pytestmark = pytest.mark.vm

# The fix reverted: 2271276ac527 (6.1.183; mainline 66efd3368ae1) "bpf, sockmap: Reject unhashed
# UDP sockets on sockmap update" added this test to sock_map_sk_state_allowed(). Without it an
# unbound UDP socket is accepted again (U10), as in 6.1.176.
FIXED = "\tif (sk_is_udp(sk))\n\t\treturn sk_hashed(sk);\n"
SOCK_MAP = "net/core/sock_map.c"
CASES = "test_udp or test_tcp_listening"  # U10, U11 and U8/U9: the UDP rows and a TCP neighbour


@pytest.fixture(scope="module")
def linux_source():
    """Debian's linux-source-6.1 at debian-6.1's current version, unpacked once in the cache."""
    provider = KernelProvider()
    version = provider.versions(provider.specs["debian-6.1"])[-1].version
    home = cache_dir() / "test-sources"
    tree = home / f"linux-source-6.1_{version}" / "linux-source-6.1"
    if not (tree / "Makefile").is_file():
        home.mkdir(exist_ok=True)
        for stale in home.glob("linux-source-6.1_*.deb"):  # a download the last run left
            stale.unlink()
        (deb,) = provider.download_packages("debian-6.1", home, ["linux-source-6.1"])
        unpacked = tree.parent
        (unpacked / "deb").mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked / "deb")], check=True)
        (tarball,) = (unpacked / "deb").glob("usr/src/linux-source-6.1.tar.*")
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="tar")
        subprocess.run(["rm", "-rf", str(unpacked / "deb"), str(deb)], check=True)
    return tree


def _compare(tree, results):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "suite", "--build", "--compare", "debian-6.1",
         str(tree), "-k", CASES, "-p", "no:cacheprovider", f"--results-dir={results}"],
        cwd=REPO, capture_output=True, text=True, timeout=3600)
    print(proc.stdout[-5000:], proc.stderr[-3000:])
    return proc


def test_a_built_tree_agrees_with_debian_and_a_reverted_fix_is_a_regression(linux_source,
                                                                           tmp_path):
    same = _compare(linux_source, tmp_path / "same")
    assert same.returncode == 0, same.stdout[-3000:]
    assert "0 behaviour(s) regressed" in same.stdout
    source = linux_source / SOCK_MAP
    text, stat = source.read_text(), source.stat()
    assert FIXED in text
    try:
        source.write_text(text.replace(FIXED, "", 1))
        reverted = _compare(linux_source, tmp_path / "reverted")
    finally:  # as it was, mtime included: the next run finds its build made already
        source.write_text(text)
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert reverted.returncode == 1, reverted.stdout[-3000:]
    regressed = [line for line in reverted.stdout.splitlines() if "regress" in line.lower()]
    assert any("U10" in line for line in regressed), regressed
    assert "1 behaviour(s) regressed" in reverted.stdout
