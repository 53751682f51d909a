"""JUnit XML from a results document, written with the junit-xml library.

One <testsuite> per kernel, whose properties say which kernel ran (name, exact package version,
`uname -r`), and one <testcase> per (behaviour case, kernel). The classname is "<kernel>.<topic>",
so viewers that split packages on the last dot (Jenkins) group by kernel, then by doc topic.
The testcase's status attribute holds kconform's verdict; expected differences pass, with their
reason and source in system-out; failures carry the message, the reproduction lines and the
guest console lines of that test.
"""
from __future__ import annotations

from junit_xml import TestCase, TestSuite, to_xml_report_string

from .results import CRASHED, EXPECTED_DIFFERENCE, FAIL, SKIPPED, Results


def testcase_name(case: dict) -> str:
    return f"{case.get('behaviour') or '-'} {case['case']}"


def _topic(case: dict) -> str:
    stem = case["file"].rsplit("/", 1)[-1].removesuffix(".py")
    return stem.removeprefix("test_")


def reproduction_text(case: dict) -> str:
    lines = [f"reproduce: {case['reproduce']}"]
    if case.get("boot"):
        lines.append(f"boot it by hand: {case['boot']}")
    if case.get("console_log"):
        lines.append(f"console log: {case['console_log']}")
    return "\n".join(lines)


def _testcase(case: dict) -> TestCase:
    verdict = case["verdict"]
    tc = TestCase(testcase_name(case), classname=f"{case['kernel']}.{_topic(case)}",
                  elapsed_sec=case.get("duration"), file=case["file"], status=verdict)
    message = case.get("message") or ""
    first = message.strip().splitlines()[0] if message.strip() else verdict
    if verdict in (FAIL, CRASHED):
        output = f"{message}\n\n{reproduction_text(case)}"
        if verdict == FAIL:
            tc.add_failure_info(message=first, output=output, failure_type=FAIL)
        else:
            tc.add_error_info(message=first, output=output, error_type=CRASHED)
        console = case.get("console") or []
        tc.stdout = ("guest console during this test:\n" + "\n".join(console)) if console \
            else "no guest console output during this test"
    elif verdict == SKIPPED:
        tc.add_skipped_info(message=first)
    elif verdict == EXPECTED_DIFFERENCE:
        tc.stdout = (f"expected difference on {case['kernel']}: {case.get('reason', '')}\n"
                     f"expected and observed: {case.get('observed')}\nsource: {case.get('source', '')}")
    return tc


def junit_text(results: Results, pretty: bool = True) -> str:
    """pretty=False for the rewrite after every case: pretty-printing is 3/4 of the cost."""
    suites = []
    for kernel in results.kernel_order():
        info = results.kernels[kernel]
        properties = {"kernel": kernel, "kernel_version": info.get("version") or "",
                      "uname": info.get("uname") or "", "machine": info.get("machine") or "",
                      "rootfs": info.get("rootfs") or ""}
        suites.append(TestSuite(f"kconform {kernel}", [_testcase(c) for c in results.for_kernel(kernel)],
                                properties=properties))
    return to_xml_report_string(suites, prettyprint=pretty, encoding="utf-8")
