"""Reports of a run: each finished case becomes a record in report.json, and every report is
written from those records (JUnit, the Markdown and HTML grid).

Two halves, registered as one plugin object by harness/plugin/__init__.py:
- on every process (each xdist worker, or the only process): pytest_runtest_makereport adds to
  each report of a kernel case what only that process knows: the case id without the kernel,
  the behaviour when the test failed before calling expect(), whether the guest crashed, the
  guest console lines written during the test (from the mark mark_console_start left), and how
  to boot the kernel by hand.
- on the controller only: pytest_runtest_logreport collects the reports (under xdist they arrive
  here with their user_properties), and when a case's teardown report arrives, the case is
  judged and report.json and the JUnit file are rewritten (one rename each), so an interrupted
  run leaves valid files holding every case that finished. The grid is written at the end.
  A case --rerun-failed runs again is recorded once, from its last run's reports, which carry
  the earlier failed runs as an "attempts" property (reruns.py); the reports of those earlier
  runs (outcome "rerun") are shown but not recorded.
"""
from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import shlex
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from pluggy import Result

from ..judging.verdicts import Verdict
from ..kernels.selectors import split_pinned
from ..reports.grid import write_reports
from ..reports.junit import junit_text
from ..reports.reproduce import rerun_command
from ..reports.results import (
    REPORT_HTML,
    REPORT_JSON,
    REPORT_JUNIT,
    REPORT_MARKDOWN,
    Attempt,
    BehaviourRecord,
    CaseResult,
    KernelRecord,
    Results,
    RunRecord,
    write_atomic,
    write_json,
)
from ..versions import dotted, upstream_version
from . import interrupts
from .run import CASE_GUEST_KEY, CRASHED_KEY, kernel_of

if TYPE_CHECKING:
    from .run import KconformRun


class Console(Protocol):
    """The part of a machine's console log the reports read."""
    @property
    def count(self) -> int: ...
    def tail(self, lines: int, since: int = 0) -> list[str]: ...


CONSOLE_MARK = pytest.StashKey[tuple[Console, int]]()
CONSOLE_EXCERPT = 100  # lines of guest console kept with a failure


def mark_console_start(item: pytest.Item, console: Console) -> None:
    """Where this test's console lines start: a failure report carries the lines from here."""
    item.stash[CONSOLE_MARK] = (console, console.count)


