"""JUnit XML from a results document, written with the junit-xml library.

One <testsuite> per kernel, whose properties say which kernel ran (name, exact package version,
`uname -r`, kernel_arch, and bpf_jit_enable as the guest read it: empty when unknown), and one
<testcase> per (behaviour case, kernel). The classname is "<kernel>.<topic>", so viewers that
split packages on the last dot (Jenkins) group by kernel, then by doc topic.
The testcase's status attribute holds kconform's verdict; expected differences pass, with their
reason and source in system-out; failures carry the message, the reproduction lines and the
guest console lines of that test.
"""
from __future__ import annotations

from junit_xml import TestCase, TestSuite, to_xml_report_string

from ..judging.verdicts import Verdict
from .reproduce import reproduction_text
from .results import CaseResult, Results


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
    elif verdict == Verdict.EXPECTED_DIFFERENCE:
        tc.stdout = (f"expected difference on {case.kernel}: {case.reason or ''}\n"
                     f"expected and observed: {case.observed}\nsource: {case.source or ''}")
    return tc


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
        suites.append(TestSuite(f"kconform {kernel}",
                                [_testcase(c) for c in results.for_kernel(kernel)],
                                properties=properties))
    text: str = to_xml_report_string(suites, prettyprint=pretty, encoding="utf-8")
    return text
