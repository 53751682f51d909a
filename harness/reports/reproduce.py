"""How to reproduce a case: the line that reruns it, and the line that boots its kernel by hand.

Written once here: the plugin records the rerun line in each case, and every report that shows
a failure (JUnit, the Markdown and HTML grid, compare) presents these same steps.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from .results import CaseResult


def rerun_command(kernel: str, nodeid: str, expectations_file: str | None = None) -> str:
    """`./kconform suite` for just this case on just this kernel, judged by the same file."""
    words = ["./kconform", "suite", "--kernel", kernel, nodeid]
    if expectations_file:
        words += ["--expectations", expectations_file]
    return shlex.join(words)


@dataclass(frozen=True)
class Step:
    label: str                 # the step in a line of text: "<label>: <command>"
    intro: str                 # the step as a sentence before its command (HTML)
    command: str
    hint_option: str | None = None   # an option worth adding, and what it shows
    hint_purpose: str = ""


def steps(case: CaseResult) -> list[Step]:
    found = [Step("reproduce", "Rerun just this case", case.reproduce)]
    if case.boot:
        found.append(Step("boot it by hand", "Boot this kernel by hand", case.boot,
                          hint_option="--dry-run", hint_purpose="for the QEMU command line"))
    return found


def reproduction_text(case: CaseResult) -> str:
    return "\n".join(f"{step.label}: {step.command}" for step in steps(case))