class Reporter:
    def __init__(self, config: pytest.Config, run: KconformRun):
        self.config = config
        self.run = run
        self.controller = not hasattr(config, "workerinput")  # xdist workers have workerinput
        self.phases: dict[str, list[pytest.TestReport]] = {}
        self.results = Results(runs=[RunRecord(
            started=_now(), command=shlex.join(["pytest", *config.invocation_params.args]),
            host=socket.gethostname())])
        self.started_writing = False
        self.next_write = 0.0  # monotonic time before which report.json is not rewritten
        self.deferred: threading.Timer | None = None  # writes what a deferred rewrite left out
        self.lock = threading.Lock()
        self.finished = False
        self.write_error: str | None = None  # the first report that could not be written
        config.addinivalue_line(
            "markers", "behaviour(id): the documented behaviour a test checks, for a test whose "
                       "expect() call does not name it as a literal (reports need it when the "
                       "test fails before expect())")

    # ------------------------------------------------------------------ every process

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, Result[Any]]:
        outcome = yield
        report: pytest.TestReport = outcome.get_result()
        kernel = kernel_of(item)
        if kernel is None:
            return
        props = dict(report.user_properties)
        extra: list[tuple[str, object]] = []
        if report.when == "setup":
            extra += [("kernel", kernel), ("case", case_id(item, kernel))]
            if "behaviour" not in props:
                extra += self._declared_behaviour(item)
            extra += self._kernel_facts(kernel)
        if report.failed and report.when in ("setup", "call"):
            extra += self._failure_context(item, kernel, report)
        report.user_properties += [(k, v) for k, v in extra if k not in props or k == "verdict"]

    def _declared_behaviour(self, item: pytest.Item) -> list[tuple[str, object]]:
        bid, variant = declared_behaviour(item)
        behaviour = self.run.behaviours.get(bid) if bid else None
        if not behaviour:
            return []
        return [("behaviour", bid), ("variant", variant or ""), ("section", behaviour.section),
                ("title", behaviour.title)]

    def _kernel_facts(self, kernel: str) -> list[tuple[str, object]]:
        info = self.run.kernels.get(kernel)
        tree = self.run.pool.trees.get(kernel)
        facts: list[tuple[str, object]] = []
        if tree is not None:
            rootfs = "target's own" if tree.target else self.run.rootfs_label(tree.arch)
            if info is not None and info.root_label:  # a machine's own root (a snapshot's)
                rootfs = info.root_label
            facts += [("kernel_version", tree.exact_version),
                      ("machine", tree.target or "qemu"), ("rootfs", rootfs),
                      ("kernel_arch", tree.arch)]
        session = self.run.pool.live.get(kernel)  # the guest this test ran on, when it booted
        if session is not None and session.bpf_jit_enable is not None:
            facts.append(("bpf_jit_enable", session.bpf_jit_enable))
        if info is not None and info.boot_kind:
            facts.append(("guest_boot", info.boot_kind))
        command = info.vng_command if info is not None and info.vng_command else \
            self.run.boot_command(tree) if tree is not None else None  # it never booted
        if command:
            facts.append(("boot", interactive_boot_command(command)))
        return facts

    def _failure_context(self, item: pytest.Item, kernel: str,
                         report: pytest.TestReport) -> list[tuple[str, object]]:
        extra: list[tuple[str, object]] = []
        case_guest = item.stash.get(CASE_GUEST_KEY, None)
        lost_guest = case_guest is not None and case_guest.down is not None
        # the guest died (booting for this test, or during it), or its kernel reported a problem
        if item.stash.get(CRASHED_KEY, False) or (report.when == "call" and lost_guest):
            extra.append(("verdict", Verdict.CRASHED.value))
        mark = item.stash.get(CONSOLE_MARK, None)
        if mark is not None:
            console, since = mark
            lines = console.tail(CONSOLE_EXCERPT, since=since)
            extra.append(("console", json.dumps(lines)))
        info = self.run.kernels.get(kernel)
        if info is not None and info.console_log:
            extra.append(("console_log", info.console_log))
        return extra

    # ------------------------------------------------------------------ controller

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """The run's architectures, beside the kernels __init__.pytest_report_header lists."""
        return architectures_line(self.run)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.controller:
            return
        props = dict(report.user_properties)
        if str(report.when) == "???" and "kernel" not in props:  # not a phase pytest names
            # xdist's report for a test whose worker died; loadgroup appended "@<kernel>" to its
            # id (a kernel name may hold "@" itself: two SSH targets of one release)
            kernel = next((k for k in self.run.kernel_names
                           if report.nodeid.endswith(f"@{k}")), None)
            if kernel:
                report.user_properties.append(("kernel", kernel))
                props = dict(report.user_properties)
        if "kernel" not in props and report.nodeid not in self.phases:
            return  # not a kernel case (kconform's own tests)
        if report.outcome == RERUN:  # a failed run to be run again: its last run records it
            self.phases.pop(report.nodeid, None)
            return
        self.phases.setdefault(report.nodeid, []).append(report)
        if report.when not in ("setup", "call"):
            self._finish(self.phases.pop(report.nodeid))

    def _finish(self, reports: list[pytest.TestReport]) -> None:
        case = case_record(reports, self.config.option.expectations)
        with self.lock:  # a deferred rewrite (below) may be reading the results
            # xdist reruns a test whose worker died on a new worker: the last report counts
            self.results.cases = [c for c in self.results.cases if c.id != case.id] + [case]
            self._note_kernel(case.kernel, reports)
            bid = case.behaviour
            if bid and bid in self.run.behaviours and bid not in self.results.behaviours:
                behaviour = self.run.behaviours[bid]
                self.results.behaviours[bid] = BehaviourRecord(
                    title=behaviour.title, section=behaviour.section,
                    order=list(self.run.behaviours).index(bid))
        self._write_incremental()

    def _note_kernel(self, kernel: str, reports: list[pytest.TestReport]) -> None:
        entry = self.results.kernels.setdefault(kernel, KernelRecord(name=kernel))
        props = _properties(reports)
        for key, prop in (("version", "kernel_version"), ("uname", "uname"), ("boot", "boot"),
                          ("machine", "machine"), ("rootfs", "rootfs"), ("suite", "kernel_suite"),
                          ("arch", "kernel_arch"), ("guest_boot", "guest_boot")):
            value = props.get(prop)
            if isinstance(value, str) and value and not getattr(entry, key):
                setattr(entry, key, value)
        jit = props.get("bpf_jit_enable")
        if type(jit) is int and entry.bpf_jit_enable is None:  # bool is an int to isinstance
            entry.bpf_jit_enable = jit
        spec = self.run.specs.get(split_pinned(kernel)[0])
        if entry.arch is None and spec is not None:  # its tree never came: its definition says
            entry.arch = spec.arch
        upstream = _upstream_of(entry.version)
        if upstream:
            entry.upstream = upstream
        elif spec is not None:
            entry.upstream = spec.series or None

    def _write_incremental(self) -> None:
        out = self.run.results_dir
        if not self.started_writing:  # reports of an earlier run must not pass for this one's
            for stale in (out / REPORT_MARKDOWN, out / REPORT_HTML):
                self._guarded(functools.partial(stale.unlink, missing_ok=True))
            self.started_writing = True
        # Rewritten as cases finish, each time whole: at 750 cases one rewrite costs ~40 ms, so
        # they are written compact (the end of the run indents them), and once a rewrite costs
        # more than 10 ms the next waits until rewriting takes at most 1/20 of the run's time;
        # a timer then writes what came in meanwhile, even if no case finishes for a while (a
        # boot). A run killed outright misses at most that wait's cases (under a second at 750
        # cases); Ctrl-C and SIGTERM end the run normally, which writes every case.
        with self.lock:
            now = time.monotonic()
            if self.finished:
                return  # the run's end wrote every report
            if now < self.next_write:
                if self.deferred is None:
                    self.deferred = threading.Timer(self.next_write - now, self._write_deferred)
                    self.deferred.daemon = True
                    self.deferred.start()
                return
            def write_both() -> None:
                write_json(self.results, out / REPORT_JSON, compact=True)
                write_atomic(out / REPORT_JUNIT, junit_text(self.results, pretty=False))
            with interrupts.deferred():
                self._guarded(write_both)
            spent = time.monotonic() - now
            self.next_write = now + 20 * spent if spent > 0.01 else 0.0

    def _write_deferred(self) -> None:
        with self.lock:
            self.deferred = None
            self.next_write = 0.0
        self._write_incremental()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.controller or not self.results.cases:
            return
        with self.lock:
            self.finished = True
            if self.deferred is not None:
                self.deferred.cancel()
            run = self.results.runs[0]
            run.finished, run.exit_status = _now(), int(exitstatus)
            run.complete = int(exitstatus) in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
            # the largest rewrite; an interrupt during it asks for the end this already is
            with interrupts.deferred(ending=True):
                self._guarded(lambda: write_reports(self.results, self.run.results_dir))

    def _guarded(self, write: Callable[[], object]) -> None:
        """--results-dir was writable when the run began; if it stops being so (full, removed,
        remounted), the run goes on and its end says so once, instead of an internal error."""
        try:
            write()
        except OSError as exc:
            if self.write_error is None:
                self.write_error = (f"cannot write the reports into {self.run.results_dir} "
                                    f"({exc.strerror or exc}); free space there or choose "
                                    "another --results-dir, and run again")
                self.run._log(self.write_error)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.controller and self.write_error:
            terminalreporter.write_line(f"kconform: {self.write_error}", red=True, bold=True)
        elif self.controller and self.results.cases:
            out = self.run.results_dir
            terminalreporter.write_line(
                f"kconform reports: {out}/{{{REPORT_JSON}, {REPORT_JUNIT}, {REPORT_MARKDOWN}, "
                f"{REPORT_HTML}}}")


