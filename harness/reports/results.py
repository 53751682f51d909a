"""The results file: one JSON document per run, the only input of every report.

A run writes `report.json`; `./kconform merge` joins the files of several runs (one kernel each,
say, from a CI matrix) into one document of the same shape, so the grid, the JUnit file and the
comparison are computed the same way from one run or from many. The writers (junit.py, grid.py,
compare.py) read only this document, never pytest or a guest.

Shape (format "kconform-results/1"):
  kernels:    name -> {name, version (exact package version), uname, upstream ("6.1.176"),
              boot (vng command line for an interactive shell on that kernel, or the ssh line),
              machine ("qemu", or the ssh:// target), rootfs ("host", a pinned root with its
              digest and key package versions, or "target's own")}
  behaviours: id -> {title, section, order}, order = position in the expectations file
  cases:      one per (test case, kernel): behaviour, variant, case (id without the kernel),
              kernel, expected, observed, verdict, reason, source, duration, reproduce, ...
  runs:       where the cases came from: started, finished, complete, command, host
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KconformError
from ..judging.expectations import CRASHED, EXPECTED_DIFFERENCE, FAIL, PASS, SKIPPED
from ..versions import sort_key

FORMAT = "kconform-results/1"
REPORT_JSON = "report.json"
REPORT_JUNIT = "report.junit.xml"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"

VERDICTS = (PASS, EXPECTED_DIFFERENCE, FAIL, CRASHED, SKIPPED)
GOOD = (PASS, EXPECTED_DIFFERENCE)   # the kernel does what its expectation says
BAD = (FAIL, CRASHED)
# A cell that holds several cases (variants of one behaviour) shows the worst of them.
SEVERITY = {SKIPPED: 0, PASS: 1, EXPECTED_DIFFERENCE: 2, FAIL: 3, CRASHED: 4}


class ResultsError(KconformError):
    pass



def worst(verdicts) -> str:
    return max(verdicts, key=lambda v: SEVERITY.get(v, 0))


@dataclass
class Results:
    kernels: dict[str, dict] = field(default_factory=dict)
    behaviours: dict[str, dict] = field(default_factory=dict)
    cases: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    def kernel_order(self) -> list[str]:
        """Kernel names oldest first (the grid's columns, JUnit's suites)."""
        return sorted(self.kernels, key=lambda n: (sort_key(self.kernels[n].get("upstream")), n))

    def sorted_cases(self) -> list[dict]:
        order = {name: i for i, name in enumerate(self.kernel_order())}
        return sorted(self.cases, key=lambda c: (order.get(c["kernel"], len(order)), c["id"]))

    def for_kernel(self, kernel: str) -> list[dict]:
        return [c for c in self.sorted_cases() if c["kernel"] == kernel]

    def counts(self, kernel: str) -> dict[str, int]:
        counts = {v: 0 for v in VERDICTS}
        for case in self.cases:
            if case["kernel"] == kernel:
                counts[case["verdict"]] += 1
        return counts

    def to_json(self) -> dict:
        return {"format": FORMAT, "runs": self.runs,
                "kernels": {n: self.kernels[n] for n in self.kernel_order()},
                "behaviours": dict(sorted(self.behaviours.items(), key=lambda kv: kv[1]["order"])),
                "cases": self.sorted_cases()}

    @classmethod
    def from_json(cls, data: dict, origin: str = "<data>") -> "Results":
        """A results document read from a file, every field the reports read checked first, so
        a damaged or hand-edited file is a ResultsError naming the field, never a traceback."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultsError(f"{origin}: not a kconform results file (expected \"format\": "
                               f"\"{FORMAT}\"); results files are the report.json a run writes")
        check = _Checker(origin)
        kernels = check.table(data, "kernels", "a table of kernel name -> kernel facts")
        for name, info in kernels.items():
            check.record(info, f"kernels[{name!r}]", KERNEL_FIELDS)
        behaviours = check.table(data, "behaviours", "a table of behaviour id -> title, section, "
                                                     "order")
        for bid, info in behaviours.items():
            check.record(info, f"behaviours[{bid!r}]", BEHAVIOUR_FIELDS)
        cases = check.array(data, "cases", "a list of cases")
        for i, case in enumerate(cases):
            where = f"cases[{i}]"
            check.record(case, where, CASE_FIELDS)
            where = f"{where} (id {case['id']!r})"
            if case["verdict"] not in VERDICTS:
                raise check.problem(where, f"verdict {case['verdict']!r} is not one of "
                                    f"{', '.join(VERDICTS)}")
            if case["kernel"] not in kernels:
                raise check.problem(where, f"kernel {case['kernel']!r} is not in the file's "
                                    f"kernels ({', '.join(kernels) or 'none'})")
        runs = check.array(data, "runs", "a list of runs", required=False)
        for i, run in enumerate(runs):
            check.record(run, f"runs[{i}]", RUN_FIELDS)
        return cls(kernels=dict(kernels), behaviours=dict(behaviours), cases=list(cases),
                   runs=list(runs))


