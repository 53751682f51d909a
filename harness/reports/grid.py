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
from pathlib import Path

from .junit import junit_text
from .results import (
    CRASHED,
    EXPECTED_DIFFERENCE,
    FAIL,
    PASS,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_JUNIT,
    REPORT_MARKDOWN,
    SKIPPED,
    Results,
    worst,
    write_atomic,
    write_json,
)

LABELS = {PASS: "pass", EXPECTED_DIFFERENCE: "expected difference", FAIL: "fail",
          CRASHED: "crashed", SKIPPED: "skipped"}
MD_ICONS = {PASS: "✅", EXPECTED_DIFFERENCE: "🟨", FAIL: "❌", CRASHED: "💥", SKIPPED: "⏭️"}
NO_BEHAVIOUR = "not tied to a documented behaviour"
NOT_RUN = "not run"


@dataclass
class Cell:
    cases: list[dict]

    @property
    def verdict(self) -> str:
        return worst(c["verdict"] for c in self.cases)

    @property
    def worst_count(self) -> int:
        return sum(1 for c in self.cases if c["verdict"] == self.verdict)

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


@dataclass
class Grid:
    kernels: list[str]
    kernel_info: dict[str, dict]
    totals: dict[str, dict[str, int]]
    groups: list[Group]
    failures: list[dict]   # failing and crashed cases, in grid order, each with "anchor"


# map_sockmap.rst's own order of its parts; behaviours.md adds Iteration. Groups follow it.
DOC_ORDER = ("introduction", "attach types", "note", "Kernel BPF", "User space", "Examples",
             "Iteration")


def doc_position(group_name: str) -> int:
    return next((i for i, part in enumerate(DOC_ORDER) if group_name.startswith(part)),
                len(DOC_ORDER))


def split_section(section: str | None) -> tuple[str, str]:
    """'User space / bpf_map_update_elem(): 'BPF_EXIST: ...'' -> (doc section, the quoted detail)."""
    if not section:
        return NO_BEHAVIOUR, ""
    head, _, detail = section.partition(": ")
    return head.strip(), detail.strip()


def observed_signature(case: dict):
    """What a case observed, comparable across kernels: the observation, or how it ended."""
    if case["observed"] is not None:
        return json.dumps(case["observed"], sort_keys=True)
    return f"<{case['verdict']}>"


def build(results: Results) -> Grid:
    kernels = results.kernel_order()
    by_row: dict[str, dict[str, list[dict]]] = {}
    meta: dict[str, tuple] = {}
    for case in results.sorted_cases():
        bid = case["behaviour"]
        if bid:
            info = results.behaviours.get(bid, {})
            key = bid
            order = (0, info.get("order", 10**6), bid)
            title = info.get("title") or case.get("title") or ""
            section = info.get("section") or case.get("section")
        else:
            key = case["case"].split("[", 1)[0]
            order, title, section = (1, 0, key), "", None
        by_row.setdefault(key, {}).setdefault(case["kernel"], []).append(case)
        meta.setdefault(key, (order, title, section))

    groups: dict[str, Group] = {}
    failures: list[dict] = []
    for key in sorted(by_row, key=lambda k: meta[k][0]):
        _, title, section = meta[key]
        group_name, detail = split_section(section)
        cells = {k: Cell(sorted(by_row[key][k], key=lambda c: c["case"]))
                 for k in kernels if k in by_row[key]}
        row = Row(key, title, detail, cells)
        _mark_change(row, kernels)
        for kernel, cell in cells.items():
            for case in cell.cases:
                if case["verdict"] == EXPECTED_DIFFERENCE:
                    why = (case.get("reason") or "older documented outcome", case.get("source") or "")
                    if why not in row.why.setdefault(kernel, []):
                        row.why[kernel].append(why)
                elif case["verdict"] in (FAIL, CRASHED):
                    failures.append(dict(case, anchor=f"case-{len(failures) + 1}"))
        groups.setdefault(group_name, Group(group_name, [])).rows.append(row)
    ordered = sorted(groups.values(), key=lambda g: doc_position(g.name))  # stable within a part
    return Grid(kernels, {k: results.kernels[k] for k in kernels},
                {k: results.counts(k) for k in kernels}, ordered, failures)


