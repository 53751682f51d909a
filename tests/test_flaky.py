"""Issue 18 points 2 and 3 without a VM: the flaky verdict's rank, --rerun-failed's protocol on
cases that need no guest (tests/faultcases/flaky_noguest.py), and what every report makes of a
flaky case and of one that failed every round. tests/test_flaky_vm.py proves it on a real guest.
"""
import copy
import json
import re
import xml.etree.ElementTree as ET

import pytest

from harness.judging.verdicts import Verdict, worst
from harness.reports import compare, grid, junit, results
from harness.reports.results import Attempt, ResultsError
from tests.test_report import ONLY_72, GridCells, check_reports_agree

# ---------------------------------------------------------------------- the verdict


def test_flaky_ranks_between_expected_difference_and_fail():
    """Issue 18: "ranked between fail and expected difference in the grid", "never as pass"."""
    assert worst([Verdict.PASS, Verdict.FLAKY, Verdict.EXPECTED_DIFFERENCE]) == Verdict.FLAKY
    assert worst([Verdict.FLAKY, Verdict.FAIL]) == Verdict.FAIL
    assert worst([Verdict.FLAKY, Verdict.CRASHED]) == Verdict.CRASHED
    order = list(Verdict)  # the reports' order (totals columns, the legend)
    assert order.index(Verdict.EXPECTED_DIFFERENCE) + 1 == order.index(Verdict.FLAKY) \
        == order.index(Verdict.FAIL) - 1
    # neither good (compare's "fixed") nor bad (a regression), but its evidence is shown
    assert not Verdict.FLAKY.good and not Verdict.FLAKY.bad and Verdict.FLAKY.failed_an_attempt


# ---------------------------------------------------------------------- results with attempts

def _attempt(number: int, observed: str) -> Attempt:
    return Attempt(number=number, verdict=Verdict.FAIL,
                   message=f"mismatch: update: expected 'OK', observed '{observed}'\nmore",
                   observed={"update": observed},
                   console=[f"[ {number}.0] console of run {number}"],
                   console_log=f"/r/console/debian-7.2-gw0-{number}.log", duration=0.5)


@pytest.fixture
def flaky_results():
    """The saved 7.2 run with one passing case made flaky (one failed attempt) and another made
    to fail every round (two earlier attempts)."""
    res = results.load(ONLY_72)
    passing = [c for c in res.cases if c.verdict == Verdict.PASS]
    flaky = passing[0]
    failing = next(c for c in passing if c.behaviour != flaky.behaviour)  # another grid row
    flaky.verdict, flaky.attempts = Verdict.FLAKY, [_attempt(1, "EBUSY")]
    failing.verdict, failing.message = Verdict.FAIL, "mismatch: observed 'EBUSY3'"
    failing.attempts = [_attempt(1, "EBUSY1"), _attempt(2, "EBUSY2")]
    return res, flaky, failing


def test_attempts_are_written_and_read_back(flaky_results, tmp_path):
    res, flaky, failing = flaky_results
    results.write_json(res, tmp_path / "report.json")
    again = {c.id: c for c in results.load(tmp_path).cases}
    assert again[flaky.id].verdict == Verdict.FLAKY
    assert again[flaky.id].attempts == flaky.attempts
    assert [a.observed for a in again[failing.id].attempts] == [{"update": "EBUSY1"},
                                                               {"update": "EBUSY2"}]
    # a case that ran once writes no attempts: files stay as they were before --rerun-failed
    assert "attempts" not in next(c for c in res.cases if not c.attempts).to_json()


def test_results_from_before_reruns_load_without_attempts():
    res = results.load(ONLY_72)
    assert res.cases and all(c.attempts == [] for c in res.cases)
    assert all("attempts" not in case for case in json.loads(ONLY_72.read_text())["cases"])


