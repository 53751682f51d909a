"""What a case came to: the one verdict type of judging, the plugin and every report.

The values are the words report.json has always held, so files written before this type read
the same. Judging produces them; reports order and group by them; neither needs the other.
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Verdict(StrEnum):
    # Declared in the order the reports list them (the Markdown and HTML totals, JUnit counts).
    PASS = "pass"
    EXPECTED_DIFFERENCE = "expected-difference"
    # --rerun-failed: a case that failed and then passed on a fresh guest. Neither good nor bad:
    # the kernel did what is documented once, not every time, so it is never a pass and never
    # a regression, and a reader is always shown the attempts that failed.
    FLAKY = "flaky"
    FAIL = "fail"
    CRASHED = "crashed"
    SKIPPED = "skipped"

    @property
    def good(self) -> bool:
        """The kernel does what its expectation says (an older documented outcome included)."""
        return self in (Verdict.PASS, Verdict.EXPECTED_DIFFERENCE)

    @property
    def bad(self) -> bool:
        return self in (Verdict.FAIL, Verdict.CRASHED)

    @property
    def failed_an_attempt(self) -> bool:
        """Some run of the case failed: the reports show its evidence (a flaky case's is that of
        the attempts that failed before it passed)."""
        return self.bad or self == Verdict.FLAKY

    @property
    def severity(self) -> int:
        """A cell holding several cases (variants of one behaviour) shows its most severe."""
        return _SEVERITY[self]

    @property
    def label(self) -> str:
        """The verdict as a reader sees it in a report: 'expected difference'."""
        return self.value.replace("-", " ")


_SEVERITY = {Verdict.SKIPPED: 0, Verdict.PASS: 1, Verdict.EXPECTED_DIFFERENCE: 2,
             Verdict.FLAKY: 3, Verdict.FAIL: 4, Verdict.CRASHED: 5}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=lambda verdict: verdict.severity)
