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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KconformError
from .expectations import CRASHED, EXPECTED_DIFFERENCE, FAIL, PASS, SKIPPED

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


def upstream_key(text: str | None) -> tuple[int, ...]:
    """'6.1.176-1' -> (6, 1, 176); unknown versions sort after every known one."""
    if not text:
        return (10**6,)
    parts = []
    for piece in text.replace("-", ".").split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits or digits != piece:
            break
        parts.append(int(digits))
    return tuple(parts) or (10**6,)


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
        return sorted(self.kernels, key=lambda n: (upstream_key(self.kernels[n].get("upstream")), n))

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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ResultsError(f"{origin}: not a kconform results file (expected \"format\": "
                               f"\"{FORMAT}\"); results files are the report.json a run writes")
        try:
            results = cls(kernels=dict(data["kernels"]), behaviours=dict(data["behaviours"]),
                          cases=list(data["cases"]), runs=list(data.get("runs", [])))
            for case in results.cases:
                if case["kernel"] not in results.kernels or case["verdict"] not in VERDICTS:
                    raise ResultsError(f"{origin}: case {case['id']} names kernel "
                                       f"{case['kernel']!r} / verdict {case['verdict']!r}, "
                                       "which the file does not define")
        except (KeyError, TypeError) as exc:
            raise ResultsError(f"{origin}: damaged results file (missing {exc})") from None
        return results


def results_path(path: str | Path) -> Path:
    """A results file, or a results directory holding report.json (as a CI artifact does)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file; give a report.json written by "
                           "`./kconform suite` (or the directory holding it)")
    return path


def load(path: str | Path) -> Results:
    path = results_path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: cannot read results ({exc})") from None
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
