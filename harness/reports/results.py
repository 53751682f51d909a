"""The results file: one JSON document per run, the only input of every report.

A run writes `report.json`; `./kconform merge` joins the files of several runs (one kernel each,
say, from a CI matrix) into one document of the same shape, so the grid, the JUnit file and the
comparison are computed the same way from one run or from many. The writers (junit.py, grid.py,
compare.py) read only this document, never pytest or a guest.

Shape (format "kconform-results/1"):
  kernels:    name -> {name, version (exact package version), uname, upstream ("6.1.176"),
              boot (vng command line for an interactive shell on that kernel, or the ssh line),
              machine ("qemu", or the ssh:// target), rootfs ("host", a pinned root with its
              digest and key package versions, or "target's own"), arch ("amd64", "arm64";
              results from before it are amd64's), bpf_jit_enable (0, 1, 2 as the guest read
              it; left out when unknown)}
  behaviours: id -> {title, section, order}, order = position in the expectations file
  cases:      one per (test case, kernel): behaviour, variant, case (id without the kernel),
              kernel, expected, observed, verdict, reason, source, duration, reproduce, ...;
              attempts: under --rerun-failed, each run that failed before the last one
              ({number, verdict, message, observed, console, console_log, duration}); results
              from before it have none; for ./kconform bench: guest_seconds (time inside the
              case's guest calls), guest_timing (of those seconds, each kind's the agent
              measured: {bpf_load, waiting, sockets}, the rest being other; results from before
              it have none), boot_seconds and agent_start_seconds (the boot a case carried)
  runs:       where the cases came from: started, finished, complete, command, host
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import KconformError
from ..judging.verdicts import Verdict
from ..versions import DebianVersionKey, debian_version_key, sort_key

FORMAT = "kconform-results/1"
REPORT_JSON = "report.json"
REPORT_JUNIT = "report.junit.xml"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"

# A JSON document as json.loads gives it; the records below hold the parts the reports read typed.
JsonObject = dict[str, object]


class ResultsError(KconformError):
    pass


@dataclass(kw_only=True)
class KernelRecord:
    """What the results record about one kernel (a column of the grid, a JUnit suite)."""
    name: str | None = None
    version: str | None = None     # the exact package version, e.g. "6.1.176-1"
    uname: str | None = None
    upstream: str | None = None    # "6.1.176": the columns' order
    boot: str | None = None        # how to boot it by hand (vng), or log in (ssh)
    machine: str | None = None     # "qemu", or the ssh:// target
    rootfs: str | None = None      # "host", a pinned root, or "target's own"
    suite: str | None = None       # the Debian suite the package came from: bookworm-security
    arch: str | None = None        # "amd64", "arm64"; None in results from before arm64 guests
    bpf_jit_enable: int | None = None  # net.core.bpf_jit_enable in the guest; None: unknown
    guest_boot: str | None = None  # "direct", "virtme-ng" or "ssh"; None in older results
    extra: JsonObject = field(default_factory=dict)  # fields no report reads, kept as they came

    @property
    def architecture(self) -> str:
        """The Debian architecture the kernel ran on: results from before kconform booted
        anything but amd64 do not say, and were amd64's."""
        return self.arch or "amd64"

    @property
    def jit(self) -> str:
        """The BPF JIT's state as the reports show it: 'on (1)', 'off (0)', or 'unknown'."""
        value = self.bpf_jit_enable
        if value is None:
            return "unknown"
        return f"{JIT_STATES.get(value, 'unknown state')} ({value})"

    def to_json(self) -> JsonObject:
        data: JsonObject = {"name": self.name, "version": self.version, "uname": self.uname,
                            "upstream": self.upstream, "boot": self.boot}
        # Results written before these fields existed leave them out; so does a rewrite.
        for name, value in (("machine", self.machine), ("rootfs", self.rootfs),
                            ("suite", self.suite), ("arch", self.arch),
                            ("guest_boot", self.guest_boot),
                            ("bpf_jit_enable", self.bpf_jit_enable)):
            if value is not None:
                data[name] = value
        return data | self.extra

    @classmethod
    def from_json(cls, data: JsonObject) -> KernelRecord:
        """A record whose fields _Checker.record has checked against KERNEL_FIELDS."""
        jit = data.get("bpf_jit_enable")
        return cls(**{name: _text(data, name) for name in KERNEL_TEXT_FIELDS},
                   bpf_jit_enable=jit if isinstance(jit, int) else None,
                   extra=_unread(data, KERNEL_FIELDS))


