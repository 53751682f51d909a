"""./kconform bisect without booting: the search against a fake prober (boot counts within the
bound, versions that do not boot, equal ends), exit statuses, reading a probe's results, the
package changelog, and the suite's --behaviour selection the probes use.

The changelog fixtures are the real files shipped in linux-image-6.1.0-50-amd64-unsigned
(6.1.176-1) and linux-base-7.3.4+deb13-amd64 (7.3.4-1~bpo13+1), cut to their first entries:
headers, trailers, the ChangeLog-X lines and two items per entry.
"""
import dataclasses
import gzip
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import bisect
from harness.bisect import (
    BisectError,
    Probe,
    boot_bound,
    probe_from_results,
    read_changelog,
    render,
    search,
    stable_versions_between,
)
from harness.judging.verdicts import Verdict
from harness.reports.results import CaseResult, KernelRecord, Results, load
from tests.conftest import REPO

DATA = Path(__file__).parent / "data"
CHANGELOG_6_1 = gzip.decompress((DATA / "changelog-6.1.176-1.Debian.gz").read_bytes()).decode()
CHANGELOG_7_3 = gzip.decompress(
    (DATA / "changelog-7.3.4-1~bpo13+1.Debian.gz").read_bytes()).decode()
UNBOUND_OK = {"unbound": "OK", "bound": "OK", "connected": "OK"}
UNBOUND_REFUSED = {"unbound": "EOPNOTSUPP", "bound": "OK", "connected": "OK"}
BOOKWORM = ["6.1.170-3", "6.1.176-1", "6.1.187-1", "6.1.190-1", "6.1.192-1", "6.1.192-2",
            "6.1.192-3"]


class FakeProber:
    """Probes from a table: version -> outcome, or None for a version that does not boot."""

    def __init__(self, outcomes):
        self.outcomes = outcomes
        self.booted = []

    def __call__(self, kernel):
        assert kernel not in self.booted, f"{kernel} booted twice"
        self.booted.append(kernel)
        outcome = self.outcomes[kernel]
        version = kernel.partition("@")[2] or kernel
        if outcome is None:
            return Probe(kernel=kernel, version=version, skipped="the guest did not boot", boots=1)
        return Probe(kernel=kernel, version=version, outcome=outcome, boots=1)


def u10(ok):
    return {"test_udp_socket_never_bound[ipv4-sockmap]": UNBOUND_OK if ok else UNBOUND_REFUSED}


def test_bound_is_both_ends_then_halving():
    assert [boot_bound(n) for n in (2, 3, 5, 6, 7, 9, 17)] == [2, 3, 4, 5, 5, 5, 6]


@given(st.integers(2, 20).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))))
def test_one_change_is_found_within_the_bound(n_and_change):
    n, change = n_and_change
    kernels = [f"v{i}" for i in range(n)]
    prober = FakeProber({k: u10(i < change) for i, k in enumerate(kernels)})
    result = search(kernels, prober)
    assert (result.older.kernel, result.newer.kernel) == (kernels[change - 1], kernels[change])
    assert len(prober.booted) <= math.ceil(math.log2(n - 1)) + 2
    assert prober.booted[:2] == [kernels[0], kernels[-1]]  # both ends first


@given(st.lists(st.sampled_from("ABC"), min_size=2, max_size=20).filter(lambda s: s[0] != s[-1]))
def test_any_sequence_of_outcomes_gives_an_adjacent_change_within_the_bound(labels):
    """A behaviour may change more than once (a regression window): the search names *a*
    change, two adjacent versions, the older one observing what the oldest end does."""
    kernels = [f"v{i}" for i in range(len(labels))]
    prober = FakeProber({k: {"case": label} for k, label in zip(kernels, labels, strict=True)})
    result = search(kernels, prober)
    older, newer = kernels.index(result.older.kernel), kernels.index(result.newer.kernel)
    assert newer == older + 1
    assert labels[older] == labels[0] and labels[newer] != labels[0]
    assert len(prober.booted) <= boot_bound(len(labels))