# What the reports read from a results file: field -> (required, the JSON types it may have,
# what it is). Fields not listed are kept as they are and read by nobody.
_STR, _NONE, _NUM = (str,), (type(None),), (int, float)
_JSON = (str, int, float, bool, list, dict, type(None))
KERNEL_FIELDS = {name: (False, _STR + _NONE, "text or null")
                 for name in ("name", "version", "uname", "upstream", "boot", "machine", "rootfs")}
BEHAVIOUR_FIELDS = {"title": (False, _STR + _NONE, "text"),
                    "section": (False, _STR + _NONE, "text"),
                    "order": (True, (int,), "the behaviour's position in the expectations file")}
CASE_FIELDS = {
    **{name: (True, _STR, "text") for name in ("id", "case", "file", "kernel", "verdict",
                                                "reproduce")},
    "behaviour": (True, _STR + _NONE, "a behaviour id or null"),
    "observed": (True, _JSON, "the observation or null"),
    "expected": (False, _JSON, "the expected outcome or null"),
    "message": (False, _STR, "text"),
    "console": (False, (list,) + _NONE, "a list of console lines"),
    **{name: (False, _STR + _NONE, "text or null")
       for name in ("variant", "section", "title", "reason", "source", "kernel_version", "boot",
                    "console_log", "known_crash")},
    **{name: (False, _NUM + _NONE, "a number of seconds or null")
       for name in ("duration", "guest_seconds", "boot_seconds", "agent_start_seconds")},
}
RUN_FIELDS = {"started": (False, _STR + _NONE, "a time or null"),
              "finished": (False, _STR + _NONE, "a time or null"),
              "complete": (False, (bool,), "true or false"),
              "exit_status": (False, (int,) + _NONE, "pytest's exit status or null"),
              "command": (False, _STR + _NONE, "text"), "host": (False, _STR + _NONE, "text")}


class _Checker:
    """Checks one results document; each problem names the file, where in it, and the fix."""

    def __init__(self, origin: str):
        self.origin = origin

    def problem(self, where: str, what: str) -> ResultsError:
        return ResultsError(f"{self.origin}: damaged results file: {where}: {what}; use the "
                            "report.json a run wrote (or run the suite again)")

    def table(self, data: dict, name: str, what: str) -> dict:
        if name not in data:
            raise self.problem(name, f"missing (it should be {what})")
        if not isinstance(data[name], dict):
            raise self.problem(name, f"is a {_json_type(data[name])}, not {what}")
        return data[name]

    def array(self, data: dict, name: str, what: str, required: bool = True) -> list:
        if name not in data and not required:
            return []
        if name not in data:
            raise self.problem(name, f"missing (it should be {what})")
        if not isinstance(data[name], list):
            raise self.problem(name, f"is a {_json_type(data[name])}, not {what}")
        return data[name]

    def record(self, record, where: str, fields: dict) -> None:
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
            if name == "console" and value is not None \
                    and not all(isinstance(line, str) for line in value):
                raise self.problem(where, "field 'console' holds something other than lines "
                                   "of text")


def _json_type(value) -> str:
    return {dict: "table", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value) -> str:
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
    """Join the results of several runs; each kernel must come from exactly one of them."""
    merged = Results()
    origin: dict[str, str] = {}
    for name, part in parts:
        for kernel, info in part.kernels.items():
            if kernel in origin:
                raise ResultsError(
                    f"kernel {kernel} is in both {origin[kernel]} and {name}; a merged grid "
                    "holds one run per kernel: leave one of the two files out")
            origin[kernel] = name
            merged.kernels[kernel] = info
        for bid, info in part.behaviours.items():
            merged.behaviours.setdefault(bid, info)
        merged.cases += part.cases
        merged.runs += part.runs
    return merged


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
