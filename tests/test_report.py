"""Reports: results files, JUnit, the grid, merge and compare, on saved results of real runs.

tests/data/results/ holds report.json files written by real runs (see its README): debian-5.10
and debian-7.2 run separately, the same selection over both kernels in one run (-n 2), and a run
judged with a doctored expectation that makes L2 regress on 7.2, plus an injected kernel panic.
"""
import json
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from harness import versions
from harness.judging.verdicts import worst
from harness.reports import compare, grid, junit, results
from harness.reports.results import ResultsError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "results"
ONLY_510, ONLY_72 = DATA / "debian-5.10.json", DATA / "debian-7.2.json"
BOTH = DATA / "both.json"
REGRESSION = DATA / "regression.json"


def kconform(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------- the four files agree

class GridCells(HTMLParser):
    """(row, kernel) -> data-verdict, kernel -> totals, and the text of the page."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.totals, self.changed, self.row, self.kernel_row = {}, {}, {}, None, None
        self.arch, self.jit, self.columns = {}, {}, {}
        self.text = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-row" in a:
            self.row = a["data-row"]
        if tag == "tr" and "data-kernel" in a:
            self.kernel_row = a["data-kernel"]
        if tag == "td" and "data-kernel" in a and self.row:
            self.cells[(self.row, a["data-kernel"])] = a["data-verdict"]
        if tag == "td" and "data-arch" in a:
            self.arch[self.kernel_row] = a["data-arch"]
        if tag == "td" and "data-jit" in a:
            self.jit[self.kernel_row] = a["data-jit"]
        if tag == "th" and "data-kernel" in a:  # a grid's column header
            self._column = a["data-kernel"]
            self.columns.setdefault(self._column, [])
        if tag == "td" and "data-changed" in a:
            self.changed[self.row] = a["data-changed"]
        if tag == "td" and "data-verdict" in a and "n" in a.get("class", "").split():
            self.totals.setdefault(self.kernel_row, {})[a["data-verdict"]] = None
            self._total = (self.kernel_row, a["data-verdict"])

    def handle_endtag(self, tag):
        if tag == "th":
            self._column = None

    def handle_data(self, data):
        self.text.append(data)
        if getattr(self, "_column", None) and data.strip():
            self.columns[self._column].append(data.strip())
        if getattr(self, "_total", None):
            kernel, verdict = self._total
            self.totals[kernel][verdict] = int(data)
            self._total = None


def expected_cells(res):
    cells = {}
    for case in res.cases:
        key = (case.behaviour or case.case.split("[")[0], case.kernel)
        cells.setdefault(key, []).append(case.verdict)
    return {key: worst(v) for key, v in cells.items()}


def check_reports_agree(directory):
    """JUnit, Markdown and HTML say what report.json says, case by case and in the totals."""
    res = results.load(directory / results.REPORT_JSON)
    assert res.cases
    xml = ET.parse(directory / results.REPORT_JUNIT).getroot()
    suites = {s.find("properties/property[@name='kernel']").get("value"): s for s in xml}
    assert list(suites) == res.kernel_order()
    for kernel, suite in suites.items():
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        info = res.kernels[kernel]
        jit = info.bpf_jit_enable
        assert props == {"kernel": kernel, "kernel_version": info.version or "",
                         "uname": info.uname or "", "kernel_arch": info.architecture,
                         "bpf_jit_enable": str(jit) if jit is not None else "",
                         "machine": info.machine or "", "rootfs": info.rootfs or ""}
        cases = {junit.testcase_name(c): c for c in res.for_kernel(kernel)}
        seen = {tc.get("name"): tc for tc in suite.iter("testcase")}
        assert seen.keys() == cases.keys()
        for name, tc in seen.items():
            verdict = cases[name].verdict
            assert tc.get("status") == verdict
            assert (tc.find("failure") is not None) == (verdict == "fail")
            assert (tc.find("error") is not None) == (verdict == "crashed")
            assert (tc.find("skipped") is not None) == (verdict == "skipped")
        counts = res.counts(kernel)
        assert int(suite.get("failures")) == counts["fail"]
        assert int(suite.get("errors")) == counts["crashed"]
    md = (directory / results.REPORT_MARKDOWN).read_text()
    page = GridCells((directory / results.REPORT_HTML).read_text())
    assert {k: v for k, v in page.cells.items() if v != "none"} == expected_cells(res)
    assert all(key not in expected_cells(res) for key, v in page.cells.items() if v == "none")
    for kernel in res.kernel_order():
        counts, info = res.counts(kernel), res.kernels[kernel]
        assert page.totals[kernel] == counts
        row = next(line for line in md.splitlines() if line.startswith(f"| {kernel} |"))
        assert row.endswith(f" | {info.architecture} | {info.jit} | "
                            + " | ".join(str(counts[v]) for v in results.VERDICTS) + " |")
        assert f" {kernel} · {info.architecture} |" in md  # the grid's column header
        assert page.arch[kernel] == info.architecture
        assert page.jit[kernel] == ("" if info.bpf_jit_enable is None else str(info.bpf_jit_enable))
        headers = page.columns[kernel]  # one per doc section's table
        assert set(zip(headers[::2], headers[1::2], strict=True)) == {(kernel, info.architecture)}
    return res, md, page


@pytest.mark.parametrize("fixture", [BOTH, REGRESSION], ids=["both", "regression"])
def test_junit_markdown_and_html_agree_with_the_json(fixture, tmp_path):
    grid.write_reports(results.load(fixture), tmp_path)
    check_reports_agree(tmp_path)


def test_grid_shows_the_differences_between_two_kernels_with_reasons(tmp_path):
    res, md, page = check_reports_agree_from(BOTH, tmp_path)
    assert res.kernel_order() == ["debian-5.10", "debian-7.2"]
    # AF_UNIX sockets came in 5.15: 5.10 shows the expected difference, with reason and source
    assert page.cells[("U12", "debian-5.10")] == "expected-difference"
    assert page.cells[("U12", "debian-7.2")] == "pass"
    assert page.changed["U12"] == "debian-7.2"
    text = " ".join(page.text)
    assert "AF_UNIX sockets in sockmap came in 5.15" in text and "behaviours.md U12" in text
    assert re.search(r"\| \*\*U12\*\* .*\| 🟨 expected difference: AF_UNIX sockets in sockmap came "
                     r"in 5\.15 \(source: behaviours\.md U12 .*\) \| ✅ pass \| "
                     r"debian-7\.2 \(was debian-5\.10\) \|", md)
    # behaviours that hold on both kernels mark no change
    assert page.cells[("U1", "debian-7.2")] == "pass" and page.changed["U1"] == ""
    # rows are grouped by doc section, in the doc's order (the expectations file has another)
    assert md.index("## introduction") < md.index("## User space / bpf_map_lookup_elem()")


def check_reports_agree_from(fixture, tmp_path):
    grid.write_reports(results.load(fixture), tmp_path)
    return check_reports_agree(tmp_path)


def test_the_html_page_needs_no_network(tmp_path):
    grid.write_reports(results.load(REGRESSION), tmp_path)
    page = (tmp_path / results.REPORT_HTML).read_text()
    assert not re.search(r"<(link|script|img|iframe)\b|\bsrc=|url\(|@import", page)
    assert not re.search(r'href="(?!#)', page)  # links only within the page


def test_failures_carry_reproduction_lines_and_console(tmp_path):
    res, md, _page = check_reports_agree_from(REGRESSION, tmp_path)
    failed = [c for c in res.cases if c.verdict in ("fail", "crashed")]
    assert {c.verdict for c in failed} == {"fail", "crashed"}
    # The run judged with its own expectations file: rerunning a case must judge with it too.
    run_args = shlex.split(res.runs[0].command)
    expectations = run_args[run_args.index("--expectations") + 1]
    for case in failed:
        assert shlex.split(case.reproduce) == ["./kconform", "suite", "--kernel", case.kernel,
                                               case.id, "--expectations", expectations]
        assert case.boot.startswith("vng --run ") and "--exec" not in case.boot
        assert case.reproduce in md and case.boot in md
    panic = next(c for c in failed if c.verdict == "crashed")
    assert panic.behaviour is None and panic.case == "test_2_panic"
    assert any("Kernel panic" in line for line in panic.console)
    xml = ET.parse(tmp_path / results.REPORT_JUNIT).getroot()
    error = next(tc for tc in xml.iter("testcase") if tc.find("error") is not None)
    assert "Kernel panic" in error.find("system-out").text
    assert panic.reproduce in error.find("error").text


# ---------------------------------------------------------------------- merge

def test_merging_two_one_kernel_runs_gives_the_grid_of_one_run_over_both(tmp_path):
    # the newer kernel first: columns still come out in version order
    proc = kconform("merge", ONLY_72, ONLY_510.parent / ONLY_510.name, "-o", tmp_path / "merged")
    assert proc.returncode == 0, proc.stderr
    grid.write_reports(results.load(BOTH), tmp_path / "one")
    for name in (results.REPORT_MARKDOWN, results.REPORT_HTML):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "one" / name).read_text()
    check_reports_agree(tmp_path / "merged")
    merged = results.load(tmp_path / "merged")
    assert len(merged.runs) == 2 and len(merged.cases) == len(results.load(BOTH).cases)


def test_merge_refuses_two_runs_of_one_kernel(tmp_path):
    proc = kconform("merge", ONLY_510, BOTH, "-o", tmp_path)
    assert proc.returncode == 2
    assert "kernel debian-5.10 is in both" in proc.stderr and "leave one of the two" in proc.stderr


def test_merge_and_compare_name_bad_input(tmp_path):
    (tmp_path / "junk.json").write_text('{"tests": []}')
    proc = kconform("merge", tmp_path / "junk.json")
    assert proc.returncode == 2 and "not a kconform results file" in proc.stderr
    proc = kconform("compare", tmp_path / "missing.json", BOTH)
    assert proc.returncode == 2 and "no such results file" in proc.stderr


def test_merge_takes_paths_relative_to_the_callers_directory(tmp_path):
    (tmp_path / "a.json").write_text(ONLY_510.read_text())
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "merge", "a.json", "-o", "out"],
                          cwd=REPO, env={"KCONFORM_CALLER_CWD": str(tmp_path), "PATH": "/usr/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / results.REPORT_HTML).is_file()


# ---------------------------------------------------------------------- compare

def test_compare_exits_non_zero_and_names_a_regressed_behaviour():
    proc = kconform("compare", REGRESSION, "--base", "debian-5.10", "--new", "debian-7.2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "REGRESSION: L2 lookup from user space with a 4-byte value fails with ENOSPC" in out
    assert out.splitlines()[-1] == "1 behaviour(s) regressed on debian-7.2 against debian-5.10: L2"
    assert "rerun: ./kconform suite --kernel debian-7.2 'cases/test_lookup.py::" in out
    # L1 and L3 behave the same on both kernels: not listed
    assert "L1 " not in out and "L3 " not in out


def test_compare_of_two_saved_runs_lists_documented_changes_without_failing():
    proc = kconform("compare", ONLY_510, ONLY_72)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("kconform compare: base debian-5.10 (5.10.")
    for behaviour in ("U12", "U13"):
        assert re.search(rf"^changed as documented: {behaviour} ", out, re.M)
    assert "why: AF_UNIX sockets in sockmap came in 5.15" in out
    assert not re.search(r"^changed as documented: U1 ", out, re.M)  # same on both: not printed
    assert out.splitlines()[-1] == "0 behaviour(s) regressed on debian-7.2 against debian-5.10"


def test_an_expected_difference_on_the_new_kernel_is_no_regression():
    proc = kconform("compare", ONLY_72, ONLY_510)  # backwards: 7.2 as base, 5.10 as new
    assert proc.returncode == 0
    assert re.search(r"^changed as documented: U12 ", proc.stdout, re.M)


def test_compare_needs_two_kernels():
    proc = kconform("compare", ONLY_510)
    assert proc.returncode == 2 and "--base and --new" in proc.stderr
    proc = kconform("compare", BOTH, "--base", "debian-5.10", "--new", "debian-6.12")
    assert proc.returncode == 2 and "no results for kernel 'debian-6.12'" in proc.stderr


def test_regression_rule():
    def case(verdict, observed=None):
        return results.CaseResult(id="f::t", case="t", file="f", kernel="k", reproduce="r",
                                  verdict=results.Verdict(verdict), observed=observed)
    assert compare.classify(case("pass", {"a": 1}), case("fail", {"a": 2})) == compare.REGRESSION
    assert compare.classify(case("expected-difference", {"a": 1}), case("crashed")) == \
        compare.REGRESSION
    assert compare.classify(case("fail", {"a": 1}), case("pass", {"a": 2})) == compare.FIXED
    assert compare.classify(case("fail", {"a": 1}), case("fail", {"a": 2})) == compare.STILL_FAILING
    assert compare.classify(case("expected-difference", {"a": 1}), case("pass", {"a": 2})) == \
        compare.AS_DOCUMENTED
    assert compare.classify(case("pass", {"a": 1}), case("pass", {"a": 1})) is None


def test_suite_compare_checks_its_arguments():
    proc = kconform("suite", "--compare", "debian-5.10")
    assert proc.returncode == 2 and "--compare takes two kernels" in proc.stderr
    proc = kconform("suite", "--compare", "debian-5.10", "debian-7.2", "--kernel", "debian-6.1")
    assert proc.returncode == 2 and "leave out --kernel" in proc.stderr
    # the two names say the architectures; --arch would run other kernels than compare reads
    proc = kconform("suite", "--compare", "debian-6.12", "debian-6.12-arm64", "--arch", "arm64")
    assert proc.returncode == 2 and "leave out --arch" in proc.stderr


# ---------------------------------------------------------------------- the run writes them

def test_a_run_records_every_case_including_those_without_a_verdict(run_pytest):
    proc = run_pytest("tests/reportcases/fake.py", "--kernel", "debian-5.10,debian-7.2",
                      "-n", "2")
    assert proc.returncode == 1
    res, _md, _page = check_reports_agree(proc.results)
    verdicts = {(c.case, c.kernel): (c.behaviour, c.verdict) for c in res.cases}
    assert verdicts == {
        ("test_a_pass", "debian-5.10"): ("U1", "pass"),
        ("test_a_pass", "debian-7.2"): ("U1", "pass"),
        ("test_b_expected_difference_on_5_10", "debian-5.10"): ("U2", "expected-difference"),
        ("test_b_expected_difference_on_5_10", "debian-7.2"): ("U2", "pass"),
        ("test_c_fails_before_expect", "debian-5.10"): ("U3", "fail"),   # from its expect() call
        ("test_c_fails_before_expect", "debian-7.2"): ("U3", "fail"),
        ("test_d_marked", "debian-5.10"): ("U4", "pass"),                 # from its marker
        ("test_d_marked", "debian-7.2"): ("U4", "fail"),
        ("test_d_behaviour_as_parameter[U5]", "debian-5.10"): ("U5", "fail"),  # a parameter
        ("test_d_behaviour_as_parameter[U5]", "debian-7.2"): ("U5", "fail"),
        ("test_e_killed", "debian-5.10"): (None, "pass"),
        ("test_e_killed", "debian-7.2"): (None, "pass"),
    }
    fail = next(c for c in res.cases if c.case == "test_c_fails_before_expect")
    assert "RuntimeError: the guest-side function raised" in fail.message
    assert results.load(proc.results).runs[0].complete is True
    assert "kconform reports:" in proc.stdout


def test_an_interrupted_run_leaves_valid_files_with_what_finished(run_pytest):
    proc = run_pytest("tests/reportcases/fake.py", "--kernel", "debian-5.10,debian-7.2", "-n",
                      "0", env={"KCONFORM_FAKE_KILL": "debian-7.2"})
    assert proc.returncode == -9
    res = results.load(proc.results)  # valid JSON ...
    xml = ET.parse(proc.results / results.REPORT_JUNIT).getroot()  # ... and valid XML
    finished = {(c.case, c.kernel) for c in res.cases}
    assert ("test_e_killed", "debian-5.10") in finished
    assert ("test_e_killed", "debian-7.2") not in finished and len(finished) == 11
    assert len(list(xml.iter("testcase"))) == 11
    assert res.runs[0].complete is False and res.runs[0].finished is None


def test_a_test_that_kills_its_worker_is_recorded_once_as_failed(run_pytest):
    proc = run_pytest("tests/reportcases/fake.py", "--kernel", "debian-5.10,debian-7.2", "-n", "2",
                      "--max-worker-restart=2", env={"KCONFORM_FAKE_KILL": "debian-7.2"})
    assert proc.returncode == 1
    res = results.load(proc.results)
    killed = [c for c in res.cases if c.case == "test_e_killed"]
    assert [(c.kernel, c.verdict) for c in killed] == [("debian-5.10", "pass"),
                                                       ("debian-7.2", "fail")]
    assert re.match(r"worker 'gw\d+' crashed while running", killed[1].message)
    check_reports_agree(proc.results)


def test_the_reproduction_line_reruns_just_that_case(run_pytest, tmp_path):
    proc = run_pytest("tests/reportcases/fake.py", "--kernel", "debian-5.10,debian-7.2")
    case = next(c for c in results.load(proc.results).cases
                if c.case == "test_d_marked" and c.verdict == "fail")
    words = case.reproduce.split()
    assert words[:2] == ["./kconform", "suite"]
    rerun = subprocess.run([sys.executable, "-m", "harness.cli", *shlex.split(
        case.reproduce)[1:], f"--results-dir={tmp_path / 'rerun'}", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 1
    assert re.search(r"\b1 failed\b", rerun.stdout)
    assert "passed" not in rerun.stdout.splitlines()[-1]
    (only,) = results.load(tmp_path / "rerun").cases
    assert (only.id, only.kernel) == (case.id, "debian-7.2")


def test_kernel_versions_order_columns():
    assert versions.sort_key("5.10.223") < versions.sort_key("6.1.176") < \
        versions.sort_key("6.12.57") < versions.sort_key("7.2.1")
    assert versions.sort_key("6.1.176-1") == (6, 1, 176, versions.RELEASE)
    assert versions.sort_key(None) > versions.sort_key("7.3")


def test_results_file_of_another_format_is_refused():
    with pytest.raises(ResultsError, match="not a kconform results file"):
        results.Results.from_json({"format": "something-else"})
    data = json.loads(BOTH.read_text())
    data["cases"][0]["verdict"] = "maybe"
    with pytest.raises(ResultsError, match="verdict 'maybe'"):
        results.Results.from_json(data)


def test_junit_is_one_suite_per_kernel_with_kernel_properties():
    root = ET.fromstring(junit.junit_text(results.load(BOTH)).encode())
    assert [s.get("name") for s in root] == ["kconform debian-5.10", "kconform debian-7.2"]
    tc = next(root.iter("testcase"))
    assert tc.get("classname").startswith("debian-5.10.")
    assert re.match(r"[A-Z]\d+\w* test_", tc.get("name"))


def test_costly_rewrites_are_spaced_out_and_what_they_skip_is_written_soon(tmp_path, monkeypatch):
    """Once a rewrite costs over 10 ms, the next waits 20 times as long; a timer then writes
    the cases that finished meanwhile, though no further case finishes."""
    from types import SimpleNamespace

    from harness.plugin import recording as report
    writes = []

    def slow_json(results_doc, path, compact=False):
        time.sleep(0.02)
        writes.append(len(results_doc.cases))

    monkeypatch.setattr(report, "write_json", slow_json)
    monkeypatch.setattr(report, "write_atomic", lambda path, text: None)
    monkeypatch.setattr(report, "junit_text", lambda results_doc, pretty=True: "")
    config = SimpleNamespace(invocation_params=SimpleNamespace(args=()),
                             addinivalue_line=lambda *a: None)
    reporter = report.Reporter(config, SimpleNamespace(results_dir=tmp_path))
    for n in range(5):
        reporter.results.cases.append(results.CaseResult(
            id=str(n), case="c", file="f", kernel="k", verdict=results.Verdict.PASS,
            reproduce="r"))
        reporter._write_incremental()
    assert writes == [1]  # the first cost 20 ms: the next four waited
    deadline = time.monotonic() + 5
    while writes == [1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writes == [1, 5]  # the timer wrote them, with no sixth case to trigger it