def test_a_version_that_does_not_boot_is_skipped_and_its_neighbour_tried():
    outcomes = {"v0": u10(True), "v1": u10(True), "v2": None, "v3": u10(False), "v4": u10(False)}
    prober = FakeProber(outcomes)
    result = search(list(outcomes), prober)
    assert prober.booted[:3] == ["v0", "v4", "v2"]  # the middle one, then its neighbours
    assert (result.older.kernel, result.newer.kernel) == ("v1", "v3")
    assert result.untested_between == ["v2"] and [p.kernel for p in result.skipped] == ["v2"]
    text = render(result, ["--behaviour", "U10"], changelog=lambda kernel: None)
    assert "v2  booted #3, 0 s: skipped: the guest did not boot" in text
    assert "not adjacent: the versions between them did not boot (v2)" in text
    assert "(the bound assumes none is skipped)" in text


def test_a_skipped_middle_version_not_at_the_change_costs_one_boot():
    outcomes = {f"v{i}": u10(i < 5) for i in range(7)} | {"v3": None}
    result = search(list(outcomes), FakeProber(outcomes))
    assert (result.older.kernel, result.newer.kernel) == ("v4", "v5")
    assert result.untested_between == []


def test_an_end_that_does_not_boot_is_replaced_by_its_neighbour():
    outcomes = {"v0": None, "v1": u10(True), "v2": u10(False), "v3": None}
    prober = FakeProber(outcomes)
    result = search(list(outcomes), prober)
    assert prober.booted == ["v0", "v1", "v3", "v2"]
    assert (result.older.kernel, result.newer.kernel) == ("v1", "v2")


def test_nothing_booted_or_one_booted_finds_nothing():
    assert search(["v0", "v1"], FakeProber({"v0": None, "v1": None})).why_none == \
        "no version in the range booted"
    result = search(["v0", "v1"], FakeProber({"v0": u10(True), "v1": None}))
    assert not result.found and "only v0 booted" in result.why_none


def test_equal_ends_boot_only_the_ends_and_say_why():
    outcomes = {f"v{i}": u10(i in (0, 4)) for i in range(5)}  # changed, then changed back
    prober = FakeProber(outcomes)
    result = search(list(outcomes), prober)
    assert not result.found and prober.booted == ["v0", "v4"]
    assert "a change and its revert inside the range would not show" in result.why_none


@pytest.fixture
def bookworm(monkeypatch):
    """main() over the seven bookworm versions, U10 changing at 6.1.187-1, no VM."""
    kernels = [f"debian-6.1@{v}" for v in BOOKWORM]
    monkeypatch.setattr(bisect, "expand_range", lambda value: kernels)
    return kernels


def test_main_names_the_change_and_reproduces_both_ends(bookworm, tmp_path, capsys):
    prober = FakeProber({k: u10(k.endswith(("170-3", "176-1"))) for k in bookworm})
    status = bisect.main(["U10", "--kernel", "debian-6.1@6.1.170-3..6.1.192-3",
                          "--results-dir", str(tmp_path)], prober=prober,
                         changelog=lambda kernel: None)
    out = capsys.readouterr().out
    assert status == 0
    assert "changed between debian-6.1@6.1.176-1 (outcome A) and debian-6.1@6.1.187-1 " \
        "(outcome B)" in out
    assert "binary search finds *a* change" in out
    assert "./kconform suite --kernel debian-6.1@6.1.176-1 --behaviour U10" in out
    assert "./kconform suite --kernel debian-6.1@6.1.187-1 --behaviour U10" in out
    assert f"versions booted: {len(prober.booted)} of 7, within the " \
        "bound of 5 for 7 versions" in out
    assert len(prober.booted) <= 5
    assert '-> {"bound": "OK", "connected": "OK", "unbound": "EOPNOTSUPP"}' in out
    for kernel in prober.booted:
        assert f"  {kernel}  booted #" in out


def test_main_exits_1_when_the_ends_agree(bookworm, tmp_path, capsys):
    prober = FakeProber({k: u10(True) for k in bookworm})
    status = bisect.main(["U10", "-k", "ipv4", "--kernel", "R", "--results-dir", str(tmp_path)],
                         prober=prober)
    assert status == 1 and len(prober.booted) == 2
    assert "no change found: no change between the ends" in capsys.readouterr().out