@pytest.mark.parametrize("damage, problem", [
    ({"verdict": "maybe"}, "attempts[0]: verdict 'maybe' is not one of"),
    ({"number": "1"}, "attempts[0]: field 'number' = \"1\" is not the attempt's number"),
    ({"console": [1, 2]}, "attempts[0]: field 'console' holds something other than lines"),
    ({"message": None}, "attempts[0]: field 'message' = null is not text"),
])
def test_a_damaged_attempt_is_named(flaky_results, damage, problem):
    res, flaky, _ = flaky_results
    data = res.to_json()
    case = next(c for c in data["cases"] if c["id"] == flaky.id)
    case["attempts"][0].update(damage)
    with pytest.raises(ResultsError, match=re.escape(problem)):
        results.Results.from_json(data, "r.json")
    case["attempts"] = "attempt 1"
    with pytest.raises(ResultsError, match="field 'attempts' = \"attempt 1\" is not a list"):
        results.Results.from_json(data, "r.json")


# ---------------------------------------------------------------------- JUnit

def test_junit_writes_surefire_flaky_and_rerun_failures(flaky_results):
    """maven-surefire-plugin's surefire-test-report-3.0.xsd: a flaky test passes and holds a
    <flakyFailure message type> per failed run, with <stackTrace> and <system-out>; a test that
    never passed keeps its <failure> and holds a <rerunFailure> per earlier run."""
    res, flaky, failing = flaky_results
    root = ET.fromstring(junit.junit_text(res))
    (suite,) = root
    cases = {tc.get("name"): tc for tc in suite.iter("testcase")}
    tc = cases[junit.testcase_name(flaky)]
    assert tc.get("status") == "flaky"
    assert [child.tag for child in tc] == ["flakyFailure", "system-out"]
    (attempt,) = tc.findall("flakyFailure")
    assert attempt.get("type") == "fail"
    assert attempt.get("message") == "attempt 1: mismatch: update: expected 'OK', observed 'EBUSY'"
    assert attempt.find("stackTrace").text == ("mismatch: update: expected 'OK', observed "
                                               "'EBUSY'\nmore\nconsole log: "
                                               "/r/console/debian-7.2-gw0-1.log")
    assert "console of run 1" in attempt.find("system-out").text
    tc = cases[junit.testcase_name(failing)]
    assert [child.tag for child in tc] == ["failure", "rerunFailure", "rerunFailure",
                                           "system-out"]
    assert [e.get("message") for e in tc.findall("rerunFailure")] == [
        "attempt 1: mismatch: update: expected 'OK', observed 'EBUSY1'",
        "attempt 2: mismatch: update: expected 'OK', observed 'EBUSY2'"]
    # a consumer that knows no flaky elements counts the flaky case as passed
    assert int(suite.get("failures")) == 1 and int(suite.get("errors")) == 0
    assert int(root.get("failures")) == 1


# ---------------------------------------------------------------------- the grid

def test_the_grid_shows_flaky_with_the_failed_attempts(flaky_results, tmp_path):
    res, flaky, _ = flaky_results
    grid.write_reports(res, tmp_path)
    check_reports_agree(tmp_path)  # totals and cells as report.json counts them, flaky included
    md = (tmp_path / results.REPORT_MARKDOWN).read_text()
    assert "| pass | expected difference | flaky | fail | crashed | skipped |" in md
    assert "🔁 flaky (1 of 2) (see failures)" in md  # its row's other case passed
    assert f"🔁 {flaky.behaviour} {flaky.case} on debian-7.2: flaky</summary>" in md
    assert "attempt 1 of 2: fail\nmismatch: update: expected 'OK', observed 'EBUSY'" in md
    assert "console log: /r/console/debian-7.2-gw0-1.log" in md
    page = (tmp_path / results.REPORT_HTML).read_text()
    assert GridCells(page).cells[(flaky.behaviour, "debian-7.2")] == "flaky"
    section = re.search(r'<section class="failure flaky" id="(case-\d+)">(.*?)\n</section>\n',
                        page, re.S)
    assert section, "no failure section for the flaky case"
    assert f'href="#{section.group(1)}"' in page  # its grid cell links to it
    assert '<h4>attempt 1 of 2: fail</h4>' in section.group(2)
    assert "console of run 1" in section.group(2)


