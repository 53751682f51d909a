"""The redirect support tables (harness/reports/support.py) in the HTML and Markdown reports, and
`./kconform compare` naming the combinations that changed, on a saved real run of the matrix on
the five kernels (tests/data/matrix/README.md), plus doctored copies of it for what the real run
did not show: a fail, a crash, maps that disagree, a case that recorded no cell.
"""
from __future__ import annotations

import copy
import gzip
import json
from html.parser import HTMLParser

import pytest

from harness.judging import support_table
from harness.judging.verdicts import Verdict
from harness.reports import compare, grid, results, support
from tests.conftest import REPO
from tests.test_report import BOTH, kconform
from tests.test_report_html import chromium, contrast, measured  # noqa: F401
from tests.test_report_markdown import decode_row

SAVED = REPO / "tests" / "data" / "matrix" / "redirect-matrix.json.gz"
KERNELS = ["debian-5.10", "debian-6.1", "debian-6.12", "debian-7.2", "debian-7.3"]
TABLES = ["R7", "R8", "R9", "R10"]
UNIX = ("unix_stream", "unix_dgram", "unix_stream_oob")
VSOCK = ("vsock_stream", "vsock_seqpacket")


@pytest.fixture(scope="module")
def saved_data():
    return json.loads(gzip.decompress(SAVED.read_bytes()))


@pytest.fixture
def saved(saved_data, tmp_path):
    """The saved run as a report.json on disk (compare reads files)."""
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved_data))
    return path


@pytest.fixture(scope="module")
def kernels(saved_data):
    return {k.kernel: k for k in support.build(results.Results.from_json(saved_data))}


def tables_of(kernel_support):
    return {table.behaviour: table for table in kernel_support.tables}


def doctored(data, tmp_path, change, name="doctored.json"):
    """A copy of the saved run with change(cases by (kernel, case)) applied, on disk."""
    data = copy.deepcopy(data)
    change({(c["kernel"], c["case"]): c for c in data["cases"]})
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def case_name(bid, variant):
    program, direction = {"R7": ("sk_skb", "ingress"), "R8": ("sk_skb", "egress"),
                          "R9": ("sk_msg", "ingress"), "R10": ("sk_msg", "egress")}[bid]
    map_name, source, target = variant.split("-")
    return f"test_redirect_matrix[{map_name}-{program}-{direction}-{source}-{target}]"


# ---------------------------------------------------------------------- the tables

def test_every_kernel_has_four_full_tables_in_the_support_tables_order(kernels):
    kinds = support_table.load(support.SUPPORT_TABLE)
    assert list(kernels) == KERNELS
    for kernel in kernels.values():
        assert [t.behaviour for t in kernel.tables] == TABLES
        for table in kernel.tables:
            assert table.sources == list(kinds.sources)  # the nine, unix_stream_oob last
            assert table.targets == list(kinds.kinds)
            assert len(table.cells) == 72 and table.maps == ["sockmap", "sockhash"]
            assert all(c.agree and c.verdict.good and c.marked is None
                       for c in table.cells.values())
    assert (tables_of(kernels["debian-7.3"])["R7"].program,
            tables_of(kernels["debian-7.3"])["R7"].direction) == ("sk_skb", "ingress")


def test_known_facts_of_the_real_kernels(kernels):
    # 7.3: an sk_skb verdict's ingress redirect to a vsock socket is dropped
    cell = tables_of(kernels["debian-7.3"])["R7"].cell("tcp4", "vsock_stream")
    assert (cell.outcome, cell.symbol, cell.verdict) == ("dropped", "✗",
                                                         Verdict.EXPECTED_DIFFERENCE)
    assert tables_of(kernels["debian-7.3"])["R7"].cell("tcp4", "tcp6").outcome == "delivered"
    # 6.1: a map refuses vsock sockets, so anything to or from one is refused
    for table in kernels["debian-6.1"].tables:
        vsock = [c for (s, t), c in table.cells.items() if s in VSOCK or t in VSOCK]
        assert len(vsock) == 9 * 8 - 7 * 6 and {c.outcome for c in vsock} == {"refused"}
    # 5.10: AF_UNIX sockets are refused (vsock_seqpacket does not exist there at all)
    for table in kernels["debian-5.10"].tables:
        unix = [c for (s, t), c in table.cells.items()
                if (s in UNIX or t in UNIX) and "vsock_seqpacket" not in (s, t)]
        assert unix and {c.outcome for c in unix} == {"refused"}
        assert table.cell("vsock_seqpacket", "tcp4").outcome == "unavailable"