def architectures_line(run: KconformRun) -> list[str]:
    """'kconform: architectures: amd64 (debian-6.12), arm64 (debian-6.12-arm64)': each kernel's
    as its tree (an SSH target's) or its definition says. A path or a build says once fetched,
    which is after the header: the reports record it."""
    by_arch: dict[str, list[str]] = {}
    for name in run.kernel_names:
        by_arch.setdefault(run.arch_of(name) or "known once fetched", []).append(name)
    if list(by_arch) == ["known once fetched"]:
        return []
    if len(by_arch) == 1:
        return [f"kconform: architecture: {next(iter(by_arch))}"]
    return ["kconform: architectures: " + ", ".join(f"{arch} ({', '.join(names)})"
                                                    for arch, names in by_arch.items())]


# ---------------------------------------------------------------------- one case

def case_record(reports: list[pytest.TestReport],
                expectations_file: str | None = None) -> CaseResult:
    """One result from a test's setup/call/teardown reports and their user_properties."""
    props = _properties(reports)
    kernel = str(props["kernel"])
    attempts = _attempts(props.get("attempts"))
    # xdist's loadgroup appends "@<group>" (here the kernel) to node ids; pytest takes them without
    nodeid = reports[0].nodeid.removesuffix(f"@{kernel}")
    failed = next((r for r in reports if r.failed), None)
    skipped = next((r for r in reports if r.skipped), None)
    recorded = _verdict(props.get("verdict"))
    if failed is not None:
        verdict = recorded if recorded is not None and recorded.bad else Verdict.FAIL
        message = re.sub(r"^\[gw\d+\] .*\n", "", failed.longreprtext)  # xdist's worker line
    elif skipped is not None:
        verdict = Verdict.SKIPPED
        longrepr = skipped.longrepr
        message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        message = message.removeprefix("Skipped: ")
    elif attempts:  # it failed before, and passed when run again on a fresh guest
        verdict = Verdict.FLAKY
        message = ""
    else:
        verdict = recorded if recorded is not None and recorded.good else Verdict.PASS
        message = ""
    case = CaseResult(
        id=nodeid, case=_text(props, "case") or nodeid.split("::")[-1],
        file=nodeid.split("::")[0], kernel=kernel, kernel_version=_text(props, "kernel_version"),
        behaviour=_text(props, "behaviour"), variant=_text(props, "variant"),
        section=_text(props, "section"), title=_text(props, "title"),
        expected=_json(props.get("expected")), observed=_json(props.get("observed")),
        verdict=verdict, reason=_text(props, "reason"), source=_text(props, "source"),
        duration=round(sum(r.duration for r in reports), 3), message=message,
        reproduce=rerun_command(kernel, nodeid, expectations_file),
        # for ./kconform bench
        guest_seconds=_seconds(props, "guest_seconds"),
        guest_timing=_guest_timing(props.get("guest_timing")),
        boot_seconds=_seconds(props, "boot_seconds"),
        agent_start_seconds=_seconds(props, "agent_start_seconds"))
    cell = _json(props.get("matrix"))
    if isinstance(cell, dict):
        case.matrix = cell
    case.attempts = attempts
    if verdict.bad:
        case.known_crash = _text(props, "known_crash")
        case.boot = _text(props, "boot")
        console = _json(props.get("console"))
        case.console = [str(line) for line in console] if isinstance(console, list) else []
        case.console_log = _text(props, "console_log")
    return case


