"""report.md renders every value it takes from a results file as literal text.

Kernel names and unames come from SSH targets, titles and reasons from expectations files,
observations and messages from guests, and a merged grid from anyone's report.json. GitHub job
summaries render inline HTML, links, emphasis, code, math and autolinks, so a hostile string
must come out inert: Markdown punctuation backslash-escaped, `<`, `>`, `&` as entities.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.judging.verdicts import Verdict
from harness.reports import grid, results
from tests.test_report import ONLY_510

HOSTILE = [
    "<script>alert(1)</script>",
    "[link](javascript:alert(1))",
    "![img](http://evil.example/x.png)",
    "*bold* _em_ **strong** ~~gone~~",
    "`code` ``more``",
    "# heading",
    "a | b",
    "line one\n\n# line two\r\n| --- |",
    "$x^2$ @someone https://evil.example www.evil.example a@b.example",
    "&lt; already an entity &amp; &#60;",
    "\\* a backslash before a star \\",
    "<!-- comment",
]

# What GitHub's Markdown would read as markup when it stands unescaped in inline text.
LIVE = set("\\`*[]#!|~$@<>&")
ENTITY = re.compile(r"&(amp|lt|gt|#\d+);")
ENTITY_CHARS = {"amp": "&", "lt": "<", "gt": ">"}


class RawMarkup(AssertionError):
    pass


def decode_row(line: str) -> list[str]:
    """A Markdown table row's cells as the text they render to, raising RawMarkup where a cell
    holds a character Markdown would act on. Cells are split at unescaped `|`."""
    assert line.startswith("| ") and line.endswith(" |"), line
    cells, current, i = [], [], 2
    body = line[:-2]
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] in LIVE | {"_"}:
            current.append(body[i + 1])
            i += 2
            continue
        if char == "&":
            match = ENTITY.match(body, i)
            if not match:
                raise RawMarkup(f"a bare & at {i} in {line!r}")
            name = match.group(1)
            current.append(ENTITY_CHARS.get(name) or chr(int(name[1:])))
            i = match.end()
            continue
        if char == "|":
            cells.append("".join(current).strip())
            current = []
            i += 1
            continue
        if char in LIVE:
            raise RawMarkup(f"unescaped {char!r} at {i} in {line!r}")
        if char == "_" and not (body[i - 1].isalnum() and i + 1 < len(body)
                                and body[i + 1].isalnum()):
            raise RawMarkup(f"an underscore that can emphasise at {i} in {line!r}")
        if ord(char) < 32:
            raise RawMarkup(f"a control character at {i} in {line!r}")
        current.append(char)
        i += 1
    cells.append("".join(current).strip())
    if re.search(r"www\.|://", line, re.IGNORECASE):
        raise RawMarkup(f"an autolink in {line!r}")
    return cells


def literal(text: str) -> str:
    """What a hostile value should read as: the same characters, line breaks as spaces."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", " ", text).strip()