def _status(argv, prober, tmp_path):
    """main()'s exit status, argparse's own usage errors (SystemExit) included."""
    try:
        return bisect.main([*argv, "--results-dir", str(tmp_path)], prober=prober)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["U99", "--kernel", "R"], ("unknown behaviour U99: behaviour ids are the [ID] tables of "
                                "cases/expectations.toml")),
    (["--kernel", "R"], "name the behaviours to bisect"),
    (["U10"], "--kernel"),
])
def test_usage_errors_exit_2_before_anything_boots(bookworm, tmp_path, capsys, argv, message):
    prober = FakeProber({})
    assert _status(argv, prober, tmp_path) == 2 and prober.booted == []
    assert message in capsys.readouterr().err


def test_a_child_run_that_broke_ends_the_search_naming_its_status(bookworm, tmp_path, capsys):
    def interrupted(kernel):
        raise bisect.ProbeRunBroke(f"the suite on {kernel} ended with status 2")

    assert _status(["U10", "--kernel", "R"], interrupted, tmp_path) == 2
    assert "the suite on debian-6.1@6.1.170-3 ended with status 2" in capsys.readouterr().err


def test_a_range_of_one_kernel_is_a_usage_error(tmp_path, capsys):
    assert _status(["U10", "--kernel", "debian-6.1"], FakeProber({}), tmp_path) == 2
    assert "--kernel debian-6.1: bisect takes one range" in capsys.readouterr().err


def test_a_bad_range_is_a_usage_error(tmp_path, capsys):
    assert _status(["U10", "--kernel", "debian-4.19..debian-6.1"], FakeProber({}), tmp_path) == 2
    assert "debian-4.19" in capsys.readouterr().err


def _case(case, observed, verdict=Verdict.PASS, boot=None, message=""):
    return CaseResult(id=f"cases/test_eligibility.py::{case}", case=case,
                      file="cases/test_eligibility.py", kernel="debian-6.1@6.1.176-1",
                      verdict=verdict, reproduce="", behaviour="U10", observed=observed,
                      kernel_version="6.1.176-1", boot_seconds=boot, message=message)


def _results(*cases):
    return Results(kernels={"debian-6.1@6.1.176-1": KernelRecord(name="debian-6.1@6.1.176-1",
                                                                 version="6.1.176-1")},
                   cases=list(cases))


def test_a_probe_is_the_observed_outcome_per_case_not_the_verdict():
    probe = probe_from_results("debian-6.1@6.1.176-1", _results(
        _case("a[sockmap]", UNBOUND_OK, boot=30.0),
        _case("b[sockmap]", {"guest": "hang"}, Verdict.EXPECTED_DIFFERENCE),
        _case("c[sockmap]", UNBOUND_OK, Verdict.FAIL, boot=31.0)))
    assert probe.outcome == {"a[sockmap]": UNBOUND_OK, "b[sockmap]": {"guest": "hang"},
                             "c[sockmap]": UNBOUND_OK}
    assert probe.version == "6.1.176-1" and probe.boots == 2 and probe.replacements == 1


def test_a_version_whose_every_case_failed_to_boot_is_skipped_with_the_reason():
    message = "debian-6.1@6.1.176-1: the guest did not start the agent within 180 s\nconsole:"
    probe = probe_from_results("debian-6.1@6.1.176-1", _results(
        _case("a[sockmap]", None, Verdict.CRASHED, message=message),
        _case("b[sockmap]", None, Verdict.FAIL, message="cannot download")))
    assert probe.outcome is None and probe.boots == 1
    assert probe.skipped == "debian-6.1@6.1.176-1: the guest did not start the agent within 180 s"
    # one case observed something: the version booted, and is compared
    probe = probe_from_results("debian-6.1@6.1.176-1", _results(
        _case("a[sockmap]", None, Verdict.CRASHED), _case("b[sockmap]", UNBOUND_OK)))
    assert probe.skipped is None and probe.outcome == {"a[sockmap]": None, "b[sockmap]": UNBOUND_OK}


def test_stable_versions_between_two_packages_of_one_series():
    assert stable_versions_between(CHANGELOG_6_1, "6.1.170-3", "6.1.176-1") == \
        ["6.1.171", "6.1.172", "6.1.173", "6.1.174", "6.1.175", "6.1.176"]
    assert stable_versions_between(CHANGELOG_6_1, "6.1.174-1", "6.1.176-1") == \
        ["6.1.175", "6.1.176"]
    assert stable_versions_between(CHANGELOG_6_1, "6.1.170-2", "6.1.170-3") == []


