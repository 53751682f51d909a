"""The behaviour x kernel grid, as Markdown (CI job summaries) and as one self-contained HTML page.

Rows are documented behaviours grouped by doc section, in the order of the expectations file;
columns are kernels, oldest first. A cell holds every case of that behaviour on that kernel
(variants such as sockmap/sockhash) and shows the worst verdict among them. "changed at" names
the first kernel whose observed outcome differs from the kernel before it (a crash counts as an
outcome). Everything here is computed from a results document alone, so one run over two kernels
and the merge of two one-kernel runs give the same grid.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import jinja2

from ..judging.verdicts import Verdict, worst
from . import support
from .junit import junit_text
from .reproduce import reproduction_text, steps
from .results import (
    REPORT_HTML,
    REPORT_JSON,
    REPORT_JUNIT,
    REPORT_MARKDOWN,
    Attempt,
    CaseResult,
    KernelRecord,
    Results,
    write_atomic,
    write_json,
)

LABELS = {verdict: verdict.label for verdict in Verdict}
MD_ICONS = {Verdict.PASS: "✅", Verdict.EXPECTED_DIFFERENCE: "🟨", Verdict.FLAKY: "🔁",
            Verdict.FAIL: "❌", Verdict.CRASHED: "💥", Verdict.SKIPPED: "⏭️"}
NO_BEHAVIOUR = "not tied to a documented behaviour"
NOT_RUN = "not run"


@dataclass
class Cell:
    cases: list[CaseResult]

    # Computed once: a matrix behaviour's cell holds 144 cases, and the page asks again and again.
    @cached_property
    def verdict(self) -> Verdict:
        return worst(c.verdict for c in self.cases)

    @cached_property
    def worst_count(self) -> int:
        verdict = self.verdict
        return sum(1 for c in self.cases if c.verdict == verdict)

    @property
    def summary(self) -> str:
        """'pass', or 'fail (1 of 4)' when the cases of the cell disagree."""
        label = LABELS[self.verdict]
        if self.worst_count != len(self.cases):
            label += f" ({self.worst_count} of {len(self.cases)})"
        return label


@dataclass
class Row:
    key: str
    title: str
    detail: str
    cells: dict[str, Cell]
    changed_at: str | None = None
    changed_from: str | None = None
    # kernel -> (reason, source) of the cell's expected differences: why that kernel differs
    # from the documented outcome, and who says so
    why: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass
class Group:
    name: str
    rows: list[Row]


@dataclass(frozen=True)
class Failure:
    """A failing, crashed or flaky case, and the anchor its grid cell links to."""
    anchor: str
    case: CaseResult


@dataclass
class Grid:
    kernels: list[str]
    kernel_info: dict[str, KernelRecord]
    totals: dict[str, dict[Verdict, int]]
    groups: list[Group]
    failures: list[Failure]   # in grid order

    def anchor(self, case: CaseResult) -> str:
        return next(f.anchor for f in self.failures if f.case.id == case.id)


# map_sockmap.rst's own order of its parts; behaviours.md adds Iteration. Groups follow it.
DOC_ORDER = ("introduction", "attach types", "note", "Kernel BPF", "User space", "Examples",
             "Iteration")


def doc_position(group_name: str) -> int:
    return next((i for i, part in enumerate(DOC_ORDER) if group_name.startswith(part)),
                len(DOC_ORDER))


def split_section(section: str | None) -> tuple[str, str]:
    """'User space / bpf_map_update_elem(): 'BPF_EXIST: ...'' -> (doc section, quoted detail)."""
    if not section:
        return NO_BEHAVIOUR, ""
    head, _, detail = section.partition(": ")
    return head.strip(), detail.strip()


def observed_signature(case: CaseResult) -> str:
    """What a case observed, comparable across kernels: the observation, or how it ended."""
    if case.observed is not None:
        return json.dumps(case.observed, sort_keys=True)
    return f"<{case.verdict.value}>"


def build(results: Results) -> Grid:
    kernels = results.kernel_order()
    by_row: dict[str, dict[str, list[CaseResult]]] = {}
    meta: dict[str, tuple[tuple[int, int, str], str, str | None]] = {}
    for case in results.sorted_cases():
        bid = case.behaviour
        if bid:
            info = results.behaviours.get(bid)
            key = bid
            order = (0, info.order if info else 10**6, bid)
            title = (info.title if info else None) or case.title or ""
            section = (info.section if info else None) or case.section
        else:
            key = case.case.split("[", 1)[0]
            order, title, section = (1, 0, key), "", None
        by_row.setdefault(key, {}).setdefault(case.kernel, []).append(case)
        meta.setdefault(key, (order, title, section))

    groups: dict[str, Group] = {}
    failures: list[Failure] = []
    for key in sorted(by_row, key=lambda k: meta[k][0]):
        _, title, section = meta[key]
        group_name, detail = split_section(section)
        cells = {k: Cell(sorted(by_row[key][k], key=lambda c: c.case))
                 for k in kernels if k in by_row[key]}
        row = Row(key, title, detail, cells)
        _mark_change(row, kernels)
        for kernel, cell in cells.items():
            for case in cell.cases:
                if case.verdict == Verdict.EXPECTED_DIFFERENCE:
                    why = (case.reason or "older documented outcome", case.source or "")
                    if why not in row.why.setdefault(kernel, []):
                        row.why[kernel].append(why)
                elif case.verdict.failed_an_attempt:
                    failures.append(Failure(f"case-{len(failures) + 1}", case))
        groups.setdefault(group_name, Group(group_name, [])).rows.append(row)
    ordered = sorted(groups.values(), key=lambda g: doc_position(g.name))  # stable within a part
    return Grid(kernels, {k: results.kernels[k] for k in kernels},
                {k: results.counts(k) for k in kernels}, ordered, failures)


def _mark_change(row: Row, kernels: list[str]) -> None:
    previous: dict[tuple[str, str], str] | None = None
    before = None
    for kernel in kernels:
        cell = row.cells.get(kernel)
        if cell is None:
            continue
        signature = {(c.file, c.case): observed_signature(c) for c in cell.cases
                     if c.verdict != Verdict.SKIPPED}
        if not signature:
            continue
        if previous is not None:
            common = signature.keys() & previous.keys()
            if any(signature[c] != previous[c] for c in common):
                row.changed_at, row.changed_from = kernel, before
                return
        previous, before = signature, kernel


def variant(case: CaseResult) -> str:
    """'test_x[sockmap-ipv4]' -> 'sockmap-ipv4': how cases of one behaviour differ."""
    name = case.case
    return name[name.index("[") + 1:-1] if name.endswith("]") and "[" in name else name


# ---------------------------------------------------------------------- Markdown

# Every cell comes from a results file: kernel names and unames (an SSH target's own words),
# titles, reasons, observations. GitHub job summaries render inline HTML, links, emphasis, math,
# mentions and autolinks, so such text is made inert: HTML's three characters become entities and
# the inline Markdown punctuation is backslash-escaped ("@" too: mentions and e-mail links), and
# the dot of "www." and the colon of "://" become entities (the autolinks they start have nothing
# else to escape). Line breaks and other control characters would end the table row. Parentheses
# stay: they make a link only after a "]", which is escaped.
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_PUNCTUATION = frozenset("\\`*_[]#!|~$@")
_CONTROL = frozenset(chr(c) for c in (*range(32), 127))
_AUTOLINK = re.compile(r"(?<=www)\.|:(?=//)", re.IGNORECASE)


def _md(text: object) -> str:
    """`text` as literal Markdown inline text, safe inside a table cell or a heading."""
    text, out = str(text), []
    for i, char in enumerate(text):
        if char in _MD_ENTITIES:
            out.append(_MD_ENTITIES[char])
        elif char == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() \
                and text[i + 1].isalnum():
            out.append(char)  # inside a word it never emphasises: AF_UNIX stays readable
        elif char in _MD_PUNCTUATION:
            out.append("\\" + char)
        elif char in _CONTROL or char in "\u2028\u2029\x85":
            out.append(" ")
        else:
            out.append(char)
    return _AUTOLINK.sub(lambda m: f"&#{ord(m.group())};", "".join(out))


def _html_line(text: object) -> str:
    """`text` escaped for the one-line HTML of a <summary>: a blank line would end the HTML
    block and let the rest render as Markdown."""
    return html.escape("".join(" " if c in _CONTROL else c for c in str(text)), quote=True)


def version_of(info: KernelRecord) -> str:
    """'6.1.192-3 (bookworm-security)': the package version and the suite it came from."""
    version = info.version or "?"
    return f"{version} ({info.suite})" if info.suite else version


def ran_on(info: KernelRecord) -> str:
    """Where a kernel's cases ran: 'qemu (direct boot), root: host', 'qemu (virtme-ng boot),
    root: debian-bookworm@…', or the SSH target. Results from before these fields say '?' (and
    no boot)."""
    machine = info.machine
    if not machine:
        return "?"
    if machine == "qemu":
        boot = f" ({info.guest_boot} boot)" if info.guest_boot else ""
        return f"qemu{boot}, root: {info.rootfs or '?'}"
    return machine


def _md_column(kernel: str, info: KernelRecord) -> str:
    """A kernel's column header: its name and the architecture it ran on, so the two
    architectures of one kernel version read as a pair ("debian-6.12 · amd64")."""
    return f"{_md(kernel)} · {_md(info.architecture)}"


def markdown(results: Results) -> str:
    grid = build(results)
    out = ["# kconform: documented behaviour × kernel", ""]
    if not grid.kernels:
        return "\n".join([*out, "No results.", ""])
    out += ["| kernel | package version | uname -r | ran on | arch | BPF JIT | "
            + " | ".join(LABELS[v] for v in Verdict) + " |",
            "| --- | --- | --- | --- | --- | --- | " + " | ".join("---:" for _ in Verdict) + " |"]
    for kernel in grid.kernels:
        info, t = grid.kernel_info[kernel], grid.totals[kernel]
        out.append(f"| {_md(kernel)} | {_md(version_of(info))} | {_md(info.uname or '?')} | "
                   f"{_md(ran_on(info))} | {_md(info.architecture)} | {_md(info.jit)} | "
                   + " | ".join(str(t[v]) for v in Verdict) + " |")
    out += ["", "Legend: " + " · ".join(f"{MD_ICONS[v]} {LABELS[v]}" for v in LABELS)
            + f" · – {NOT_RUN}. An expected difference is an older kernel doing what its version "
            "is documented to do, asserted like any other outcome. Flaky: failed, then passed "
            "when run again on a fresh guest (--rerun-failed): never a pass.", ""]
    for group in grid.groups:
        out += [f"## {_md(group.name)}", "",
                "| behaviour | " + " | ".join(_md_column(k, grid.kernel_info[k])
                                              for k in grid.kernels) + " | changed at |",
                "| --- | " + " | ".join("---" for _ in grid.kernels) + " | --- |"]
        for row in group.rows:
            title = f"**{_md(row.key)}** {_md(row.title)}".strip()
            cells = []
            for kernel in grid.kernels:
                cell = row.cells.get(kernel)
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{MD_ICONS[cell.verdict]} {cell.summary}"
                for reason, source in row.why.get(kernel, []):
                    text += f": {reason} (source: {source})"
                if cell.verdict.failed_an_attempt:
                    text += " (see failures)"
                cells.append(_md(text))
            changed = (f"{_md(row.changed_at)} (was {_md(row.changed_from)})"
                       if row.changed_at else "–")
            out.append(f"| {title} | " + " | ".join(cells) + f" | {changed} |")
        out.append("")
    out += _support_markdown(support.build(results))
    if grid.failures:
        out += ["## Failures", ""]
        for failure in grid.failures:
            case = failure.case
            summary = (f"{MD_ICONS[case.verdict]} {_html_line(case.behaviour or '')} "
                       f"{_html_line(case.case)} on {_html_line(case.kernel)}: "
                       f"{_html_line(case.verdict.value)}")
            out += [f"<details><summary>{summary}</summary>", "",
                    "````text", _failure_text(case), "````", "", "</details>", ""]
    return "\n".join(out)


# The doc's promise for every redirect, which a support table's other outcomes differ from.
SUPPORT_PROMISE = "Both ingress and egress interfaces can be used for redirection"


def _support_markdown(kernels: list[support.KernelSupport]) -> list[str]:
    """Per kernel, the redirect matrix's four source x target tables: one symbol a cell (two,
    sockmap/sockhash, when the maps differ) and the verdict's icon where a reader must look."""
    if not kernels:
        return []
    out = ["## Redirect support", "",
           _md("What a redirect from each source kind (rows) to each target kind (columns) did, "
               "per program and direction; a cell shows sockmap/sockhash when the two differ."),
           "", "Legend: " + "; ".join(f"{sym} {_md(text)}" for _, sym, text in support.legend())
           + f". {MD_ICONS[Verdict.FAIL]} fail; {MD_ICONS[Verdict.CRASHED]} crashed; "
           f"{MD_ICONS[Verdict.EXPECTED_DIFFERENCE]} an expected difference where a map "
           "delivered. Any outcome other than delivered is an expected difference from the doc's "
           f"\"{_md(SUPPORT_PROMISE)}\" (its rule says why).", ""]
    for kernel in kernels:
        out += [f"### {_md(kernel.kernel)} ({_md(version_of(kernel.info))})", ""]
        for table in kernel.tables:
            out += [f"| {_md(table.name)} | " + " | ".join(_md(t) for t in table.targets) + " |",
                    "| --- | " + " | ".join(":-:" for _ in table.targets) + " |"]
            for source in table.sources:
                cells = []
                for target in table.targets:
                    cell = table.cell(source, target)
                    if cell is None:
                        cells.append(support.NOT_OBSERVED_SYMBOL)
                        continue
                    mark = MD_ICONS[cell.marked] if cell.marked else ""
                    cells.append(_md(cell.symbol) + mark)
                out.append(f"| {_md(source)} | " + " | ".join(cells) + " |")
            out.append("")
    return out