def test_the_vocabulary_has_one_symbol_each():
    assert set(support.OUTCOME_LABELS) == set(support_table.OUTCOMES) | {"elsewhere", "lost"}
    assert set(support.SYMBOLS) == set(support.OUTCOME_LABELS)
    symbols = [*support.SYMBOLS.values(), support.NOT_OBSERVED_SYMBOL, support.UNKNOWN_SYMBOL]
    assert len(set(symbols)) == len(symbols) and all(len(s) == 1 for s in symbols)


def test_maps_that_disagree_show_both_and_a_failure_stands_out(saved_data, tmp_path):
    def change(cases):
        # sockhash saw its tcp4 -> udp4 bytes arrive where sockmap's were dropped: a fail
        c = cases[("debian-7.3", case_name("R10", "sockhash-tcp4-udp4"))]
        c["matrix"]["outcome"], c["verdict"] = "delivered", "fail"
        # and the guest crashed in one case, before it recorded a cell
        c = cases[("debian-7.3", case_name("R7", "sockmap-udp4-tcp4"))]
        del c["matrix"]
        c.update(verdict="crashed", observed=None, message="the guest crashed")
    res = results.load(doctored(saved_data, tmp_path, change))
    table = tables_of(support.build(res)[-1])
    failed = table["R10"].cell("tcp4", "udp4")
    assert (failed.symbol, failed.style, failed.marked) == ("✗/✓", "mixed", Verdict.FAIL)
    crashed = table["R7"].cell("udp4", "tcp4")
    assert (crashed.symbol, crashed.marked) == ("·/✓", Verdict.CRASHED)
    assert table["R10"].bad == table["R7"].bad == 1

    md = grid.markdown(res)
    section = md[md.index("### debian-7.3"):]
    r10 = section[section.index("| R10 sk_msg egress |"):]
    assert next(r for r in r10.splitlines() if r.startswith("| tcp4 |")) == \
        "| tcp4 | ✓ | ✓ | ✗/✓❌ | ✗ | ✗ | ✗ | ✗ | ✗ |"
    r7 = section[section.index("| R7 sk_skb ingress |"):]
    assert next(r for r in r7.splitlines() if r.startswith("| udp4 |")).startswith(
        "| udp4 | ·/✓💥 | ✓ |")

    page = SupportCells(grid.html_page(res))
    bad = page.cells["debian-7.3"]["R10"]["tcp4"]["udp4"]
    assert bad["class"] == "sc o-mixed m-fail" and bad["verdict"] == "fail"
    assert bad["outcome"] == "dropped/delivered" and bad["text"] == "✗/✓"
    assert bad["href"] in page.anchors  # the link leads to the failure's section
    assert "sockhash: delivered (rule msg-egress-to-tcp-only expects dropped): fail" in bad["title"]
    assert case_name("R10", "sockhash-tcp4-udp4") in bad["title"]
    assert page.cells["debian-7.3"]["R7"]["udp4"]["tcp4"]["class"] == "sc o-mixed m-crashed"


def test_a_flaky_combination_stands_out_and_links_to_its_failed_runs(saved_data, tmp_path):
    # review finding: a flaky matrix case looked like a plain outcome, with no way to its attempts
    def change(cases):
        c = cases[("debian-7.3", case_name("R10", "sockhash-tcp4-udp4"))]
        c["verdict"] = "flaky"
        c["attempts"] = [{"number": 1, "verdict": "fail", "message": "mismatch", "observed": None,
                          "console": [], "console_log": None}]
    res = results.load(doctored(saved_data, tmp_path, change))
    cell = tables_of(support.build(res)[-1])["R10"].cell("tcp4", "udp4")
    assert cell.marked == Verdict.FLAKY and len(cell.bad_cases) == 1
    page = SupportCells(grid.html_page(res))
    shown = page.cells["debian-7.3"]["R10"]["tcp4"]["udp4"]
    assert shown["class"].endswith("m-flaky") and shown["href"] in page.anchors


def test_an_expected_difference_is_marked_only_where_a_map_delivered(saved_data, tmp_path):
    def change(cases):
        cases[("debian-7.3", case_name("R7", "sockmap-tcp4-tcp4"))]["verdict"] = \
            "expected-difference"
    table = tables_of(support.build(results.load(doctored(saved_data, tmp_path, change)))[-1])
    assert table["R7"].cell("tcp4", "tcp4").marked == Verdict.EXPECTED_DIFFERENCE
    assert table["R7"].cell("tcp4", "vsock_stream").marked is None  # dropped: the normal case


