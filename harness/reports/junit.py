"""JUnit XML from a results document, written with the junit-xml library.

One <testsuite> per kernel, whose properties say which kernel ran (name, exact package version,
`uname -r`, kernel_arch, and bpf_jit_enable as the guest read it: empty when unknown), and one
<testcase> per (behaviour case, kernel). The classname is "<kernel>.<topic>", so viewers that
split packages on the last dot (Jenkins) group by kernel, then by doc topic.
The testcase's status attribute holds kconform's verdict; expected differences pass, with their
reason and source in system-out; failures carry the message, the reproduction lines and the
guest console lines of that test.

Under --rerun-failed a case's earlier attempts are written as Maven Surefire writes its reruns
(surefire-test-report-3.0.xsd, maven-surefire-plugin's rerunFailingTestsCount): a flaky case
is a passed testcase holding one <flakyFailure message= type=> per failed attempt, each with
<stackTrace> (the attempt's message and where its guest's console is) and <system-out> (its
console lines), so a consumer that knows no more counts it as passed; a case that failed every
time keeps its <failure> (or crashed: <error>), which is the last attempt, and holds a
<rerunFailure> for each earlier one.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from junit_xml import TestCase, TestSuite, to_xml_report_string

from ..judging.verdicts import Verdict
from .reproduce import reproduction_text
from .results import Attempt, CaseResult, Results

# The schema's order of a testcase's children: an attempt's element goes before these.
_AFTER_ATTEMPTS = ("skipped", "error", "rerunError", "flakyError", "system-out", "system-err")


def testcase_name(case: CaseResult) -> str:
    return f"{case.behaviour or '-'} {case.case}"


def _topic(case: CaseResult) -> str:
    stem = case.file.rsplit("/", 1)[-1].removesuffix(".py")
    return stem.removeprefix("test_")


def _testcase(case: CaseResult) -> TestCase:
    verdict = case.verdict
    tc = TestCase(testcase_name(case), classname=f"{case.kernel}.{_topic(case)}",
                  elapsed_sec=case.duration, file=case.file, status=verdict.value)
    message = case.message
    first = message.strip().splitlines()[0] if message.strip() else verdict.value
    if verdict.bad:
        evidence = reproduction_text(case)
        if case.console_log:
            evidence += f"\nconsole log: {case.console_log}"
        output = f"{message}\n\n{evidence}"
        if verdict == Verdict.FAIL:
            tc.add_failure_info(message=first, output=output, failure_type=Verdict.FAIL.value)
        else:
            tc.add_error_info(message=first, output=output, error_type=Verdict.CRASHED.value)
        console = case.console or []
        tc.stdout = ("guest console during this test:\n" + "\n".join(console)) if console \
            else "no guest console output during this test"
    elif verdict == Verdict.SKIPPED:
        tc.add_skipped_info(message=first)
    elif verdict == Verdict.FLAKY:
        failed = len(case.attempts)
        tc.stdout = (f"flaky on {case.kernel}: failed {failed} time{'s' if failed > 1 else ''} "
                     f"before it passed on a fresh guest (each failure is a flakyFailure "
                     f"here)\nreproduce: {case.reproduce}")
    elif verdict == Verdict.EXPECTED_DIFFERENCE:
        tc.stdout = (f"expected difference on {case.kernel}: {case.reason or ''}\n"
                     f"expected and observed: {case.observed}\nsource: {case.source or ''}")
    return tc


def attempt_element(case: CaseResult, attempt: Attempt) -> ET.Element:
    """One earlier attempt as Surefire writes a rerun: <flakyFailure> when the case then passed,
    <rerunFailure> when it never did."""
    tag = "flakyFailure" if case.verdict == Verdict.FLAKY else "rerunFailure"
    message = attempt.message.strip()
    first = message.splitlines()[0] if message else attempt.verdict.value
    element = ET.Element(tag, {"message": f"attempt {attempt.number}: {first}",
                               "type": attempt.verdict.value})
    trace = ET.SubElement(element, "stackTrace")
    trace.text = message + (f"\nconsole log: {attempt.console_log}" if attempt.console_log
                            else "")
    if attempt.console:
        out = ET.SubElement(element, "system-out")
        out.text = "guest console during this attempt:\n" + "\n".join(attempt.console)
    return element


class _SuiteWithAttempts(TestSuite):  # type: ignore[misc]  # junit-xml ships no types
    """junit-xml's suite, with each case's earlier attempts in its testcase element: junit-xml
    knows no rerun elements."""

    def __init__(self, name: str, cases: list[CaseResult], properties: dict[str, str]):
        super().__init__(name, [_testcase(c) for c in cases], properties=properties)
        self.results = cases

    def build_xml_doc(self, encoding: str | None = None) -> ET.Element:
        suite: ET.Element = super().build_xml_doc(encoding=encoding)
        for case, element in zip(self.results, suite.iter("testcase"), strict=True):
            at = next((i for i, child in enumerate(element) if child.tag in _AFTER_ATTEMPTS),
                      len(element))
            for offset, attempt in enumerate(case.attempts):
                element.insert(at + offset, attempt_element(case, attempt))
        return suite


def junit_text(results: Results, pretty: bool = True) -> str:
    """pretty=False for the rewrite after every case: pretty-printing is 3/4 of the cost."""
    suites = []
    for kernel in results.kernel_order():
        info = results.kernels[kernel]
        jit = info.bpf_jit_enable
        properties = {"kernel": kernel, "kernel_version": info.version or "",
                      "uname": info.uname or "", "kernel_arch": info.architecture,
                      "bpf_jit_enable": str(jit) if jit is not None else "",
                      "machine": info.machine or "", "rootfs": info.rootfs or ""}
        suites.append(_SuiteWithAttempts(f"kconform {kernel}", results.for_kernel(kernel),
                                         properties))
    text: str = to_xml_report_string(suites, prettyprint=pretty, encoding="utf-8")
    return text