# The outcome of the reports of a run that --rerun-failed runs again (pytest-rerunfailures'
# word): pytest counts it neither as passed nor as failed.
RERUN = "rerun"


def attempt_record(reports: list[pytest.TestReport], number: int) -> Attempt:
    """One failed run of a case, from its reports: what the case's last run carries of it."""
    case = case_record(reports)
    return Attempt(number=number, verdict=case.verdict, message=case.message,
                   observed=case.observed, console=case.console, console_log=case.console_log,
                   duration=case.duration)


def _attempts(text: object) -> list[Attempt]:
    """The "attempts" property (JSON text: xdist sends properties between processes)."""
    found = _json(text)
    if not isinstance(found, list):
        return []
    return [Attempt.from_json(attempt) for attempt in found if isinstance(attempt, dict)]


def _properties(reports: list[pytest.TestReport]) -> dict[str, object]:
    """The user_properties of a test's reports, a later report's value winning."""
    props: dict[str, object] = {}
    for report in reports:
        props.update(dict(report.user_properties))
    return props


def _verdict(value: object) -> Verdict | None:
    return Verdict(value) if isinstance(value, str) and value in Verdict.__members__.values() \
        else None


def _text(props: dict[str, object], name: str) -> str | None:
    """A property as text; an empty one (expect() records "" for no variant) is none."""
    value = props.get(name)
    return str(value) if value not in (None, "") else None