# net.core.bpf_jit_enable's values (Documentation/admin-guide/sysctl/net.rst): 0 the interpreter
# runs BPF programs, 1 the JIT compiles them, 2 the JIT also logs each image (debugging only).
JIT_STATES = {0: "off", 1: "on", 2: "on, debug"}


@dataclass(kw_only=True)
class BehaviourRecord:
    title: str | None = None
    section: str | None = None
    order: int = 0  # the behaviour's position in the expectations file
    extra: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        return {"title": self.title, "section": self.section, "order": self.order} | self.extra

    @classmethod
    def from_json(cls, data: JsonObject) -> BehaviourRecord:
        return cls(title=_text(data, "title"), section=_text(data, "section"),
                   order=cast(int, data["order"]), extra=_unread(data, BEHAVIOUR_FIELDS))


@dataclass(kw_only=True)
class RunRecord:
    """One run whose cases the results hold: a merge holds several."""
    started: str | None = None
    finished: str | None = None
    complete: bool = False       # the run ended by itself, not by an interrupt or an error
    exit_status: int | None = None
    command: str | None = None
    host: str | None = None
    extra: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        return {"started": self.started, "finished": self.finished, "complete": self.complete,
                "exit_status": self.exit_status, "command": self.command,
                "host": self.host} | self.extra

    @classmethod
    def from_json(cls, data: JsonObject) -> RunRecord:
        status = data.get("exit_status")
        return cls(started=_text(data, "started"), finished=_text(data, "finished"),
                   complete=bool(data.get("complete", False)),
                   exit_status=status if isinstance(status, int) else None,
                   command=_text(data, "command"), host=_text(data, "host"),
                   extra=_unread(data, RUN_FIELDS))


_TIMINGS = ("guest_seconds", "boot_seconds", "agent_start_seconds")


@dataclass(kw_only=True)
class Attempt:
    """One run of a case that failed and that --rerun-failed ran again on a fresh guest: its
    evidence, kept whatever the case came to (flaky, fail, crashed)."""
    number: int                      # 1: the case's first run; 2: the first rerun, ...
    verdict: Verdict                 # what this attempt alone came to: fail (or crashed)
    message: str = ""
    observed: object = None
    console: list[str] | None = None  # the guest console lines of this attempt
    console_log: str | None = None   # the guest's whole console: one log per boot, so it names
    #                                  the guest the attempt ran on
    duration: float | None = None
    extra: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        return {"number": self.number, "verdict": self.verdict.value, "message": self.message,
                "observed": self.observed, "console": self.console,
                "console_log": self.console_log, "duration": self.duration} | self.extra

    @classmethod
    def from_json(cls, data: JsonObject) -> Attempt:
        """An attempt whose fields _Checker.attempts has checked against ATTEMPT_FIELDS."""
        console = data.get("console")
        return cls(number=cast(int, data["number"]), verdict=Verdict(cast(str, data["verdict"])),
                   message=cast(str, data.get("message", "")), observed=data.get("observed"),
                   console=cast(list[str], console) if console is not None else None,
                   console_log=_text(data, "console_log"), duration=_seconds(data, "duration"),
                   extra=_unread(data, ATTEMPT_FIELDS))


