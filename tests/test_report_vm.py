"""Reports from a real run on two kernels: `suite --compare` leaves JUnit, JSON, Markdown and HTML
that agree with each other, and names what differs between the kernels. Boots two kernels."""
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_report import check_reports_agree

pytestmark = pytest.mark.vm


def test_suite_compare_on_5_10_and_7_2_reports_the_unix_socket_difference(tmp_path):
    out = tmp_path / "results"
    # debian-6.12, not 7.2: sid's Release files expire within days, and a mirror that is a frozen
    # snapshot (this project's machines) serves them past their Valid-Until, which kconform's apt
    # refuses; trixie, a release, has none.
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "suite", "--compare", "debian-5.10",
                           "debian-6.12", "-k",
                           "test_unix_dgram_socket or test_unix_stream_socketpair",
                           f"--results-dir={out}", "-p",
                           "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    res, _md, page = check_reports_agree(out)
    assert res.kernel_order() == ["debian-5.10", "debian-6.12"]
    assert {c.kernel_version[:5] for c in res.cases} == {"5.10.", "6.12."}
    for behaviour in ("U12", "U13"):  # AF_UNIX in sockmap came in 5.15
        assert page.cells[(behaviour, "debian-5.10")] == "expected-difference"
        assert page.cells[(behaviour, "debian-6.12")] == "pass"
        assert page.changed[behaviour] == "debian-6.12"
        assert f"changed as documented: {behaviour} " in proc.stdout
    assert "AF_UNIX sockets in sockmap came in 5.15" in " ".join(page.text)
    assert proc.stdout.rstrip().endswith(
        "0 behaviour(s) regressed on debian-6.12 against debian-5.10")