def _seconds(props: dict[str, object], name: str) -> float | None:
    value = props.get(name)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _guest_timing(text: object) -> dict[str, float] | None:
    """The "guest_timing" property (JSON text, as the guest fixture writes it): kind -> seconds,
    or None when the case's calls reported none."""
    found = _json(text)
    if not isinstance(found, dict):
        return None
    return {str(kind): float(seconds) for kind, seconds in found.items()
            if isinstance(seconds, (int, float)) and not isinstance(seconds, bool)}


def _json(text: object) -> object:
    return json.loads(text) if isinstance(text, str) and text else None


def case_id(item: pytest.Item, kernel: str) -> str:
    """The test's id without the kernel: the same case on every kernel, e.g. 'test_x[sockmap]'."""
    ids = list(getattr(getattr(item, "callspec", None), "_idlist", ()))
    if kernel in ids and isinstance(item, pytest.Function):
        ids.remove(kernel)
        return item.originalname + (f"[{'-'.join(ids)}]" if ids else "")
    return item.name  # pytest changed its internals: the kernel stays in the id


# What an argument of expect() is: ("literal", "U8"), ("param", "map_type"), or None.
ExpectArgument = tuple[str, str] | None


def _upstream_of(version: str | None) -> str | None:
    """'6.1.176-1' -> '6.1.176'; None for a version that names none (a target's custom uname is
    refused earlier, but a report must never stop the run)."""
    try:
        return dotted(upstream_version(version)) if version else None
    except ValueError:
        return None


def declared_behaviour(item: pytest.Item) -> tuple[str | None, str | None]:
    """The behaviour a test checks: its `behaviour` marker, else the first argument of its
    expect() call, a literal ("U8") or one of the test's parameters (`expect(behaviour, ...)`)."""
    mark = item.get_closest_marker("behaviour")
    if mark and mark.args:
        variant = mark.kwargs.get("variant")
        return str(mark.args[0]), str(variant) if variant is not None else None
    function = getattr(item, "function", None)
    if function is None:
        return None, None
    callspec = getattr(item, "callspec", None)
    params: dict[str, object] = callspec.params if callspec is not None else {}
    bid, variant = (_resolve(arg, params) for arg in _expect_call(function))
    return bid, variant


def _resolve(arg: ExpectArgument, params: dict[str, object]) -> str | None:
    if arg is None:
        return None
    kind, value = arg
    if kind == "literal":
        return value
    return str(params[value]) if value in params else None


@functools.cache
def _expect_call(function: Callable[..., object]) -> tuple[ExpectArgument, ExpectArgument]:
    """The behaviour id and variant of the first `expect(id, observed, variant)` in the test's
    source, each ("literal", "U8"), ("param", "map_type") or None."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return None, None

    def arg(node: ast.expr) -> ExpectArgument:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return ("literal", node.value)
        return ("param", node.id) if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "expect" and node.args:
            variant = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg == "variant"), None)
            return arg(node.args[0]), (arg(variant) if variant is not None else None)
    return None, None


def interactive_boot_command(vng_command: str) -> str:
    """The run's vng line without the agent (--exec) or the run's guest name: a shell on the
    same kernel with the same memory, CPU model and accelerator. Add --dry-run to see QEMU's."""
    words, out, skip = shlex.split(vng_command), [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("--exec", "-e", "--name"):
            skip = True
        elif not word.startswith(("--exec=", "--name=")):
            out.append(word)
    return shlex.join(out)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

