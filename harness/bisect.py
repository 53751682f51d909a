"""./kconform bisect: a packaged kernel version whose observed outcome differs from the version
before it, found by binary search over a range of versions (issue #11, item 4).

A probe is one child run of the suite on one kernel with only the selected cases; its outcome is
{case id: observed outcome}, the observation and not the verdict, since expectations move with
versions. Both ends are booted first; if they differ, the search keeps `lo` (outcome equal to the
oldest's) and `hi` (different) and halves the versions between them, so N versions cost at most
ceil(log2(N - 1)) + 2 boots. A version whose every case failed to boot (or whose kernel could not
be fetched) is skipped and named, as `git bisect skip` does, and a neighbour is tried instead.
The search finds *a* change: a behaviour that changes twice inside the range (a regression window)
shows one of its changes, or none when the ends agree.

The report gives the two versions and their outcomes, the upstream stable releases between them
(from the changelog shipped in the newer kernel's package), every version booted with its outcome,
and the command lines that reproduce both ends.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .errors import KconformError
from .judging.verdicts import Verdict
from .paths import REPO_ROOT, caller_cwd, caller_path, safe_file_name
from .reports.results import CaseResult, Results, ResultsError, load, writable_directory
from .versions import upstream_version

# pytest's exit statuses a probe reads (pytest.ExitCode, without importing pytest here)
TESTS_RAN = (0, 1)
USAGE_ERROR, NO_TESTS_COLLECTED = 4, 5

SEARCH_NOTE = ("binary search finds *a* change: a behaviour that changes twice inside the range "
               "(a regression window) may show either change, or none if the ends agree")


class BisectError(KconformError):
    """A problem with the command line or the selected cases, found before a search result:
    exit status 2."""


class ProbeRunBroke(KconformError):
    """A child run of the suite ended without results (interrupted, pytest's internal error);
    its message names the child's status. bisect exits 2."""


# ---------------------------------------------------------------------- one version

Outcome = dict[str, object]  # case id (without the kernel) -> observed outcome (JSON), or None


@dataclass
class Probe:
    """What one kernel showed: its observed outcome, or why it was skipped."""
    kernel: str
    version: str | None = None        # the exact package version, e.g. 6.1.176-1
    outcome: Outcome | None = None    # None: skipped (no case got as far as a booted guest)
    skipped: str | None = None        # why, the first line of a case's failure
    boots: int = 0                    # guests booted on it, replacements for lost ones included
    seconds: float = 0.0
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def replacements(self) -> int:
        """Guests booted after the first, to replace one lost to an (expected) hang or crash."""
        return max(0, self.boots - 1)

    def label(self) -> str:
        return f"{self.kernel} ({self.version})" if self.version and self.version not in \
            self.kernel else self.kernel


def did_not_boot(case: CaseResult) -> bool:
    """A case that failed with no observation: its guest never booted (verdict crashed, with the
    boot's console) or its kernel could not be fetched (fail). A guest lost during a case is an
    observation ({"guest": "hang"}), not this."""
    return case.observed is None and case.verdict in (Verdict.CRASHED, Verdict.FAIL)


def probe_from_results(kernel: str, results: Results, seconds: float = 0.0) -> Probe:
    """The probe of one kernel from the results of its run."""
    cases = results.for_kernel(kernel)
    record = results.kernels.get(kernel)
    version = next((c.kernel_version for c in cases if c.kernel_version),
                   record.version if record else None)
    boots = sum(1 for c in cases if c.boot_seconds is not None)
    probe = Probe(kernel=kernel, version=version, boots=boots, seconds=seconds, cases=cases)
    if not cases:
        probe.skipped = "the run recorded no case on it"
    elif boots == 0 and all(did_not_boot(c) for c in cases):
        # a guest that booted and then warned or raised is an outcome worth finding, not a skip
        probe.skipped = next((line for line in cases[0].message.splitlines() if line.strip()),
                             f"every case {cases[0].verdict.label}")
    else:
        probe.outcome = {c.case: c.observed for c in cases}
    probe.boots = max(probe.boots, 1)  # a kernel that never booted was still tried once
    return probe


Prober = Callable[[str], Probe]


class SuiteProber:
    """Probes a kernel by running the suite on it, only the selected cases, in a child pytest
    (as `./kconform suite` runs it) into <results_dir>/<kernel>/."""

    def __init__(self, behaviours: list[str], keyword: str | None, results_dir: Path,
                 progress: TextIO = sys.stderr) -> None:
        self.behaviours, self.keyword = behaviours, keyword
        self.results_dir, self.progress = results_dir, progress
        self.shown: set[str] = set()  # progress lines already shown (the accelerator's, say)

    def selection(self) -> list[str]:
        """The pytest arguments that select the cases (the reproduction lines carry them too)."""
        args = ["--behaviour", ",".join(self.behaviours)] if self.behaviours else []
        return args + (["-k", self.keyword] if self.keyword else [])

    def command(self, kernel: str, out: Path) -> list[str]:
        return [sys.executable, "-m", "pytest", "cases", "--kernel", kernel, *self.selection(),
                "--results-dir", str(out), "-p", "no:cacheprovider", "-q"]

    def __call__(self, kernel: str) -> Probe:
        out = self.results_dir / safe_file_name(kernel)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").unlink(missing_ok=True)  # a stale one must not pass for this run
        log = out / "bisect-run.log"
        start = time.monotonic()
        status = self._run(self.command(kernel, out), log)
        seconds = time.monotonic() - start
        if status == NO_TESTS_COLLECTED:
            raise BisectError(f"no case of the suite is selected on {kernel} by "
                              f"{shlex.join(self.selection())}; name behaviours that cases check "
                              "(the ids of cases/expectations.toml) or a -k that matches case "
                              f"names, not a kernel (the run's output: {log})")
        if status == USAGE_ERROR:
            raise BisectError(f"the suite refused {shlex.join(self.selection())} on {kernel}:\n"
                              f"{_tail(log, 5)}")
        if status not in TESTS_RAN:
            raise ProbeRunBroke(f"the suite on {kernel} ended with status {status} (interrupted, "
                                f"or an internal error); its output is in {log}:\n"
                                f"{_tail(log, 15)}")
        try:
            results = load(out)
        except ResultsError as exc:
            raise ProbeRunBroke(f"the suite on {kernel} left no readable results: {exc}") \
                from None
        return probe_from_results(kernel, results, seconds)

    def _run(self, cmd: list[str], log: Path) -> int:
        """The child's output goes to its log; kconform's own progress lines (downloads, the
        accelerator) are shown as they come, since a download can take minutes."""
        with log.open("w") as sink, subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace") as child:
            assert child.stdout is not None
            try:
                for line in child.stdout:
                    sink.write(line)
                    if line.startswith(("kconform:", "kconform[")) and line not in self.shown:
                        self.shown.add(line)
                        print(f"  {line.rstrip()}", file=self.progress, flush=True)
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it clean up
                child.wait()
                raise
            return child.wait()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text[-lines:])