def _mark_change(row: Row, kernels: list[str]) -> None:
    previous, before = None, None
    for kernel in kernels:
        cell = row.cells.get(kernel)
        if cell is None:
            continue
        signature = {(c["file"], c["case"]): observed_signature(c) for c in cell.cases
                     if c["verdict"] != SKIPPED}
        if not signature:
            continue
        if previous is not None:
            common = signature.keys() & previous.keys()
            if any(signature[c] != previous[c] for c in common):
                row.changed_at, row.changed_from = kernel, before
                return
        previous, before = signature, kernel


def _variant(case: dict) -> str:
    """'test_x[sockmap-ipv4]' -> 'sockmap-ipv4': how cases of one behaviour differ."""
    name = case["case"]
    return name[name.index("[") + 1:-1] if name.endswith("]") and "[" in name else name


def _failure_anchor(grid: Grid, case: dict) -> str:
    return next(f["anchor"] for f in grid.failures if f["id"] == case["id"])


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


def _md(text) -> str:
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


def _html_line(text) -> str:
    """`text` escaped for the one-line HTML of a <summary>: a blank line would end the HTML
    block and let the rest render as Markdown."""
    return html.escape("".join(" " if c in _CONTROL else c for c in str(text)), quote=True)


def ran_on(info: dict) -> str:
    """Where a kernel's cases ran: 'qemu, root: host', 'qemu, root: debian-bookworm@…', or the
    SSH target. Results from before these fields say '?'."""
    machine = info.get("machine")
    if not machine:
        return "?"
    if machine == "qemu":
        return f"qemu, root: {info.get('rootfs') or '?'}"
    return machine