@dataclass(kw_only=True)
class CaseResult:
    """One test case on one kernel: what was expected, what was observed, and the verdict."""
    id: str                          # the pytest node id, without the kernel's "@" group
    case: str                        # the test's name without the kernel: the same on every one
    file: str
    kernel: str
    verdict: Verdict
    reproduce: str                   # the ./kconform suite line that reruns just this case
    behaviour: str | None = None
    observed: object = None          # the guest's observation (JSON), None when it had none
    expected: object = None
    message: str = ""
    kernel_version: str | None = None
    variant: str | None = None
    section: str | None = None
    title: str | None = None
    reason: str | None = None        # why an expected difference differs, and who says so
    source: str | None = None
    duration: float | None = None
    guest_seconds: float | None = None   # timings for ./kconform bench, when measured
    guest_timing: dict[str, float] | None = None  # of guest_seconds, seconds by kind
    boot_seconds: float | None = None
    agent_start_seconds: float | None = None
    # what a failed or crashed case carries for whoever investigates it
    known_crash: str | None = None
    boot: str | None = None
    console: list[str] | None = None
    console_log: str | None = None
    # a redirect-matrix case's cell of the support table: map, program, direction, source,
    # target, the outcome observed and the one expected (support_table.OUTCOMES), the rule
    matrix: JsonObject | None = None
    # --rerun-failed: the runs that failed before the last one, first first (the last run is
    # the case itself); none for a case that ran once
    attempts: list[Attempt] = field(default_factory=list)
    extra: JsonObject = field(default_factory=dict)

    def to_json(self) -> JsonObject:
        data: JsonObject = {
            "id": self.id, "case": self.case, "file": self.file, "kernel": self.kernel,
            "kernel_version": self.kernel_version, "behaviour": self.behaviour,
            "variant": self.variant, "section": self.section, "title": self.title,
            "expected": self.expected, "observed": self.observed, "verdict": self.verdict.value,
            "reason": self.reason, "source": self.source, "duration": self.duration,
            "message": self.message, "reproduce": self.reproduce}
        for name in _TIMINGS:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.guest_timing is not None:
            data["guest_timing"] = self.guest_timing
        if self.matrix is not None:
            data["matrix"] = self.matrix
        if self.verdict.bad:
            if self.known_crash is not None:
                data["known_crash"] = self.known_crash
            data |= {"boot": self.boot, "console": self.console, "console_log": self.console_log}
        if self.attempts:  # results from before --rerun-failed, and a case run once, have none
            data["attempts"] = [attempt.to_json() for attempt in self.attempts]
        return data | self.extra

    @classmethod
    def from_json(cls, data: JsonObject) -> CaseResult:
        """A case whose fields _Checker.record has checked against CASE_FIELDS."""
        console = data.get("console")
        return cls(
            id=cast(str, data["id"]), case=cast(str, data["case"]), file=cast(str, data["file"]),
            kernel=cast(str, data["kernel"]), verdict=Verdict(cast(str, data["verdict"])),
            reproduce=cast(str, data["reproduce"]), behaviour=_text(data, "behaviour"),
            observed=data["observed"], expected=data.get("expected"),
            message=cast(str, data.get("message", "")),
            kernel_version=_text(data, "kernel_version"), variant=_text(data, "variant"),
            section=_text(data, "section"), title=_text(data, "title"),
            reason=_text(data, "reason"), source=_text(data, "source"),
            duration=_seconds(data, "duration"), guest_seconds=_seconds(data, "guest_seconds"),
            guest_timing=cast(dict[str, float] | None, data.get("guest_timing")),
            boot_seconds=_seconds(data, "boot_seconds"),
            agent_start_seconds=_seconds(data, "agent_start_seconds"),
            known_crash=_text(data, "known_crash"), boot=_text(data, "boot"),
            console_log=_text(data, "console_log"),
            console=cast(list[str], console) if console is not None else None,
            matrix=cast(JsonObject | None, data.get("matrix")),
            attempts=[Attempt.from_json(cast(JsonObject, attempt))
                      for attempt in cast(list[object], data.get("attempts") or [])],
            extra=_unread(data, CASE_FIELDS))


def _package_order(version: str | None) -> tuple[int, DebianVersionKey | None]:
    """A package version in dpkg's order; none, or one that is no Debian version (a custom
    kernel's release), after them."""
    try:
        return (0, debian_version_key(version)) if version else (1, None)
    except ValueError:
        return (1, None)