# ---------------------------------------------------------------------- the search

def boot_bound(versions: int) -> int:
    """Most versions a search over `versions` boots when none is skipped: both ends, then
    halving the N - 1 gaps between them."""
    return 2 + math.ceil(math.log2(versions - 1)) if versions >= 2 else versions


@dataclass
class Bisection:
    kernels: list[str]                               # the range, oldest first
    probes: list[Probe] = field(default_factory=list)  # in the order booted
    older: Probe | None = None  # the change: older's outcome is the oldest end's, newer's not
    newer: Probe | None = None
    untested_between: list[str] = field(default_factory=list)  # skipped between older and newer
    why_none: str = ""          # when no change was found

    @property
    def found(self) -> bool:
        return self.older is not None and self.newer is not None

    @property
    def replacements(self) -> int:
        return sum(p.replacements for p in self.probes)

    @property
    def skipped(self) -> list[Probe]:
        return [p for p in self.probes if p.skipped]


def search(kernels: list[str], probe: Prober,
           say: Callable[[Probe, int], None] = lambda p, n: None) -> Bisection:
    """Binary search for a version whose outcome differs from the version before it.
    say(probe, n) is told of each probe as it finishes (n: how many so far)."""
    if len(kernels) < 2:
        raise BisectError("a bisect needs a range of at least two versions")
    result = Bisection(kernels=list(kernels))
    probes: dict[int, Probe] = {}

    def at(i: int) -> Probe:
        if i not in probes:
            probes[i] = probe(kernels[i])
            result.probes.append(probes[i])
            say(probes[i], len(result.probes))
        return probes[i]

    lo = next((i for i in range(len(kernels)) if not at(i).skipped), None)
    if lo is None:
        result.why_none = "no version in the range booted"
        return result
    hi = next((i for i in range(len(kernels) - 1, lo, -1) if not at(i).skipped), None)
    if hi is None:
        result.why_none = (f"only {kernels[lo]} booted; the others were skipped, so there is "
                           "nothing to compare it with")
        return result
    if at(lo).outcome == at(hi).outcome:
        result.why_none = (f"no change between the ends ({kernels[lo]} and {kernels[hi]} "
                           "observed the same); a change and its revert inside the range would "
                           "not show: bisect a narrower range")
        return result
    while True:
        untested = [i for i in range(lo + 1, hi) if i not in probes]
        if not untested:
            break
        middle = (lo + hi) // 2  # the nearest untested version when the middle one was skipped
        i = min(untested, key=lambda j: (abs(j - middle), j))
        if at(i).skipped:
            continue
        if at(i).outcome == at(lo).outcome:
            lo = i
        else:
            hi = i
    result.older, result.newer = at(lo), at(hi)
    result.untested_between = kernels[lo + 1:hi]
    return result