def test_stable_versions_between_series():
    """7.3's changelog holds release candidates and 7.2 uploads older than 7.2.13 (7.2.4 to
    7.2.6): only what came after the older end is named."""
    assert stable_versions_between(CHANGELOG_7_3, "7.2.13-1", "7.3.4-1~bpo13+1") == \
        ["7.3.1", "7.3.2", "7.3.3", "7.3.4"]
    assert stable_versions_between(CHANGELOG_7_3, "7.3~rc7-1~exp1", "7.3.3-1") == \
        ["7.3.1", "7.3.2", "7.3.3"]


def test_the_changelog_is_found_in_any_package_doc_directory(tmp_path):
    assert read_changelog(tmp_path) is None
    doc = tmp_path / "usr/share/doc/linux-binary-unsigned-7.3.4+deb13-amd64"
    doc.mkdir(parents=True)
    (doc / "changelog.Debian.gz").write_bytes((DATA / "changelog-7.3.4-1~bpo13+1.Debian.gz")
                                              .read_bytes())
    path, text = read_changelog(tmp_path)
    assert path.parent == doc and text.startswith("linux (7.3.4-1~bpo13+1) trixie-backports")


def test_the_report_lists_the_stable_versions_from_the_newer_package():
    kernels = ["debian-6.1@6.1.170-3", "debian-6.1@6.1.176-1"]
    result = search(kernels, FakeProber({kernels[0]: u10(True), kernels[1]: u10(False)}))
    seen = []

    def changelog(kernel):
        seen.append(kernel)
        return Path("linux-image-6.1.0-50-amd64-unsigned/changelog.Debian.gz"), CHANGELOG_6_1

    text = render(result, ["--behaviour", "U10"], changelog)
    assert seen == ["debian-6.1@6.1.176-1"]
    assert "upstream stable releases in between (6, from linux-image-6.1.0-50-amd64-unsigned/" \
        "changelog.Debian.gz of 6.1.176-1): 6.1.171, 6.1.172, 6.1.173, 6.1.174, 6.1.175, " \
        "6.1.176" in text


def test_a_named_kernel_is_pinned_in_the_reproduction_line():
    probe = Probe(kernel="debian-6.12", version="6.12.118-1", outcome={})
    assert bisect.reproduce_line(probe, ["-k", "ipv4 and sockmap"]) == \
        "./kconform suite --kernel debian-6.12@6.12.118-1 -k 'ipv4 and sockmap'"


def test_a_selection_that_matches_no_case_is_a_usage_error_without_a_boot(tmp_path):
    """The child run collects nothing (pytest's status 5) and boots nothing."""
    prober = bisect.SuiteProber(["U10"], "no_such_case", tmp_path)
    with pytest.raises(BisectError, match="no case of the suite is selected on debian-6.1 by "
                                          "--behaviour U10 -k no_such_case"):
        prober("debian-6.1")
    assert not (tmp_path / "debian-6.1" / "console").exists()


# ---------------------------------------------------------------------- --behaviour

def test_behaviour_option_runs_only_the_cases_of_those_behaviours(run_pytest):
    proc = run_pytest("cases", "--kernel", "debian-6.1", "--behaviour", "U10", "--behaviour",
                      "E1", "--collect-only", "-q")
    lines = [line for line in proc.stdout.splitlines() if "::" in line]
    assert proc.returncode == 0 and len(lines) == 6, proc.stdout
    assert sum("test_udp_socket_never_bound[" in line for line in lines) == 4
    assert "deselected" in proc.stdout


def test_behaviour_option_with_k_narrows_further(run_pytest):
    proc = run_pytest("cases", "--kernel", "debian-6.1", "--behaviour", "U10,U11", "-k", "ipv6",
                      "--collect-only", "-q")
    lines = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(lines) == 4 and all("ipv6" in line for line in lines), proc.stdout


def test_an_unknown_behaviour_is_a_usage_error_listing_the_ids(run_pytest):
    proc = run_pytest("cases", "--kernel", "debian-6.1", "--behaviour", "U10,U99",
                      "--collect-only", "-q")
    assert proc.returncode == 4
    assert "--behaviour: unknown behaviour U99; the ids are the [ID] tables of" in proc.stderr
    assert "U10, U11" in proc.stderr