def markdown(results: Results) -> str:
    grid = build(results)
    out = ["# kconform: documented behaviour × kernel", ""]
    if not grid.kernels:
        return "\n".join(out + ["No results.", ""])
    out += ["| kernel | package version | uname -r | ran on | pass | expected difference | fail "
            "| crashed | skipped |", "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for kernel in grid.kernels:
        info, t = grid.kernel_info[kernel], grid.totals[kernel]
        out.append(f"| {_md(kernel)} | {_md(info.get('version') or '?')} | "
                   f"{_md(info.get('uname') or '?')} | {_md(ran_on(info))} | {t[PASS]} | "
                   f"{t[EXPECTED_DIFFERENCE]} | {t[FAIL]} | {t[CRASHED]} | {t[SKIPPED]} |")
    out += ["", "Legend: " + " · ".join(f"{MD_ICONS[v]} {LABELS[v]}" for v in LABELS)
            + f" · – {NOT_RUN}. An expected difference is an older kernel doing what its version "
            "is documented to do, asserted like any other outcome.", ""]
    for group in grid.groups:
        out += [f"## {_md(group.name)}", "",
                "| behaviour | " + " | ".join(_md(k) for k in grid.kernels) + " | changed at |",
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
                if cell.verdict in (FAIL, CRASHED):
                    text += " (see failures)"
                cells.append(_md(text))
            changed = (f"{_md(row.changed_at)} (was {_md(row.changed_from)})"
                       if row.changed_at else "–")
            out.append(f"| {title} | " + " | ".join(cells) + f" | {changed} |")
        out.append("")
    if grid.failures:
        out += ["## Failures", ""]
        for case in grid.failures:
            out += [f"<details><summary>{MD_ICONS[case['verdict']]} "
                    f"{_html_line(case.get('behaviour') or '')} {_html_line(case['case'])} "
                    f"on {_html_line(case['kernel'])}: {_html_line(case['verdict'])}</summary>", "",
                    "````text", _failure_text(case), "````", "", "</details>", ""]
    return "\n".join(out)


def _failure_text(case: dict) -> str:
    lines = [case.get("message", "").rstrip(), "", f"reproduce: {case['reproduce']}"]
    if case.get("boot"):
        lines.append(f"boot it by hand: {case['boot']}")
    if case.get("console"):
        lines += ["", "guest console during this test:", *case["console"][-40:]]
    return "\n".join(lines).replace("````", "'```")


# ---------------------------------------------------------------------- HTML

CSS = """
:root { --ink: #1b1f24; --muted: #4a5560; --line: #c9d1d9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: #fff;
       font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p.lead { color: var(--muted); margin: 0 0 16px; }
table { border-collapse: collapse; }
table.grid { width: 100%; table-layout: fixed; }
th, td { border: 1px solid var(--line); padding: 6px 8px; vertical-align: top; text-align: left; }
thead th { background: #eef1f4; position: sticky; top: 0; }
table.kernels td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.grid th.behaviour { width: 34%; }
table.grid th.changed { width: 10em; }
table.grid tbody th { font-weight: normal; }
table.grid td.changed { color: var(--muted); }
.bid { font-weight: bold; font-family: "DejaVu Sans Mono", monospace; margin-right: 6px; }
.detail { display: block; color: var(--muted); font-size: 12.5px; }
.kv { display: block; font-weight: normal; color: var(--muted); font-size: 12px; }
td.cell { overflow-wrap: anywhere; }
.label { font-weight: bold; }
.reason { display: block; font-size: 12.5px; margin-top: 2px; }
td.cell a, .legend a { color: inherit; }
.v-pass { background: #e3f4e6; color: #0b4f1b; }
.v-expected-difference { background: #fff1c2; color: #4d3800; }
.v-fail { background: #fbdada; color: #7d1111; }
.v-crashed { background: #6e0b0b; color: #fff; }
.v-skipped { background: #e8ebee; color: #35414b; }
.v-none { background: #fff; color: #5f6b76; }
td.was-changed { box-shadow: inset 4px 0 0 #1f5fbf; }
.legend span { display: inline-block; padding: 2px 8px; margin: 0 6px 6px 0; border: 1px solid var(--line); }
.source { display: block; font-size: 12px; margin-top: 2px; }
section.failure { border: 1px solid var(--line); border-left: 6px solid #b42318; padding: 4px 14px 10px;
                  margin: 12px 0; }
section.failure.crashed { border-left-color: #6e0b0b; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f5f7f9; padding: 8px;
      margin: 6px 0; font: 12.5px/1.4 "DejaVu Sans Mono", monospace; }
summary { cursor: pointer; color: var(--muted); }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def html_page(results: Results) -> str:
    grid = build(results)
    body = ["<h1>kconform: documented behaviour × kernel</h1>",
            '<p class="lead">Which documented sockmap/sockhash behaviour holds on which kernel. '
            "Rows are behaviours grouped by doc section; columns are kernels, oldest first.</p>"]
    body += _kernel_table(grid)
    body.append('<p class="legend">' + "".join(
        f'<span class="v-{v}">{LABELS[v]}</span>' for v in LABELS)
        + f'<span class="v-none">{NOT_RUN}</span>'
        + '<span class="was-changed" style="box-shadow: inset 4px 0 0 #1f5fbf">first kernel '
          "whose observed outcome changed</span></p>")
    for group in grid.groups:
        body += [f"<h2>{_e(group.name)}</h2>", '<table class="grid"><thead><tr>'
                 '<th class="behaviour">behaviour</th>'
                 + "".join(f"<th>{_e(k)}</th>" for k in grid.kernels)
                 + '<th class="changed">changed at</th></tr></thead><tbody>']
        for row in group.rows:
            body.append(_html_row(grid, row))
        body.append("</tbody></table>")
    if grid.failures:
        body.append("<h2>Failures</h2>")
        body += [_html_failure(case) for case in grid.failures]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>kconform: behaviour × kernel</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _kernel_table(grid: Grid) -> list[str]:
    rows = ['<table class="kernels"><thead><tr><th>kernel</th><th>package version</th>'
            "<th>uname -r</th><th>ran on</th>" + "".join(f"<th>{LABELS[v]}</th>" for v in LABELS)
            + "</tr></thead><tbody>"]
    for kernel in grid.kernels:
        info, totals = grid.kernel_info[kernel], grid.totals[kernel]
        rows.append(f'<tr data-kernel="{_e(kernel)}"><td>{_e(kernel)}</td>'
                    f"<td>{_e(info.get('version') or '?')}</td><td>{_e(info.get('uname') or '?')}</td>"
                    f"<td>{_e(ran_on(info))}</td>"
                    + "".join(f'<td class="n" data-verdict="{v}">{totals[v]}</td>' for v in LABELS)
                    + "</tr>")
    rows.append("</tbody></table>")
    return rows


def _html_row(grid: Grid, row: Row) -> str:
    head = f'<span class="bid">{_e(row.key)}</span>{_e(row.title)}'
    if row.detail:
        head += f'<span class="detail">doc: {_e(row.detail)}</span>'
    cells = []
    for kernel in grid.kernels:
        cell = row.cells.get(kernel)
        changed = " was-changed" if kernel == row.changed_at else ""
        if cell is None:
            cells.append(f'<td class="cell v-none{changed}" data-kernel="{_e(kernel)}" '
                         f'data-verdict="none">{NOT_RUN}</td>')
            continue
        inner = f'<span class="label">{_e(cell.summary)}</span>'
        for reason, source in row.why.get(kernel, []):
            inner += (f'<span class="reason">{_e(reason)}</span>'
                      f'<span class="source">source: {_e(source)}</span>')
        if cell.verdict in (FAIL, CRASHED):
            links = ", ".join(f'<a href="#{_failure_anchor(grid, c)}">{_e(_variant(c))}</a>'
                              for c in cell.cases if c["verdict"] in (FAIL, CRASHED))
            inner += f'<span class="reason">{links}</span>'
        elif cell.verdict == SKIPPED:
            inner += f'<span class="reason">{_e(cell.cases[0].get("message", ""))}</span>'
        tip = "\n".join(f"{c['case']}: {LABELS[c['verdict']]}" for c in cell.cases)
        cells.append(f'<td class="cell v-{cell.verdict}{changed}" data-kernel="{_e(kernel)}" '
                     f'data-verdict="{cell.verdict}" data-cases="{len(cell.cases)}" '
                     f'title="{_e(tip)}">{inner}</td>')
    changed = (f"{_e(row.changed_at)}<span class=\"kv\">was {_e(row.changed_from)}</span>"
               if row.changed_at else "–")
    return (f'<tr data-row="{_e(row.key)}"><th scope="row">{head}</th>' + "".join(cells)
            + f'<td class="changed" data-changed="{_e(row.changed_at or "")}">{changed}</td></tr>')


def _html_failure(case: dict) -> str:
    parts = [f'<section class="failure {case["verdict"]}" id="{case["anchor"]}">',
             f"<h3>{_e(case['verdict'])}: {_e(case.get('behaviour') or '')} {_e(case['case'])} "
             f"on {_e(case['kernel'])} ({_e(case.get('kernel_version') or '?')})</h3>"]
    if case.get("title"):
        parts.append(f"<p>{_e(case['title'])}</p>")
    parts.append(f"<pre>{_e(case.get('message', '').rstrip())}</pre>")
    parts.append(f"<p>Rerun just this case:</p><pre>{_e(case['reproduce'])}</pre>")
    if case.get("boot"):
        parts.append(f"<p>Boot this kernel by hand (add <code>--dry-run</code> for the QEMU "
                     f"command line):</p><pre>{_e(case['boot'])}</pre>")
    if case.get("console"):
        parts.append(f"<details><summary>guest console during this test "
                     f"({len(case['console'])} lines)</summary><pre>"
                     + _e("\n".join(case["console"])) + "</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


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