# ---------------------------------------------------------------------- the changelog

_STABLE = re.compile(r"/ChangeLog-(\d+\.\d+(?:\.\d+)?)\b")


def stable_versions_between(changelog: str, older: str, newer: str) -> list[str]:
    """The upstream stable versions the newer package's changelog names (its entries'
    .../ChangeLog-X lines) after the older package's upstream version, up to the newer's, oldest
    first. Read from the newer package alone: across series (or to a 7.3 package whose history
    holds 7.2 uploads and release candidates) the older package's entry need not be in it."""
    low, high = upstream_version(older), upstream_version(newer)
    named = {v: upstream_version(v) for v in _STABLE.findall(changelog)}
    return sorted((v for v, k in named.items() if low < k <= high), key=lambda v: named[v])


def read_changelog(root: Path | None) -> tuple[Path, str] | None:
    """The Debian changelog a kernel tree's packages ship (the doc directory is named after the
    package: linux-image-<abi>-unsigned, or for 7.x linux-binary-unsigned-<abi> and others)."""
    if root is None:
        return None
    for path in sorted(root.glob("usr/share/doc/*/changelog.Debian.gz")):
        try:
            return path, gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
    return None


ChangelogReader = Callable[[str], tuple[Path, str] | None]


def tree_changelog(kernel: str) -> tuple[Path, str] | None:
    """The changelog in the tree of a kernel the search booted (so its tree is cached; a tree
    pruned meanwhile is fetched again, and says so)."""
    from .kernels import KernelProvider
    provider = KernelProvider(log=lambda message: print(f"kconform bisect: {message}",
                                                        file=sys.stderr, flush=True))
    return read_changelog(provider.get(kernel).root)


# ---------------------------------------------------------------------- the report

def reproduce_line(probe: Probe, selection: list[str]) -> str:
    """The suite on that one version with the same cases; a named kernel is pinned to the version
    it ran, since its current version moves on."""
    kernel = probe.kernel
    if probe.version and "@" not in kernel and "/" not in kernel and kernel != "host":
        kernel = f"{kernel}@{probe.version}"
    return shlex.join(["./kconform", "suite", "--kernel", kernel, *selection])


def _outcome_labels(result: Bisection) -> dict[str, str]:
    """A letter per distinct outcome, in the order first seen: A is the oldest end's."""
    labels: dict[str, str] = {}
    for probe in result.probes:
        if probe.outcome is not None:
            key = _key(probe.outcome)
            labels.setdefault(key, chr(ord("A") + len(labels)) if len(labels) < 26
                              else f"#{len(labels) + 1}")
    return labels