# ---------------------------------------------------------------------- compare

def test_compare_lists_a_flaky_case_and_never_calls_it_a_regression(flaky_results, tmp_path):
    res, flaky, failing = flaky_results
    base = results.load(ONLY_72)
    new = copy.deepcopy(res)
    new.cases = [c for c in new.cases if c.id != failing.id]  # its regression is another test's
    base_path, new_path = tmp_path / "base.json", tmp_path / "new.json"
    results.write_json(base, base_path)
    results.write_json(new, new_path)
    result = compare.compare(*compare.sides([str(base_path), str(new_path)]))
    assert result.regressions == [] and result.differences == []
    assert result.flaky == [(next(c for c in base.cases if c.id == flaky.id),
                             next(c for c in new.cases if c.id == flaky.id))]
    text = compare.render(result)
    assert ("flaky on debian-7.2: 1 case failed, then passed on a fresh guest (not compared, "
            "never a regression)") in text
    assert f"  {flaky.behaviour} {flaky.case}: failed 1 of 2 runs (debian-7.2: pass); rerun: " \
        f"{flaky.reproduce}" in text
    assert text.endswith("0 behaviour(s) regressed on debian-7.2 against debian-7.2")
    # flaky on the base side: listed there, and a fail on the new side is not a regression of it
    again = compare.compare(*compare.sides([str(new_path), str(base_path)]))
    assert again.regressions == [] and "flaky on debian-7.2: 1 case" in compare.render(again)


def test_compare_still_finds_a_regression_beside_a_flaky_case(flaky_results, tmp_path):
    res, flaky, failing = flaky_results
    base = results.load(ONLY_72)
    base_path, new_path = tmp_path / "base.json", tmp_path / "new.json"
    results.write_json(base, base_path)
    results.write_json(res, new_path)
    result = compare.compare(*compare.sides([str(base_path), str(new_path)]))
    assert [d.new.id for d in result.regressions] == [failing.id]
    assert [n.id for _, n in result.flaky] == [flaky.id]


# ---------------------------------------------------------------------- the plugin

def _runs(state) -> list[list[str]]:
    return [line.split() for line in (state / "runs").read_text().splitlines()]


def run_counted(run_pytest, tmp_path, *args):
    """A child run whose cases count their attempts in a state directory of the host's (a
    rerun's guest is a fresh one: only the host can count); the run and that directory."""
    state = tmp_path / "state"
    state.mkdir()
    return run_pytest(*args, env={"KCONFORM_FLAKY_STATE": str(state)}), state


@pytest.mark.parametrize("workers", ["0", "2"])
def test_failed_cases_run_again_after_their_kernel_and_a_second_pass_is_flaky(run_pytest,
                                                                              tmp_path, workers):
    proc, state = run_counted(run_pytest, tmp_path, "tests/faultcases/flaky_noguest.py",
                              "--kernel", "debian-5.10,debian-7.2", "--rerun-failed", "2",
                              "-n", workers)
    assert proc.returncode == 1  # the case that always fails, and the crash
    assert re.search(r"= 4 failed, 2 passed, 6 rerun, 2 flaky in ", proc.stdout), proc.stdout
    res, _md, _page = check_reports_agree(proc.results)
    for kernel in ("debian-5.10", "debian-7.2"):
        cases = {c.case: c for c in res.for_kernel(kernel)}
        assert {name: c.verdict for name, c in cases.items()} == {
            "test_a_fails_on_its_first_attempt_only": "flaky", "test_b_always_fails": "fail",
            "test_c_crashes_on_its_first_attempt_only": "crashed", "test_d_passes": "pass"}
        flaky, failing = cases["test_a_fails_on_its_first_attempt_only"], \
            cases["test_b_always_fails"]
        assert [(a.number, a.verdict, a.observed) for a in flaky.attempts] == [
            (1, "fail", {"update": "EBUSY"})]
        assert "observed 'EBUSY' (attempt 1)" in flaky.attempts[0].message
        assert flaky.observed == {"update": "OK"}  # the run that passed
        # failed every round (1 + 2 reruns): the last run is the case, the others its attempts
        assert [a.observed for a in failing.attempts] == [{"update": "EBUSY1"},
                                                          {"update": "EBUSY2"}]
        assert "observed 'EBUSY3'" in failing.message
        assert cases["test_c_crashes_on_its_first_attempt_only"].attempts == []  # not run again
        runs = [run for run in _runs(state) if run[0] == kernel]
        # the reruns come after every other case of the kernel, in the worker that ran them
        assert [(case, attempt) for _, case, attempt, _ in runs] == [
            ("first_only", "1"), ("always", "1"), ("crash_first", "1"), ("passes", "1"),
            ("first_only", "2"), ("always", "2"), ("always", "3")]
        assert len({worker for *_, worker in runs}) == 1