def _text(data: JsonObject, name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None


def _seconds(data: JsonObject, name: str) -> float | None:
    value = data.get(name)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _unread(data: JsonObject, known: Mapping[str, object]) -> JsonObject:
    return {name: value for name, value in data.items() if name not in known}


@dataclass
class Results:
    kernels: dict[str, KernelRecord] = field(default_factory=dict)
    behaviours: dict[str, BehaviourRecord] = field(default_factory=dict)
    cases: list[CaseResult] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)

    def kernel_order(self) -> list[str]:
        """Kernel names oldest first (the grid's columns, JUnit's suites): by upstream version
        (an rc before its release), then by package version in dpkg's order (6.1.192-2 before
        6.1.192-3), then by name."""
        return sorted(self.kernels, key=lambda n: (sort_key(self.kernels[n].upstream),
                                                   _package_order(self.kernels[n].version), n))

    def sorted_cases(self) -> list[CaseResult]:
        order = {name: i for i, name in enumerate(self.kernel_order())}
        return sorted(self.cases, key=lambda c: (order.get(c.kernel, len(order)), c.id))

    def for_kernel(self, kernel: str) -> list[CaseResult]:
        return [c for c in self.sorted_cases() if c.kernel == kernel]

    def counts(self, kernel: str) -> dict[Verdict, int]:
        counts = dict.fromkeys(Verdict, 0)
        for case in self.cases:
            if case.kernel == kernel:
                counts[case.verdict] += 1
        return counts

    def to_json(self) -> JsonObject:
        return {"format": FORMAT, "runs": [run.to_json() for run in self.runs],
                "kernels": {n: self.kernels[n].to_json() for n in self.kernel_order()},
                "behaviours": {bid: info.to_json() for bid, info in
                               sorted(self.behaviours.items(), key=lambda kv: kv[1].order)},
                "cases": [case.to_json() for case in self.sorted_cases()]}

    @classmethod
    def from_json(cls, data: object, origin: str = "<data>") -> Results:
        """A results document read from a file, every field the reports read checked first, so
        a damaged or hand-edited file is a ResultsError naming the field, never a traceback."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultsError(f"{origin}: not a kconform results file (expected \"format\": "
                               f"\"{FORMAT}\"); results files are the report.json a run writes")
        check = _Checker(origin)
        kernels = {name: KernelRecord.from_json(check.record(info, f"kernels[{name!r}]",
                                                             KERNEL_FIELDS))
                   for name, info in check.table(data, "kernels", "a table of kernel name -> "
                                                 "kernel facts").items()}
        behaviours = {bid: BehaviourRecord.from_json(check.record(info, f"behaviours[{bid!r}]",
                                                                  BEHAVIOUR_FIELDS))
                      for bid, info in check.table(data, "behaviours", "a table of behaviour "
                                                   "id -> title, section, order").items()}
        cases = []
        for i, item in enumerate(check.array(data, "cases", "a list of cases")):
            where = f"cases[{i}]"
            case = check.record(item, where, CASE_FIELDS)
            where = f"{where} (id {case['id']!r})"
            if case["verdict"] not in VERDICTS:
                raise check.problem(where, f"verdict {case['verdict']!r} is not one of "
                                    f"{', '.join(VERDICTS)}")
            for j, attempt in enumerate(cast(list[object], case.get("attempts") or [])):
                check.record(attempt, f"{where}: attempts[{j}]", ATTEMPT_FIELDS)
                if cast(JsonObject, attempt)["verdict"] not in VERDICTS:
                    raise check.problem(f"{where}: attempts[{j}]", "verdict "
                                        f"{cast(JsonObject, attempt)['verdict']!r} is not one of "
                                        f"{', '.join(VERDICTS)}")
            if case["kernel"] not in kernels:
                raise check.problem(where, f"kernel {case['kernel']!r} is not in the file's "
                                    f"kernels ({', '.join(kernels) or 'none'})")
            cases.append(CaseResult.from_json(case))
        runs = [RunRecord.from_json(check.record(run, f"runs[{i}]", RUN_FIELDS))
                for i, run in enumerate(check.array(data, "runs", "a list of runs",
                                                    required=False))]
        return cls(kernels=kernels, behaviours=behaviours, cases=cases, runs=runs)


VERDICTS = tuple(verdict.value for verdict in Verdict)  # what a results file may say


# What the reports read from a results file: field -> (required, the JSON types it may have,
# what it is). Fields not listed are kept as they are and read by nobody.
_STR: tuple[type, ...] = (str,)
_NONE: tuple[type, ...] = (type(None),)
_NUM: tuple[type, ...] = (int, float)
_JSON: tuple[type, ...] = (str, int, float, bool, list, dict, type(None))
Fields = dict[str, tuple[bool, tuple[type, ...], str]]
KERNEL_TEXT_FIELDS = ("name", "version", "uname", "upstream", "boot", "machine", "rootfs",
                      "suite", "arch", "guest_boot")
KERNEL_FIELDS: Fields = {
    **dict.fromkeys(KERNEL_TEXT_FIELDS, (False, _STR + _NONE, "text or null")),
    "bpf_jit_enable": (False, (int, *_NONE), "net.core.bpf_jit_enable (0, 1 or 2) or null")}
BEHAVIOUR_FIELDS: Fields = {
    "title": (False, _STR + _NONE, "text"), "section": (False, _STR + _NONE, "text"),
    "order": (True, (int,), "the behaviour's position in the expectations file")}
CASE_FIELDS: Fields = {
    **dict.fromkeys(("id", "case", "file", "kernel", "verdict", "reproduce"), (True, _STR, "text")),
    "behaviour": (True, _STR + _NONE, "a behaviour id or null"),
    "observed": (True, _JSON, "the observation or null"),
    "expected": (False, _JSON, "the expected outcome or null"),
    "message": (False, _STR, "text"),
    "console": (False, (list, *_NONE), "a list of console lines"),
    "matrix": (False, (dict, *_NONE), "a redirect-matrix cell (a table) or null"),
    "attempts": (False, (list, *_NONE), "a list of the case's failed attempts"),
    **dict.fromkeys(("variant", "section", "title", "reason", "source", "kernel_version", "boot",
                     "console_log", "known_crash"), (False, _STR + _NONE, "text or null")),
    **dict.fromkeys(("duration", "guest_seconds", "boot_seconds", "agent_start_seconds"),
                    (False, _NUM + _NONE, "a number of seconds or null")),
    "guest_timing": (False, (dict, *_NONE), "a table of seconds by kind or null"),
}
ATTEMPT_FIELDS: Fields = {
    "number": (True, (int,), "the attempt's number, 1 for the first run"),
    "verdict": (True, _STR, "text"),
    "message": (False, _STR, "text"),
    "observed": (False, _JSON, "the observation or null"),
    "console": (False, (list, *_NONE), "a list of console lines"),
    "console_log": (False, _STR + _NONE, "text or null"),
    "duration": (False, _NUM + _NONE, "a number of seconds or null"),
}
RUN_FIELDS: Fields = {
    "started": (False, _STR + _NONE, "a time or null"),
    "finished": (False, _STR + _NONE, "a time or null"),
    "complete": (False, (bool,), "true or false"),
    "exit_status": (False, (int, *_NONE), "pytest's exit status or null"),
    "command": (False, _STR + _NONE, "text"), "host": (False, _STR + _NONE, "text")}


class _Checker:
    """Checks one results document; each problem names the file, where in it, and the fix."""

    def __init__(self, origin: str):
        self.origin = origin

    def problem(self, where: str, what: str) -> ResultsError:
        return ResultsError(f"{self.origin}: damaged results file: {where}: {what}; use the "
                            "report.json a run wrote (or run the suite again)")

    def table(self, data: JsonObject, name: str, what: str) -> dict[str, object]:
        if name not in data:
            raise self.problem(name, f"missing (it should be {what})")
        value = data[name]
        if not isinstance(value, dict):
            raise self.problem(name, f"is a {_json_type(value)}, not {what}")
        return value

    def array(self, data: JsonObject, name: str, what: str,
              required: bool = True) -> list[object]:
        if name not in data and not required:
            return []
        if name not in data:
            raise self.problem(name, f"missing (it should be {what})")
        value = data[name]
        if not isinstance(value, list):
            raise self.problem(name, f"is a {_json_type(value)}, not {what}")
        return value

    def record(self, record: object, where: str, fields: Fields) -> JsonObject:
        """The record, once each of `fields` it holds has its type (and required ones are there)."""
        if not isinstance(record, dict):
            raise self.problem(where, f"is a {_json_type(record)}, not a table")
        for name, (required, types, what) in fields.items():
            if name not in record:
                if required:
                    raise self.problem(where, f"field {name!r} is missing (it should be {what})")
                continue
            value = record[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise self.problem(where, f"field {name!r} = {_short(value)} is not {what}")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.problem(where, f"field {name!r} = {value} is not a finite number")
            if name == "console" and isinstance(value, list) \
                    and not all(isinstance(line, str) for line in value):
                raise self.problem(where, "field 'console' holds something other than lines "
                                   "of text")
            if name == "guest_timing" and isinstance(value, dict):
                for kind, seconds in value.items():
                    if type(seconds) not in (int, float) or not math.isfinite(seconds) \
                            or seconds < 0:
                        raise self.problem(where, f"field 'guest_timing' gives {kind!r} "
                                           f"{_short(seconds)}, not a number of seconds")
        return cast(JsonObject, record)


def _json_type(value: object) -> str:
    return {dict: "table", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def results_path(path: str | Path) -> Path:
    """A results file, or a results directory holding report.json (as a CI artifact does)."""
    path = Path(path)
    try:
        if path.is_dir():
            path = path / REPORT_JSON
        found = path.is_file()
    except (OSError, ValueError):  # a name too long for the system, or holding a NUL
        found = False
    if not found:
        raise ResultsError(f"{path}: no such results file; give a report.json written by "
                           "`./kconform suite` (or the directory holding it)")
    return path


def load(path: str | Path) -> Results:
    path = results_path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ResultsError(f"{path}: cannot read results ({exc}); give a report.json written by "
                           "`./kconform suite`") from None
    return Results.from_json(data, str(path))


def merge(parts: list[tuple[str, Results]]) -> Results:
    """Join the results of several runs; each kernel must come from exactly one of them.

    One name at two package versions (two CI runs of debian-6.1 a month apart) is two kernels:
    each becomes NAME@<package version>, the name that boots that version again, with its cases'
    ids and rerun lines renamed to match. The same name at the same version twice is one kernel
    run twice, which a merged grid cannot show: that stays an error."""
    versions: dict[str, set[str | None]] = {}
    for _, part in parts:
        for kernel, record in part.kernels.items():
            versions.setdefault(kernel, set()).add(record.version)
    renamed = {kernel for kernel, seen in versions.items() if len(seen) > 1 and None not in seen}
    merged = Results()
    origin: dict[str, str] = {}
    for name, part in parts:
        part = _pinned(part, renamed)
        for kernel, record in part.kernels.items():
            if kernel in origin:
                first = merged.kernels[kernel].version
                at = (f"at {first or 'an unknown version'} in each" if first == record.version
                      else f"at {first or 'no version'} and {record.version or 'no version'}, "
                      "so they cannot be told apart")
                raise ResultsError(
                    f"kernel {kernel} is in both {origin[kernel]} and {name}, {at}; a merged "
                    "grid holds one run per kernel version: leave one of the two files out")
            origin[kernel] = name
            merged.kernels[kernel] = record
        for bid, behaviour in part.behaviours.items():
            merged.behaviours.setdefault(bid, behaviour)
        merged.cases += part.cases
        merged.runs += part.runs
    return merged


def pinned_kernel_name(kernel: str, version: str) -> str:
    """The name that boots `version` of the kernel `kernel` names: 'debian-6.1' at 6.1.176-1
    -> 'debian-6.1@6.1.176-1' (a pinned name's own selector, such as an ABI, is replaced)."""
    return f"{kernel.partition('@')[0]}@{version}"


def _pinned(part: Results, kernels: set[str]) -> Results:
    """`part` with each of `kernels` renamed to its pinned name, in its cases too."""
    names = {k: pinned_kernel_name(k, cast(str, part.kernels[k].version))
             for k in kernels & part.kernels.keys()}
    if not names:
        return part
    cases = [_renamed_case(c, names[c.kernel]) if c.kernel in names else c for c in part.cases]
    return dataclasses.replace(
        part, kernels={names.get(k, k): dataclasses.replace(r, name=names[k]) if k in names else r
                       for k, r in part.kernels.items()}, cases=cases)


def _renamed_case(case: CaseResult, kernel: str) -> CaseResult:
    """The case as a run of the kernel named `kernel` records it: the kernel's test id (the id's
    parameter that names the kernel) and the rerun line that names both."""
    old_id = case.id
    head, bracket, params = old_id.partition("[")
    new_id = head + bracket + re.sub(rf"(?<![^-]){re.escape(case.kernel)}(?=[-\]])",
                                     lambda _: kernel, params, count=1) if bracket else old_id
    try:
        words = shlex.split(case.reproduce)
    except ValueError:  # a hand-edited line: kept as it was
        words = []
    if words:
        words = [kernel if w == case.kernel and i and words[i - 1] == "--kernel" else
                 new_id if w == old_id else w for i, w in enumerate(words)]
        reproduce = shlex.join(words)
    else:
        reproduce = case.reproduce
    return dataclasses.replace(case, id=new_id, kernel=kernel, reproduce=reproduce)


def writable_directory(path: Path, what: str, fix: str) -> Path:
    """Create `path` if needed and prove it takes a file (created and removed again), so a
    directory that cannot be written is a usage error before a run, not an OSError after its
    first case. `what` names the option or variable that chose it; `fix` says what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kconform-write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)
        raise KconformError(f"{what} {path}: cannot write there ({reason}); {fix}") from None
    return path


def write_atomic(path: Path, text: str) -> None:
    """Replace path in one rename, so a reader (or an interrupted run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private; reports are for everyone to read
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(results: Results, path: Path, compact: bool = False) -> None:
    """compact: for the rewrite after every case, where indenting was most of the cost."""
    text = json.dumps(results.to_json(), separators=(",", ":")) if compact \
        else json.dumps(results.to_json(), indent=1)
    write_atomic(path, text + "\n")