def _key(outcome: Outcome) -> str:
    return json.dumps(outcome, sort_keys=True)


def _shown(observed: object) -> str:
    return "no observation" if observed is None else json.dumps(observed, sort_keys=True)


def render(result: Bisection, selection: list[str],
           changelog: ChangelogReader = tree_changelog) -> str:
    labels = _outcome_labels(result)
    lines: list[str] = []
    order = {name: i for i, name in enumerate(result.kernels)}
    n = len(result.kernels)
    if result.found:
        assert result.older is not None and result.newer is not None
        older, newer = result.older, result.newer
        old, new = older.outcome or {}, newer.outcome or {}
        lines.append(f"kconform bisect: the observed outcome changed between {older.label()} "
                     f"(outcome {labels[_key(old)]}) and {newer.label()} "
                     f"(outcome {labels[_key(new)]})")
        if result.untested_between:
            lines.append(f"  not adjacent: the versions between them did not boot "
                         f"({', '.join(result.untested_between)}); the change is in one of "
                         "them or in the newer one")
        lines.append(f"  ({SEARCH_NOTE})")
        changed = [case for case in dict.fromkeys([*old, *new])
                   if old.get(case) != new.get(case) or (case in old) != (case in new)]
        lines.append(f"cases that changed ({len(changed)} of {len(set(old) | set(new))}):")
        width = max(len(case) for case in changed)
        for case in changed:
            lines.append(f"  {case:{width}}  {_shown(old.get(case))}")
            lines.append(f"  {'':{width}}  -> {_shown(new.get(case))}")
        lines.append(_stable_line(older, newer, changelog))
        lines.append("reproduce both ends:")
        lines += [f"  {reproduce_line(p, selection)}" for p in (older, newer)]
    else:
        lines.append(f"kconform bisect: no change found: {result.why_none}")
    booted = len(result.probes)
    bound = boot_bound(n)
    within = ("within" if booted <= bound else "over") + f" the bound of {bound} for {n} versions"
    if result.skipped:
        within += " (the bound assumes none is skipped)"
    lines.append(f"versions booted: {booted} of {n}, {within}; "
                 f"{result.replacements} replacement boot(s) after a lost guest (an expected "
                 "hang) besides")
    width = max(len(p.kernel) for p in result.probes)
    for probe in sorted(result.probes, key=lambda p: order.get(p.kernel, 0)):
        step = result.probes.index(probe) + 1
        what = f"skipped: {probe.skipped}" if probe.outcome is None \
            else f"outcome {labels[_key(probe.outcome)]}"
        extra = f", {probe.replacements} replacement boot(s)" if probe.replacements else ""
        lines.append(f"  {probe.kernel:{width}}  booted #{step}, {probe.seconds:.0f} s{extra}: "
                     f"{what}")
    lines.append("outcomes:")
    shown: set[str] = set()
    for probe in result.probes:
        if probe.outcome is None or _key(probe.outcome) in shown:
            continue
        key = _key(probe.outcome)
        shown.add(key)
        where = ", ".join(p.kernel for p in sorted(result.probes,
                                                   key=lambda p: order.get(p.kernel, 0))
                          if p.outcome is not None and _key(p.outcome) == key)
        lines.append(f"  {labels[key]} ({where}):")
        width = max((len(case) for case in probe.outcome), default=0)
        lines += [f"    {case:{width}}  {_shown(seen)}" for case, seen in probe.outcome.items()]
    return "\n".join(lines)


_LISTED = 20


def _stable_line(older: Probe, newer: Probe, changelog: ChangelogReader) -> str:
    if not (older.version and newer.version):
        return "upstream stable releases in between: unknown (no package version recorded)"
    try:
        found = changelog(newer.kernel)
    except KconformError as exc:
        return f"upstream stable releases in between: unknown ({exc})"
    if found is None:
        return (f"upstream stable releases in between: unknown ({newer.kernel} ships no "
                "changelog.Debian.gz)")
    path, text = found
    between = stable_versions_between(text, older.version, newer.version)
    listed = ", ".join(between) if between else "none listed"
    if len(between) > 2 * _LISTED:  # a range across series names hundreds
        listed = f"{', '.join(between[:_LISTED])}, ..., {', '.join(between[-_LISTED:])}"
    return (f"upstream stable releases in between ({len(between)}, from "
            f"{path.parent.name}/{path.name} of {newer.version}): {listed}")