def test_a_run_whose_only_failure_was_flaky_passes(run_pytest, tmp_path):
    proc, _ = run_counted(run_pytest, tmp_path, "tests/faultcases/flaky_noguest.py",
                          "--kernel", "debian-7.2", "--rerun-failed", "1", "-k", "test_a or test_d")
    assert proc.returncode == 0, proc.stdout  # as Surefire: "The build will be successful"
    assert re.search(r"= 1 passed, 2 deselected, 1 rerun, 1 flaky in ", proc.stdout)
    assert {c.case: c.verdict for c in results.load(proc.results).cases} == {
        "test_a_fails_on_its_first_attempt_only": "flaky", "test_d_passes": "pass"}


def test_without_rerun_failed_a_failure_is_a_failure(run_pytest, tmp_path):
    proc, state = run_counted(run_pytest, tmp_path, "tests/faultcases/flaky_noguest.py",
                              "--kernel", "debian-7.2", "-k", "test_a")
    assert proc.returncode == 1
    (case,) = results.load(proc.results).cases
    assert case.verdict == "fail" and case.attempts == []
    assert len(_runs(state)) == 1


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_rerun_failed_takes_a_whole_number(run_pytest, value):
    proc = run_pytest("tests/faultcases/flaky_noguest.py", "--kernel", "debian-7.2",
                      f"--rerun-failed={value}")
    assert proc.returncode == 4  # pytest's usage error, before anything runs
    assert f"--rerun-failed: {value!r} is not a number of rounds; give a whole number" \
        in proc.stderr
    assert "Traceback" not in proc.stderr



def test_a_rerun_in_another_module_than_the_kernels_last_case(run_pytest, tmp_path):
    """The kernel's last case was torn down for the next kernel's first, in its own module: the
    rerun's module is set up again, as pytest would for a next item (its SetupState)."""
    proc, _ = run_counted(run_pytest, tmp_path, "tests/faultcases/flaky_noguest.py",
                          "tests/reportcases/fake.py", "--kernel", "debian-5.10,debian-7.2", "-k",
                          "(debian-5.10 and not test_e) or (debian-7.2 and test_e)",
                          "--rerun-failed", "1")
    assert proc.returncode == 1 and "INTERNALERROR" not in proc.stdout + proc.stderr
    verdicts = {(c.case, c.kernel): c.verdict for c in results.load(proc.results).cases}
    assert verdicts[("test_a_fails_on_its_first_attempt_only", "debian-5.10")] == "flaky"
    assert verdicts[("test_e_killed", "debian-7.2")] == "pass"


def test_a_rerun_that_fails_in_setup_leaves_the_case_as_it_last_failed(run_pytest, tmp_path):
    # Review finding: the setup error became the case, its observation lost, and KCIDB then
    # called it a case whose guest never booted.
    proc, _ = run_counted(run_pytest, tmp_path, "tests/faultcases/flaky_setup.py",
                          "--kernel", "debian-7.2", "--rerun-failed", "1")
    assert proc.returncode == 1
    (case,) = results.load(proc.results).cases
    assert (case.verdict, case.observed) == ("fail", {"update": "EBUSY"})
    assert "observed 'EBUSY'" in case.message and "not booting it again" not in case.message