# ---------------------------------------------------------------------- the reports

class SupportCells(HTMLParser):
    """kernel -> table -> source -> target -> the cell's class, data, title, text and link;
    (kernel, table) -> its column headers; the page's anchors."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.headers, self.anchors = {}, {}, set()
        self.kernel = self.table = self.row = self.cell = None
        self.text_of = None  # what the current text belongs to: a dict's "text"
        self.feed(text)
        for kernel, tables in self.cells.items():
            for bid, rows in tables.items():
                for source, cells in rows.items():
                    rows[source] = dict(zip(self.headers[(kernel, bid)], cells, strict=True))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = a.get("class", "").split()
        if "id" in a:
            self.anchors.add("#" + a["id"])
        if tag == "section" and "data-support-kernel" in a:
            self.kernel = a["data-support-kernel"]
            self.cells[self.kernel] = {}
        elif tag == "table" and "data-table" in a:
            self.table = (self.kernel, a["data-table"])
            self.cells[self.kernel][a["data-table"]] = {}
            self.headers[self.table] = []
        elif self.table and tag == "th" and "target" in classes:
            self.text_of = {"text": ""}
            self.headers[self.table].append(self.text_of)
        elif self.table and tag == "th" and a.get("scope") == "row":
            self.text_of = self.row = {"text": ""}
        elif self.table and tag == "td" and "sc" in classes:
            self.cell = self.text_of = {
                "class": a["class"], "outcome": a.get("data-outcome"),
                "verdict": a.get("data-verdict"), "title": a.get("title", ""), "text": ""}
            self.cells[self.kernel][self.table[1]].setdefault(self.row["text"], []) \
                .append(self.cell)
        elif tag == "a" and self.cell is not None:
            self.cell["href"] = a.get("href")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            if tag == "th" and self.table and self.text_of is not None \
                    and self.text_of in self.headers[self.table]:
                self.headers[self.table][-1] = self.text_of["text"]
            self.cell = self.text_of = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.text_of is not None:
            self.text_of["text"] += data


def test_html_and_markdown_hold_every_kernels_tables(saved_data, kernels):
    res = results.Results.from_json(saved_data)
    page = SupportCells(grid.html_page(res))
    md = grid.markdown(res)
    assert list(page.cells) == KERNELS
    for name, kernel in kernels.items():
        heading = f"### {name} ({grid._md(grid.version_of(kernel.info))})"
        section = md[md.index(heading):]
        assert list(page.cells[name]) == TABLES
        for table in kernel.tables:
            html_rows = page.cells[name][table.behaviour]
            assert list(html_rows) == table.sources
            header = f"| {grid._md(table.name)} | " + " | ".join(map(grid._md, table.targets))
            lines = section[section.index(header + " |"):].splitlines()
            md_rows = {decode_row(line)[0]: decode_row(line)[1:] for line in lines[2:11]}
            assert list(md_rows) == table.sources
            for source in table.sources:
                for target, md_cell in zip(table.targets, md_rows[source], strict=True):
                    cell = table.cell(source, target)
                    html_cell = html_rows[source][target]
                    assert md_cell == html_cell["text"] == cell.symbol
                    assert html_cell["outcome"] == cell.outcome_names
                    assert html_cell["verdict"] == cell.verdict.value
                    assert html_cell["class"] == f"sc o-{cell.outcome}"
                    assert f"{source} → {target}: " in html_cell["title"]
    assert page.headers[("debian-7.3", "R7")] == list(support_table.load(
        support.SUPPORT_TABLE).kinds)
    # the 7.3 row the brief's user reads: everything delivered but to vsock, which drops
    r7 = md[md.index("### debian-7.3"):]
    r7 = r7[r7.index("| R7 sk_skb ingress |"):]
    assert "| tcp4 | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✗ | ✗ |" in r7.splitlines()
    assert "Legend: ✓ delivered; ⊘ refused at insert; ✗ dropped; ↩ to the original peer" in md


def test_a_run_without_matrix_cases_has_no_support_section():
    res = results.load(BOTH)
    assert support.build(res) == []
    assert "Redirect support" not in grid.markdown(res)
    assert "Redirect support" not in grid.html_page(res)


@pytest.mark.parametrize("width", [1280, 800])
def test_the_support_tables_are_readable_in_a_real_browser(chromium, saved_data,  # noqa: F811
                                                           tmp_path, width):
    res = results.Results.from_json(saved_data)
    m = measured(chromium, grid.html_page(res), tmp_path, width)
    assert m["pageWidth"] <= m["viewport"], "the page is wider than the window"
    assert m["clipped"] == []
    assert [t for t in m["texts"] if t["size"] < 12] == []
    faint = {(t["text"], round(contrast(t["color"], t["background"]), 2)) for t in m["texts"]
             if contrast(t["color"], t["background"]) < 4.5}
    assert faint == set()
    symbols = {t["text"] for t in m["texts"]}
    assert {"✓", "⊘", "✗", "↩", "—"} <= symbols  # the walk saw the tables


# ---------------------------------------------------------------------- compare

def test_compare_names_the_combinations_that_changed(saved):
    proc = kconform("compare", saved, "--base", "debian-6.1", "--new", "debian-6.12")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    lines = out.splitlines()
    assert "576 cases compared; 240 differ: 0 regressed, 0 fixed, 240 changed as documented, " \
        "0 still failing" in lines
    assert ("redirect matrix: 240 of the 576 combinations observed on both kernels changed "
            "(sockmap and sockhash alike unless one is named)") in lines
    r7 = lines[lines.index("  R7 sk_skb ingress: 60 changed"):]
    assert r7[1:5] == ["    refused → dropped",
                       "      every source → vsock_stream, vsock_seqpacket",
                       "    refused → delivered",
                       ("      vsock_stream, vsock_seqpacket → tcp4, tcp6, udp4, udp6, "
                        "unix_stream, unix_dgram")]
    # the documented changes are the matrix's lines, not 240 cases of three lines each
    assert "case test_redirect_matrix" not in out
    assert lines[-1] == "0 behaviour(s) regressed on debian-6.12 against debian-6.1"


def test_compare_of_kernels_that_redirect_alike_lists_no_combination(saved):
    for base, new in (("debian-7.2", "debian-7.3"), ("debian-7.3", "debian-7.3")):
        proc = kconform("compare", saved, saved, "--base", base, "--new", new)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "redirect matrix: none of the 576 combinations observed on both kernels " \
            "changed" in proc.stdout.splitlines()
        assert "→" not in proc.stdout
        assert not [line for line in proc.stdout.splitlines() if line.startswith("  R")]


def test_compare_names_the_map_that_changed_alone_and_keeps_regressions(saved_data, tmp_path,
                                                                         saved):
    def change(cases):
        # on 7.3, sockhash alone delivered tcp4 -> vsock_stream (sk_skb ingress): a fail
        c = cases[("debian-7.3", case_name("R7", "sockhash-tcp4-vsock_stream"))]
        c["matrix"]["outcome"], c["verdict"] = "delivered", "fail"
        c["observed"] = {**c["observed"], "received_by": ["target"]}
    new = doctored(saved_data, tmp_path, change)
    proc = kconform("compare", saved, new, "--base", "debian-7.2", "--new", "debian-7.3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[lines.index("  R7 sk_skb ingress: 1 changed") + 1:][:2] == [
        "    sockhash: dropped → delivered", "      tcp4 → vsock_stream"]
    # the regression is still a case of its own, with its rerun line, and sets the exit status
    assert [line for line in lines if line.startswith("REGRESSION")] == [
        "REGRESSION: R7 sk_skb verdict, BPF_F_INGRESS: which socket kinds redirect into which"]
    at = lines.index(f"  case {case_name('R7', 'sockhash-tcp4-vsock_stream')}")
    assert lines[at + 4].startswith("    rerun: ./kconform suite --kernel debian-7.3 ")
    assert lines[-1] == "1 behaviour(s) regressed on debian-7.3 against debian-7.2: R7"


def test_the_changes_of_both_maps_collapse_to_one(saved_data):
    res = results.Results.from_json(saved_data)
    base, new = compare.Side(res, "debian-5.10", "x"), compare.Side(res, "debian-6.1", "x")
    found = support.changes(compare.compare(base, new).compared_pairs, res.behaviours)
    assert found.compared == 576 and found.changed == 432
    assert all(c.every_map and c.maps == ("sockmap", "sockhash") for c in found.changes)
    # the refusal moved from both ends to one: the same outcome, observed otherwise
    same = [c for c in found.changes if c.before == c.after]
    assert same and {c.before for c in same} == {"refused"}
    text = compare.matrix_lines(found)
    assert "    refused on both, observed otherwise" in text