# ---------------------------------------------------------------------- the command

def check_behaviours(ids: list[str], known: list[str]) -> None:
    unknown = [bid for bid in ids if bid not in known]
    if unknown:
        raise BisectError(f"unknown behaviour {', '.join(unknown)}: behaviour ids are the [ID] "
                          f"tables of cases/expectations.toml (`grep '^\\[[A-Z]' "
                          f"cases/expectations.toml`, or the README's table): "
                          f"{', '.join(known)}")


def expand_range(value: str) -> list[str]:
    """The versions a --kernel range names, oldest first (the kernels module reads ranges)."""
    from .kernels import expand_kernel_args, load_specs
    if "," in value or not (".." in value or value.endswith("@all")):
        raise BisectError(f"--kernel {value}: bisect takes one range, oldest end first: "
                          "debian-6.1@6.1.170-3..6.1.192-3, debian-6.1@all, or "
                          "debian-5.10..debian-7.3")
    kernels = expand_kernel_args([value], load_specs(), cwd=caller_cwd())
    if len(kernels) < 2:
        raise BisectError(f"--kernel {value} names one kernel ({', '.join(kernels)}); bisect "
                          "needs a range: debian-6.1@6.1.170-3..6.1.192-3, debian-6.1@all, or "
                          "debian-5.10..debian-7.3")
    return kernels


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kconform bisect", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 a change was found, 1 none, 2 a usage error (before anything "
               "boots) or an interrupted run.")
    parser.add_argument("behaviours", nargs="*", metavar="ID",
                        help="behaviour ids to run (U10, E1: the [ID] tables of "
                             "cases/expectations.toml)")
    parser.add_argument("-k", dest="keyword", metavar="EXPR",
                        help="select cases as pytest's -k does (with or without IDs)")
    parser.add_argument("--kernel", required=True, metavar="RANGE",
                        help="the versions: debian-6.1@A..B, debian-6.1@all, or named kernels "
                             "across series, debian-5.10..debian-7.3")
    parser.add_argument("--results-dir", default="results/bisect", metavar="DIR",
                        help="where each version's run goes, DIR/<kernel>/ "
                             "(default: results/bisect)")
    args = parser.parse_args(argv)
    ids = [part.strip() for value in args.behaviours for part in value.split(",") if part.strip()]
    if not ids and not args.keyword:
        parser.error("name the behaviours to bisect: behaviour ids (U10 E1) and/or -k EXPR")
    args.behaviours = ids
    return args


def main(argv: list[str], prober: Prober | None = None,
         changelog: ChangelogReader = tree_changelog, out: TextIO | None = None) -> int:
    args = parse_args(argv)

    def say(probe: Probe, n: int) -> None:
        what = f"skipped ({probe.skipped})" if probe.skipped else "booted"
        print(f"kconform bisect: [{n}] {probe.label()}: {what}, {probe.seconds:.0f} s",
              file=sys.stderr, flush=True)

    try:
        from .judging import expectations
        check_behaviours(args.behaviours, list(expectations.load()))
        kernels = expand_range(args.kernel)
        results_dir = writable_directory(caller_path(args.results_dir).resolve(),
                                         "--results-dir", "give --results-dir a directory you "
                                         "can write")
        suite = SuiteProber(args.behaviours, args.keyword, results_dir)
        print(f"kconform bisect: {len(kernels)} versions, {kernels[0]} .. {kernels[-1]}; at most "
              f"{boot_bound(len(kernels))} boots; each run in {results_dir}/<kernel>/",
              file=sys.stderr, flush=True)
        result = search(kernels, prober or suite, say)
    except ProbeRunBroke as exc:  # its message names the child's own status
        print(f"kconform bisect: {exc}", file=sys.stderr)
        return 2
    except KconformError as exc:
        print(f"kconform bisect: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kconform bisect: interrupted", file=sys.stderr)
        return 2
    print(render(result, suite.selection(), changelog), file=out or sys.stdout)
    return 0 if result.found else 1
