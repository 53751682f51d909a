"""Reports keep versions of one series apart: kernels ordered by version (an rc before its
release, then dpkg's order of package versions), one name at two versions merged as two
kernels, and compare naming the versions of one name. Built on the saved debian-7.2 run."""
import dataclasses
import json
import shlex
import xml.etree.ElementTree as ET

import pytest

from harness.judging.verdicts import Verdict
from harness.plugin.recording import _upstream_of
from harness.reports import compare, grid, junit, results
from harness.reports.results import KernelRecord, Results, ResultsError
from tests.conftest import REPO

ONLY_72 = REPO / "tests" / "data" / "results" / "debian-7.2.json"


def _kernels(versions: dict[str, str | None]) -> Results:
    """Results holding only kernel records: name -> package version, as a run records them."""
    return Results(kernels={name: KernelRecord(name=name, version=version,
                                               upstream=_upstream_of(version))
                            for name, version in versions.items()})


def test_kernels_are_ordered_by_upstream_version_then_package_version():
    found = _kernels({"debian-6.1@6.1.192-3": "6.1.192-3", "debian-rc": "7.3~rc7-1~exp1",
                        "debian-6.1@6.1.176-1": "6.1.176-1", "debian-7.3": "7.3.4-1",
                        "debian-6.1@6.1.192-2": "6.1.192-2", "mine": "custom",
                        "debian-6.1@6.1.187-1": "6.1.187-1", "debian-7.2": "7.2.13-1",
                        "debian-6.1@6.1.190-1": "6.1.190-1", "debian-6.1@6.1.192-1": "6.1.192-1",
                        "debian-6.1@6.1.170-3": "6.1.170-3"}).kernel_order()
    assert found == ["debian-6.1@6.1.170-3", "debian-6.1@6.1.176-1", "debian-6.1@6.1.187-1",
                     "debian-6.1@6.1.190-1", "debian-6.1@6.1.192-1", "debian-6.1@6.1.192-2",
                     "debian-6.1@6.1.192-3", "debian-7.2", "debian-rc", "debian-7.3", "mine"]


def test_an_rc_is_recorded_as_its_rc_and_ordered_before_its_release():
    assert _upstream_of("7.3~rc7-1~exp1") == "7.3-rc7"
    assert _upstream_of("6.1.176-1") == "6.1.176"
    assert _kernels({"debian-7.3": "7.3-1", "debian-rc": "7.3~rc7-1~exp1",
                       "debian-7.2": "7.2.13-1"}).kernel_order() == \
        ["debian-7.2", "debian-rc", "debian-7.3"]


def test_one_upstream_version_at_two_package_versions_follows_dpkg_not_the_name():
    # the same upstream release: only the Debian revision tells them apart ("-2" < "-10")
    assert _kernels({"b": "6.1.192-10", "a": "6.1.192-2"}).kernel_order() == ["a", "b"]
    assert _kernels({"a": "6.12.115+deb13.1", "b": "6.12.115+deb13"}).kernel_order() == \
        ["b", "a"]


def _at(version: str, observed_change: bool = False) -> Results:
    """The saved debian-7.2 run as if it had been made on package `version`."""
    run = results.load(ONLY_72)
    run.kernels["debian-7.2"] = dataclasses.replace(run.kernels["debian-7.2"], version=version,
                                                    upstream=_upstream_of(version))
    for case in run.cases:
        case.kernel_version = version
    if observed_change:  # the newer version breaks U12 on sockhash
        case = next(c for c in run.cases if c.behaviour == "U12" and c.variant == "sockhash")
        case.observed, case.verdict = {"dgram_pair": "EOPNOTSUPP"}, Verdict.FAIL
    return run


def _named(run: Results, kernel: str) -> Results:
    """`run` as if its one kernel had been named `kernel`."""
    (record,) = run.kernels.values()
    run.kernels = {kernel: dataclasses.replace(record, name=kernel)}
    for case in run.cases:
        case.kernel = kernel
    return run


def test_one_name_at_two_versions_merges_as_two_kernels_named_by_version():
    newer, older = _at("7.2.14-1"), _at("7.2.13-1")
    merged = results.merge([("june/report.json", newer), ("may/report.json", older)])
    assert merged.kernel_order() == ["debian-7.2@7.2.13-1", "debian-7.2@7.2.14-1"]
    assert {k: r.name for k, r in merged.kernels.items()} == \
        {"debian-7.2@7.2.13-1": "debian-7.2@7.2.13-1", "debian-7.2@7.2.14-1": "debian-7.2@7.2.14-1"}
    assert len(merged.cases) == 2 * len(older.cases)
    for case in merged.cases:
        assert case.kernel == f"debian-7.2@{case.kernel_version}"
        assert f"[{case.kernel}-" in case.id or f"[{case.kernel}]" in case.id
        # the rerun line boots that version again, and selects the case by its new id
        words = shlex.split(case.reproduce)
        assert words[words.index("--kernel") + 1] == case.kernel and case.id in words
    # the merge is a results file like any other: it reads back as it was written
    assert results.Results.from_json(json.loads(json.dumps(merged.to_json()))).to_json() == \
        merged.to_json()