def hostile_results(tmp_path: Path) -> Path:
    """A real run's report.json with every user- or guest-derived field made hostile."""
    data = json.loads(ONLY_510.read_text())
    kernel = "evil<b>|`k`*" + HOSTILE[1]
    info = data["kernels"].pop("debian-5.10")
    info.update(name=kernel, version=HOSTILE[0], uname=HOSTILE[7], machine=HOSTILE[8],
                arch=HOSTILE[3])
    data["kernels"][kernel] = info
    bid = data["cases"][0]["behaviour"]
    for b in data["behaviours"].values():
        b["section"] = "User space / " + HOSTILE[5] + ": " + HOSTILE[3]
    data["behaviours"][bid]["section"] = HOSTILE[5] + " " + HOSTILE[6]
    data["behaviours"][bid]["title"] = HOSTILE[4] + HOSTILE[9]
    for case in data["cases"]:
        case["kernel"] = kernel
        if case["verdict"] == Verdict.EXPECTED_DIFFERENCE:
            case["reason"], case["source"] = HOSTILE[10], HOSTILE[11] + HOSTILE[2]
    failing = copy.deepcopy(data["cases"][0])
    failing.update(id=failing["id"] + "x", case="test_x[" + HOSTILE[0] + "\n\n# out]",
                   verdict=Verdict.FAIL,
                   message="````\n<script>after a fence</script>\n`````\n" + HOSTILE[3],
                   console=["````", "<img src=x onerror=alert(1)>"])
    data["cases"].append(failing)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def outside_fences(md: str) -> list[str]:
    """The lines Markdown renders as Markdown: not inside a ```` fence (CommonMark's rule: the
    fence closes at a line of at least as many backticks and nothing else)."""
    lines, fence = [], None
    for line in md.splitlines():
        if fence is None:
            match = re.match(r" {0,3}(`{3,})", line)
            if match:
                fence = match.group(1)
            else:
                lines.append(line)
        elif re.fullmatch(r" {0,3}" + fence + "`*\\s*", line):
            fence = None
    return lines


def test_hostile_values_in_a_results_file_render_as_literal_text(tmp_path):
    res = results.load(hostile_results(tmp_path))
    grid.write_reports(res, tmp_path / "out")
    md = (tmp_path / "out" / results.REPORT_MARKDOWN).read_text()
    kernel = next(iter(res.kernels))
    info = res.kernels[kernel]
    rendered = outside_fences(md)

    # No HTML but the report's own <details>/<summary>, nothing after a fence the message closed.
    tags = re.findall(r"</?[a-zA-Z!][^>]*>?", "\n".join(rendered))
    assert set(tags) <= {"<details>", "<summary>", "</summary>", "</details>"}, tags
    assert "after a fence" not in "\n".join(rendered)

    # Every table row is one line of inert cells that read as the hostile values themselves.
    tables = [line for line in rendered if line.startswith("|")]
    assert all(line.endswith(" |") for line in tables)
    kernel_row = decode_row(next(line for line in tables if line.startswith("| evil")))
    assert kernel_row[:5] == [literal(kernel), literal(info.version), literal(info.uname),
                              literal(info.machine), literal(info.arch)]
    header = decode_row(next(line for line in tables if line.startswith("| behaviour |")))
    assert header[1] == f"{literal(kernel)} · {literal(info.arch)}"
    for line in tables:  # decode_row raises on raw markup
        if line.startswith("| **"):  # the behaviour id's bold is the report's own
            decode_row("| " + re.fullmatch(r"\| \*\*\w+\*\* (.*)", line).group(1))
        elif not line.startswith("| ---"):
            decode_row(line)
    bid = res.cases[0].behaviour
    row = next(line for line in tables if line.startswith(f"| **{bid}** "))
    assert decode_row("| " + row.split("** ", 1)[1])[0] == literal(HOSTILE[4] + HOSTILE[9])
    reasons = [c for line in tables if line.startswith("| **")
               for c in decode_row("| " + line.split("** ", 1)[1]) if HOSTILE[10].strip() in c]
    assert reasons and all(literal(HOSTILE[11] + HOSTILE[2]) in c for c in reasons)

    # Headings: the section's name is text, one heading per group, none injected.
    headings = [line for line in rendered if line.startswith("#")]
    assert "## " + grid._md(HOSTILE[5] + " " + HOSTILE[6]) in headings
    assert not any(line.startswith(("# line", "# out", "# heading")) for line in rendered)

    # The failure's summary is one line of escaped HTML; its message stays inside the fence.
    summary = next(line for line in rendered if line.startswith("<details><summary>"))
    assert "&lt;script&gt;" in summary and "<script>" not in summary
    assert "<script>after a fence</script>" in md


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_any_text_becomes_one_inert_cell_that_reads_as_itself(text):
    assert decode_row(f"| {grid._md(text)} |") == [literal(text)]
