"""Part R of issue 14: typed results written back as they were read, the HTML autoescaped, the
reproduction lines written once, and the plugin's report hooks implemented once each."""
from __future__ import annotations

import ast
import json
import re
from html.parser import HTMLParser

import pytest

from harness.judging.verdicts import Verdict, worst
from harness.reports import grid, junit, reproduce, results
from tests.conftest import REPO
from tests.test_report import DATA, REGRESSION


@pytest.mark.parametrize("path", sorted(DATA.glob("*.json")), ids=lambda p: p.stem)
def test_a_saved_results_file_is_written_back_as_it_was_read(path):
    """merge and compare of old and new files agree only if the typed records keep every key
    (and leave out the ones an older run did not write)."""
    original = json.loads(path.read_text())
    assert results.load(path).to_json() == original


def test_verdicts_are_todays_words_in_severity_order():
    # flaky (--rerun-failed, issue 18): between expected difference and fail
    assert [v.value for v in Verdict] == ["pass", "expected-difference", "flaky", "fail",
                                          "crashed", "skipped"]
    assert worst([Verdict.PASS, Verdict.SKIPPED, Verdict.EXPECTED_DIFFERENCE]) == \
        Verdict.EXPECTED_DIFFERENCE
    assert worst([Verdict.FAIL, Verdict.CRASHED]) == Verdict.CRASHED
    assert json.dumps(Verdict.FAIL) == '"fail"'


class Elements(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_values_in_the_html_page_are_text_not_markup(tmp_path):
    data = json.loads(REGRESSION.read_text())
    hostile = '<script>alert(1)</script>"><img src=x>'
    for case in data["cases"]:
        case["message"] = hostile
        case["title"] = hostile
    data["kernels"]["debian-7.2"]["uname"] = hostile
    page = grid.html_page(results.Results.from_json(data))
    parsed = Elements(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert hostile in "".join(parsed.text)


def test_the_reproduction_lines_are_the_same_in_every_report():
    res = results.load(REGRESSION)
    failed = [c for c in res.sorted_cases() if c.verdict.bad]
    assert failed
    xml = junit.junit_text(res)
    md = grid.markdown(res)
    page = grid.html_page(res)
    for case in failed:
        text = reproduce.reproduction_text(case)
        assert text.splitlines() == [f"reproduce: {case.reproduce}",
                                     f"boot it by hand: {case.boot}"]
        assert text in md
        assert text.replace("'", "&apos;") in xml or text in xml.replace("&apos;", "'")
        html_text = "".join(Elements(page).text)
        assert case.reproduce in html_text and case.boot in html_text
    # the plugin's rerun line is built by the same function the reports' text names
    case = failed[0]
    words = re.findall(r"--expectations (\S+)", case.reproduce)
    assert case.reproduce == reproduce.rerun_command(case.kernel, case.id, words[0])


def _hook_definitions(name: str) -> list[str]:
    found = []
    for path in sorted((REPO / "harness" / "plugin").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == name:
                found.append(path.name)
    return found


@pytest.mark.parametrize("hook", ["pytest_runtest_makereport", "pytest_runtest_call"])
def test_each_report_event_is_handled_in_one_place(hook):
    assert len(_hook_definitions(hook)) == 1, _hook_definitions(hook)


def test_the_reporter_imports_nothing_of_the_machines():
    tree = ast.parse((REPO / "harness" / "plugin" / "recording.py").read_text())
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    assert not [m for m in modules if "machines" in m]
    source = (REPO / "harness" / "plugin" / "recording.py").read_text()
    assert "._accel" not in source and "._rootfs" not in source


# ---------------------------------------------------------------- the split of a case's guest time

class TimedSession:
    """Stands in for a GuestSession: each call took 0.5 s, split as the agent would send it."""

    def __init__(self, timing: dict[str, float]) -> None:
        self.timing = timing

    def call(self, fn, *, timeout, **kwargs):
        from harness.machines.session import CallResult
        return CallResult(result="OK", elapsed=0.5, timing=self.timing)


def test_a_cases_guest_timing_goes_from_its_calls_into_report_json_and_back():
    """fixtures.CaseGuest sums the calls' splits, recording.case_record reads the property,
    results writes and loads it (harness/agent/timing.py's kinds)."""
    from types import SimpleNamespace

    from harness.plugin.fixtures import CaseGuest
    from harness.plugin.recording import case_record

    item = SimpleNamespace(fspath="cases/test_redirect.py", user_properties=[])
    run = SimpleNamespace(case_timeout=10, health=SimpleNamespace(check=lambda health: []))
    guest = CaseGuest(item, run, "debian-6.12", TimedSession(
        {"bpf_load": 0.1, "waiting": 0.3, "sockets": 0.05}))
    guest.call("redirect")
    guest.call("redirect")
    props = [("kernel", "debian-6.12"), *item.user_properties]
    report = SimpleNamespace(nodeid="cases/test_redirect.py::test_x[debian-6.12]", when="call",
                             failed=False, skipped=False, duration=1.5, user_properties=props)
    case = case_record([report])
    assert case.guest_seconds == 1.0
    assert case.guest_timing == {"bpf_load": 0.2, "waiting": 0.6, "sockets": 0.1}
    data = results.Results(kernels={"debian-6.12": results.KernelRecord(name="debian-6.12")},
                           cases=[case]).to_json()
    assert data["cases"][0]["guest_timing"] == case.guest_timing
    assert results.Results.from_json(data).cases[0].guest_timing == case.guest_timing


def test_a_case_without_a_split_writes_none_and_loads_as_none():
    """Results from before guest_timing (every saved file in tests/data/results) load, and are
    written back without it (test_a_saved_results_file_is_written_back_as_it_was_read)."""
    res = results.load(REGRESSION)
    assert all(case.guest_timing is None for case in res.cases)
    assert all("guest_timing" not in case for case in res.to_json()["cases"])


@pytest.mark.parametrize("split", [{"waiting": "0.5"}, {"waiting": -1}, {"waiting": True},
                                   {"waiting": None}, [0.5]], ids=repr)
def test_a_damaged_guest_timing_is_a_results_error_naming_it(split):
    data = json.loads(REGRESSION.read_text())
    data["cases"][0]["guest_timing"] = split
    with pytest.raises(results.ResultsError, match=r"cases\[0\].*'guest_timing'"):
        results.Results.from_json(data, "report.json")


def test_how_a_guest_booted_goes_into_report_json_and_the_grids_header():
    """guest_boot (issue #17): results say whether a kernel's guest booted directly or through
    virtme-ng; results from before it load without one."""
    from harness.reports.grid import ran_on
    record = results.KernelRecord(name="debian-6.12", machine="qemu", rootfs="host",
                                  guest_boot="direct")
    data = record.to_json()
    assert data["guest_boot"] == "direct"
    assert results.KernelRecord.from_json(data).guest_boot == "direct"
    assert ran_on(record) == "qemu (direct boot), root: host"
    older = {k: v for k, v in data.items() if k != "guest_boot"}
    assert results.KernelRecord.from_json(older).guest_boot is None
    assert ran_on(results.KernelRecord.from_json(older)) == "qemu, root: host"