def test_a_renamed_case_keeps_every_other_field():
    merged = results.merge([("a", _at("7.2.14-1")), ("b", _at("7.2.13-1"))])
    before = {(c.case, c.kernel_version): c for c in (*_at("7.2.14-1").cases,
                                                      *_at("7.2.13-1").cases)}
    for case in merged.cases:
        old = before[(case.case, case.kernel_version)]
        assert dataclasses.replace(case, id=old.id, kernel=old.kernel,
                                   reproduce=old.reproduce) == old


def test_the_same_name_at_the_same_version_twice_is_still_refused():
    with pytest.raises(ResultsError, match=r"kernel debian-7.2 is in both a and b, at 7.2.13-1 "
                                           r"in each.*leave one of the two files out"):
        results.merge([("a", _at("7.2.13-1")), ("b", _at("7.2.13-1"))])


def test_a_pinned_name_at_two_versions_is_named_by_each_version():
    # debian-7.2@7.2.0-5 names an ABI: the newest build of it, which two runs may see differ
    merged = results.merge([("a", _named(_at("7.2.14-1"), "debian-7.2@7.2.0-5")),
                            ("b", _named(_at("7.2.13-1"), "debian-7.2@7.2.0-5"))])
    assert merged.kernel_order() == ["debian-7.2@7.2.13-1", "debian-7.2@7.2.14-1"]


def test_grid_columns_and_junit_suites_follow_the_versions(tmp_path):
    merged = results.merge([("new", _at("7.2.14-1", observed_change=True)),
                            ("old", _at("7.2.13-1"))])
    built = grid.build(merged)
    assert built.kernels == ["debian-7.2@7.2.13-1", "debian-7.2@7.2.14-1"]
    row = next(r for g in built.groups for r in g.rows if r.key == "U12")
    assert row.changed_at == "debian-7.2@7.2.14-1"
    suites = ET.fromstring(junit.junit_text(merged)).findall("testsuite")
    assert [s.get("name") for s in suites] == [f"kconform {k}" for k in built.kernels]
    header = next(line for line in grid.markdown(merged).splitlines()
                  if line.startswith("| behaviour |"))
    assert header.split(" | ")[1:3] == [f"{grid._md(k)} · amd64" for k in built.kernels]


def _two_files(tmp_path):
    paths = []
    for name, run in (("may", _at("7.2.13-1")), ("june", _at("7.2.14-1", observed_change=True))):
        results.write_json(run, tmp_path / name / results.REPORT_JSON)
        paths.append(str(tmp_path / name))
    return paths


def test_compare_of_one_name_at_two_versions_names_the_versions(tmp_path):
    base, new = compare.sides(_two_files(tmp_path))
    out = compare.render(compare.compare(base, new))
    lines = out.splitlines()
    assert lines[0] == "kconform compare: debian-7.2 7.2.13-1 -> 7.2.14-1"
    assert "    base 7.2.13-1  pass" in out and "    new  7.2.14-1  fail" in out
    assert lines[-1] == "1 behaviour(s) regressed on debian-7.2 7.2.14-1 against 7.2.13-1: U12"


def test_compare_of_two_names_reads_as_before(tmp_path):
    paths = _two_files(tmp_path)
    results.write_json(_named(results.load(paths[1]), "debian-7.2-rt"),
                       tmp_path / "june" / results.REPORT_JSON)
    out = compare.render(compare.compare(*compare.sides(paths)))
    assert out.startswith("kconform compare: base debian-7.2 (7.2.13-1) -> new debian-7.2-rt "
                          "(7.2.14-1)")
    assert out.splitlines()[-1].endswith("regressed on debian-7.2-rt against debian-7.2: U12")


def test_the_suite_a_kernel_came_from_is_kept_and_shown(tmp_path):
    saved = results.load(ONLY_72)
    name = saved.kernel_order()[0]
    saved.kernels[name].suite = "bookworm-security"
    path = tmp_path / "report.json"
    results.write_json(saved, path)
    again = results.load(path)
    assert again.kernels[name].suite == "bookworm-security"
    assert f"{again.kernels[name].version} (bookworm-security)" in grid.markdown(again)
    assert "(bookworm-security)" in grid.html_page(again)