def _failure_text(case: CaseResult) -> str:
    lines = [case.message.rstrip(), ""] if case.message.strip() else []
    lines.append(reproduction_text(case))
    if case.console:
        lines += ["", "guest console during this test:", *case.console[-40:]]
    for attempt in case.attempts:
        lines += ["", attempt_heading(case, attempt), attempt.message.rstrip()]
        if attempt.console_log:
            lines.append(f"console log: {attempt.console_log}")
        if attempt.console:
            lines += ["guest console during this attempt:", *attempt.console[-40:]]
    return "\n".join(lines).replace("````", "'```")


def attempt_heading(case: CaseResult, attempt: Attempt) -> str:
    """'attempt 1 of 2: fail': which run of the case this was, and what it alone came to."""
    return f"attempt {attempt.number} of {len(case.attempts) + 1}: {attempt.verdict.label}"


# ---------------------------------------------------------------------- HTML

# The page is jinja2 templates with autoescaping: every value from a results file (kernel names,
# an SSH target's uname, titles, guest messages) is escaped where it is placed.
TEMPLATES = Path(__file__).parent / "templates"
_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                            undefined=jinja2.StrictUndefined)
CSS = (TEMPLATES / "report.css").read_text(encoding="utf-8")  # inlined: one self-contained file


def html_page(results: Results) -> str:
    return _PAGES.get_template("report.html.j2").render(
        grid=build(results), verdicts=list(Verdict), labels=LABELS, not_run=NOT_RUN,
        ran_on=ran_on, version_of=version_of, variant=variant, steps=steps,
        attempt_heading=attempt_heading,
        support=support.build(results), support_legend=support.legend(),
        support_promise=SUPPORT_PROMISE, not_observed=support.NOT_OBSERVED_SYMBOL)


# ---------------------------------------------------------------------- files

def write_reports(results: Results, directory: Path) -> list[Path]:
    """Every report of a results document, into one directory (a run's, or a merge's)."""
    directory = Path(directory)
    paths = [directory / name for name in (REPORT_JSON, REPORT_JUNIT, REPORT_MARKDOWN, REPORT_HTML)]
    write_json(results, paths[0])
    write_atomic(paths[1], junit_text(results))
    write_atomic(paths[2], markdown(results))
    write_atomic(paths[3], html_page(results))
    return paths