def test_the_cli_dispatches_bisect(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bisect", "U99", "--kernel",
                           "debian-6.1", "--results-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown behaviour U99" in proc.stderr


def test_the_bench_row_counts_the_boots_of_a_bisect_against_its_bound(bookworm, monkeypatch,
                                                                      tmp_path):
    from harness import bench
    prober = FakeProber({k: u10(k.endswith(("170-3", "176-1"))) for k in bookworm})
    monkeypatch.setattr(bisect, "SuiteProber", lambda behaviours, keyword, results: prober)
    row = bench.bisect_row(bench.BISECT_RANGE, "U10", tmp_path)
    assert row["boots"] == len(prober.booted) <= row["bound"] == 5
    assert row["versions"] == 7 and row["replacement_boots"] == 0 and row["skipped"] == []
    assert row["change"] == "debian-6.1@6.1.176-1 -> debian-6.1@6.1.187-1"


@pytest.mark.vm
def test_bisect_names_the_bookworm_release_that_refused_unbound_udp(tmp_path):
    """U10 on real packages: unbound UDP is accepted on 6.1.176-1 and refused from 6.1.187-1
    (66efd3368ae1, stable 6.1.183). Six versions: at most ceil(log2 5) + 2 = 5 boots."""
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bisect", "U10", "--kernel",
                           "debian-6.1@6.1.176-1..6.1.192-3", "--results-dir",
                           str(tmp_path / "bisect")], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout
    print(out, proc.stderr[-3000:])
    assert proc.returncode == 0
    assert "changed between debian-6.1@6.1.176-1 (outcome A) and debian-6.1@6.1.187-1 " \
        "(outcome B)" in out
    assert "cases that changed (4 of 4)" in out
    assert '-> {"bound": "OK", "connected": "OK", "unbound": "EOPNOTSUPP"}' in out
    stable = re.search(r"upstream stable releases in between \(11, from \S+ of 6\.1\.187-1\): "
                       r"6\.1\.177, .*6\.1\.183, .*6\.1\.187$", out, re.M)
    assert stable, "no stable versions from 6.1.187-1's changelog"
    assert "./kconform suite --kernel debian-6.1@6.1.187-1 --behaviour U10" in out
    booted = re.search(r"versions booted: (\d) of 6, within the bound of 5 for 6 versions; "
                       r"(\d+) replacement", out)
    assert booted and int(booted.group(1)) <= 5 and booted.group(2) == "0"
    # each version booted once, in its own run of only the U10 cases
    logs = sorted(p.name for p in (tmp_path / "bisect").glob("*/console/*.log"))
    assert len(logs) == int(booted.group(1)), logs
    one = load(tmp_path / "bisect" / "debian-6.1_6.1.187-1")
    assert {c.behaviour for c in one.cases} == {"U10"} and len(one.cases) == 4


def test_a_kernel_that_booted_and_then_warned_is_an_outcome_not_a_skip():
    """Every selected case failing after a boot (a splat, a guest function that raised) left no
    observation, and the version was skipped as if it never booted: a regression that starts to
    WARN would be stepped over instead of found."""
    booted = bisect.CaseResult(id="t[k]", case="t", file="cases/t.py", kernel="k",
                               verdict=bisect.Verdict.FAIL,
                               message="WARNING: CPU: 0 PID: 1 at net/core/sock_map.c",
                               reproduce="./kconform suite", observed=None, boot_seconds=30.0)
    probe = bisect.probe_from_results("k", bisect.Results(cases=[booted]))
    assert probe.skipped is None and probe.outcome == {"t": None}
    never = dataclasses.replace(booted, boot_seconds=None, verdict=bisect.Verdict.CRASHED)
    assert bisect.probe_from_results("k", bisect.Results(cases=[never])).skipped


@pytest.mark.parametrize("value", ["debian-6.1@6.1.176-1",
                                   "debian-6.1@6.1.176-1,debian-6.1@6.1.170-3"])
def test_bisect_takes_one_range_not_a_list(value, tmp_path):
    assert _status(["U10", "--kernel", value], FakeProber({}), tmp_path) == 2
