"""Kernel-to-kernel comparison: the behaviours whose observed outcome differs between two kernels.

A case *regressed* when its verdict on the new kernel is fail or crashed where it was pass or
expected-difference on the base kernel: the new kernel breaks a documented behaviour that the
base kernel kept. Observed differences that both kernels' expectations account for (an older
kernel's expected difference) are listed but are not regressions; neither are fixes (bad -> good)
or cases failing on both kernels. Cases are matched by their kernel-free id, so a sockmap
variant is compared with the same sockmap variant; skipped cases are not compared. Nor are flaky
ones (--rerun-failed: failed, then passed on a fresh guest): one run of theirs is no evidence of
what the kernel does, so a flaky case is never a regression, nor a fix; each is listed under the
side it was flaky on ("flaky on NEW: ...").

The two sides may be one kernel name at two versions (two runs of debian-6.1 a month apart, each
at the version current then): the report then names them by their versions. They may also be one
kernel version on two architectures (debian-6.12 and debian-6.12-arm64): the same source built
for another CPU, with another BPF JIT, so any difference is one to explain. The report then says
"amd64 -> arm64", names the sides by their architectures, and shows the guests' JIT states when
they differ (an interpreter on one side changes what a difference means).

Redirect-matrix cases (R7-R10, 576 per kernel) are compared the same way, but a change of theirs
that both kernels' expectations account for is not listed case by case: the report names the
combinations whose observed outcome changed, grouped by table and by change (support.py), so a
new kernel's support table reads as a short list of what it now does otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..judging.verdicts import Verdict
from . import support
from .grid import LABELS, observed_signature
from .results import CaseResult, KernelRecord, Results, ResultsError, load

REGRESSION = "REGRESSION"
FIXED = "fixed"
STILL_FAILING = "still failing, observed outcome changed"
AS_DOCUMENTED = "changed as documented"
# a behaviour with several differing cases is listed under its most serious kind
RANK = {REGRESSION: 0, FIXED: 1, STILL_FAILING: 2, AS_DOCUMENTED: 3}


@dataclass
class Side:
    results: Results
    kernel: str
    origin: str

    @property
    def version(self) -> str:
        return self.results.kernels[self.kernel].version or "version unknown"

    @property
    def label(self) -> str:
        return f"{self.kernel} ({self.version})"

    @property
    def record(self) -> KernelRecord:
        return self.results.kernels[self.kernel]

    @property
    def arch(self) -> str:
        return self.record.architecture

    def cases(self) -> dict[str, CaseResult]:
        """This kernel's cases by their kernel-free id (file::case): the same case on any kernel."""
        return {f"{c.file}::{c.case}": c for c in self.results.cases if c.kernel == self.kernel}


@dataclass
class Difference:
    kind: str
    base: CaseResult
    new: CaseResult


@dataclass
class Comparison:
    base: Side
    new: Side
    differences: list[Difference] = field(default_factory=list)
    compared: int = 0
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    skipped: int = 0
    compared_pairs: list[tuple[CaseResult, CaseResult]] = field(default_factory=list)
    # (base, new) of the cases flaky on either side: listed, not compared
    flaky: list[tuple[CaseResult, CaseResult]] = field(default_factory=list)

    @property
    def one_name(self) -> bool:
        """Both sides are one kernel name at two versions."""
        return self.base.kernel == self.new.kernel and self.base.version != self.new.version

    @property
    def across_arch(self) -> bool:
        """The sides ran on two architectures (amd64 and arm64 builds of one kernel, say)."""
        return self.base.arch != self.new.arch

    @property
    def one_version(self) -> bool:
        """Both sides are one package version: what differs is the architecture alone."""
        return self.across_arch and self.base.version == self.new.version

    def shown(self, side: Side) -> str:
        """How the report names a side: its kernel, its version when both share the name, or its
        architecture when that is all they differ by."""
        if self.one_name:
            return side.version
        return side.arch if self.one_version else side.kernel

    @property
    def title(self) -> str:
        if self.one_name:
            return f"{self.base.kernel} {self.base.version} -> {self.new.version}"
        arches = f"{self.base.arch} -> {self.new.arch}"
        if self.one_version:
            return f"{self.base.version} {arches} ({self.base.kernel} -> {self.new.kernel})"
        return f"base {self.base.label} -> new {self.new.label}" + \
            (f", {arches}" if self.across_arch else "")

    @property
    def jit_difference(self) -> str | None:
        """Each side's BPF JIT state, when the two differ."""
        base, new = self.base.record, self.new.record
        if base.bpf_jit_enable == new.bpf_jit_enable:
            return None
        return (f"BPF JIT (net.core.bpf_jit_enable) differs: {self.shown(self.base)} {base.jit}, "
                f"{self.shown(self.new)} {new.jit}")

    @property
    def regressions(self) -> list[Difference]:
        return [d for d in self.differences if d.kind == REGRESSION]

    def by_behaviour(self, listed_only: bool = False) -> list[tuple[str, list[Difference]]]:
        """The differences by behaviour, most serious first; listed_only: without those the
        matrix's changed combinations stand for."""
        groups: dict[str, list[Difference]] = {}
        for diff in self.differences:
            if listed_only and not listed(diff):
                continue
            key = diff.new.behaviour or diff.new.case.split("[", 1)[0]
            groups.setdefault(key, []).append(diff)
        return sorted(groups.items(), key=lambda kv: (min(RANK[d.kind] for d in kv[1]), kv[0]))


def listed(diff: Difference) -> bool:
    """Whether the report lists this difference as a case: all but a matrix case's documented
    change, which its changed combination names."""
    return not (diff.kind == AS_DOCUMENTED and support.observed_cell(diff.base)
                and support.observed_cell(diff.new))


def classify(base: CaseResult, new: CaseResult) -> str | None:
    if base.verdict.good and new.verdict.bad:
        return REGRESSION
    if base.verdict.bad and new.verdict.good:
        return FIXED
    if observed_signature(base) == observed_signature(new):
        return None
    return STILL_FAILING if new.verdict.bad else AS_DOCUMENTED


def compare(base: Side, new: Side) -> Comparison:
    result = Comparison(base, new)
    base_cases, new_cases = base.cases(), new.cases()
    result.only_base = sorted(base_cases[c].case for c in base_cases.keys() - new_cases.keys())
    result.only_new = sorted(new_cases[c].case for c in new_cases.keys() - base_cases.keys())
    for case in sorted(base_cases.keys() & new_cases.keys()):
        b, n = base_cases[case], new_cases[case]
        if Verdict.FLAKY in (b.verdict, n.verdict):
            result.flaky.append((b, n))
            continue
        if Verdict.SKIPPED in (b.verdict, n.verdict):
            result.skipped += 1
            continue
        result.compared += 1
        result.compared_pairs.append((b, n))
        kind = classify(b, n)
        if kind:
            result.differences.append(Difference(kind, b, n))
    return result


def sides(paths: list[str], base: str | None = None, new: str | None = None) -> tuple[Side, Side]:
    """Two sides from one results file holding both kernels, or from two files (base, new)."""
    if len(paths) == 1:
        results = load(paths[0])
        kernels = results.kernel_order()
        if not (base and new) and len(kernels) != 2:
            raise ResultsError(f"{paths[0]} holds kernels {', '.join(kernels) or 'none'}: name the "
                               "two to compare with --base and --new")
        if base and base == new:
            raise ResultsError(f"--base and --new both name {base}: one results file holds each "
                               "kernel once, so this would compare it with itself twice over; "
                               f"name two of {', '.join(kernels)}")
        # both named, or the file holds exactly two kernels: the other one always exists
        base = base or next(k for k in kernels if k != new)
        new = new or next(k for k in kernels if k != base)
        return _side(results, base, paths[0]), _side(results, new, paths[0])
    if len(paths) == 2:
        first, second = load(paths[0]), load(paths[1])
        return _side(first, base or _only(first, paths[0], "--base"), paths[0]), \
            _side(second, new or _only(second, paths[1], "--new"), paths[1])
    raise ResultsError("compare takes one results file holding two kernels, or two files "
                       f"(base first); got {len(paths)}")


def _only(results: Results, origin: str, option: str) -> str:
    kernels = results.kernel_order()
    if len(kernels) != 1:
        raise ResultsError(f"{origin} holds kernels {', '.join(kernels) or 'none'}: choose one "
                           f"with {option}")
    return kernels[0]


def _side(results: Results, kernel: str, origin: str) -> Side:
    if kernel not in results.kernels:
        raise ResultsError(f"{origin} has no results for kernel {kernel!r}; it holds "
                           f"{', '.join(results.kernel_order()) or 'no kernel'}")
    return Side(results, kernel, origin)


def _observed(case: CaseResult) -> str:
    if case.observed is not None:
        return observed_signature(case)
    return {Verdict.CRASHED: "nothing: the guest crashed",
            Verdict.FAIL: "nothing: the case failed before observing"}.get(case.verdict, "nothing")


def render(result: Comparison) -> str:
    base, new = result.base, result.new
    counts = {kind: sum(1 for d in result.differences if d.kind == kind) for kind in RANK}
    out = [f"kconform compare: {result.title}",
           (f"{result.compared} cases compared; {len(result.differences)} differ: "
           f"{counts[REGRESSION]} regressed, {counts[FIXED]} fixed, "
           f"{counts[AS_DOCUMENTED]} changed as documented, {counts[STILL_FAILING]} still failing")]
    if result.jit_difference:
        out.append(result.jit_difference)
    if result.skipped:
        out.append(f"{result.skipped} cases skipped on one of the kernels (not compared)")
    out += flaky_lines(result.shown(base), [(b, result.shown(new), n) for b, n in result.flaky
                                            if b.verdict == Verdict.FLAKY])
    out += flaky_lines(result.shown(new), [(n, result.shown(base), b) for b, n in result.flaky
                                           if n.verdict == Verdict.FLAKY])
    for name, only in ((result.shown(base), result.only_base),
                       (result.shown(new), result.only_new)):
        if only:
            out.append(f"{len(only)} cases ran only on {name}: {', '.join(only[:5])}"
                       + (" ..." if len(only) > 5 else ""))
    width = max(len(result.shown(base)), len(result.shown(new)))
    for behaviour, diffs in result.by_behaviour(listed_only=True):
        kind = min((d.kind for d in diffs), key=RANK.__getitem__)
        title = diffs[0].new.title or ""
        out += ["", f"{kind}: {behaviour} {title}".rstrip()]
        if diffs[0].new.section:
            out.append(f"  doc: map_sockmap.rst, {diffs[0].new.section}")
        mixed = len({d.kind for d in diffs}) > 1
        for diff in diffs:
            out.append(f"  case {diff.new.case}" + (f" ({diff.kind})" if mixed else ""))
            for tag, side, case in (("base", base, diff.base), ("new ", new, diff.new)):
                line = (f"    {tag} {result.shown(side):<{width}}  {LABELS[case.verdict]:<20} "
                        f"observed {_observed(case)}")
                out.append(line)
                if case.reason and case.verdict == Verdict.EXPECTED_DIFFERENCE:
                    out.append(f"    {'':{len(tag) + width + 1}}  why: {case.reason} "
                               f"(source: {case.source})")
            if diff.new.verdict.bad:
                out.append(f"    rerun: {diff.new.reproduce}")
    matrix = support.changes(result.compared_pairs,
                             {**base.results.behaviours, **new.results.behaviours})
    if matrix.compared:
        out += ["", *matrix_lines(matrix)]
    regressed = [b for b, diffs in result.by_behaviour()
                 if any(d.kind == REGRESSION for d in diffs)]
    on = (f"{new.kernel} {new.version} against {base.version}" if result.one_name
          else f"{new.kernel} ({new.arch}) against {base.kernel} ({base.arch})"
          if result.across_arch else f"{new.kernel} against {base.kernel}")
    out += ["", f"{len(regressed)} behaviour(s) regressed on {on}"
            + (f": {', '.join(regressed)}" if regressed else "")]
    return "\n".join(out)


def flaky_lines(side: str, flaky: list[tuple[CaseResult, str, CaseResult]]) -> list[str]:
    """'flaky on debian-6.1: 1 case ...', then each case with how often it failed and what the
    other side's case came to: listed, never a regression (README, --rerun-failed)."""
    if not flaky:
        return []
    out = [(f"flaky on {side}: {len(flaky)} case{'s' if len(flaky) > 1 else ''} failed, then "
            "passed on a fresh guest (not compared, never a regression)")]
    for case, other_side, other in flaky:
        runs = len(case.attempts) + 1
        out.append(f"  {case.behaviour or '-'} {case.case}: failed {runs - 1} of {runs} runs "
                   f"({other_side}: {LABELS[other.verdict]}); rerun: {case.reproduce}")
    return out


def matrix_lines(found: support.Changes) -> list[str]:
    """The changed combinations, compact: per table and change of outcome (and the maps it holds
    for, unless every map changed alike), the sources that changed towards the same targets on
    one line: "tcp4, tcp6 -> udp4, udp6"."""
    if not found.changes:
        return [(f"redirect matrix: none of the {found.compared} combinations observed on both "
                 "kernels changed")]
    out = [(f"redirect matrix: {found.changed} of the {found.compared} combinations observed on "
            "both kernels changed (sockmap and sockhash alike unless one is named)")]
    tables: dict[tuple[str, str, str], list[support.Change]] = {}
    for change in found.changes:
        tables.setdefault((change.behaviour, change.program, change.direction), []).append(change)
    for (bid, program, direction), changes in tables.items():
        out.append(f"  {bid} {program} {direction}: {sum(len(c.maps) for c in changes)} changed")
        kinds: dict[tuple[tuple[str, ...], str, str], dict[str, list[str]]] = {}
        for change in changes:
            maps = () if change.every_map else change.maps
            kinds.setdefault((maps, change.before, change.after), {}) \
                .setdefault(change.source, []).append(change.target)
        for (maps, before, after), by_source in kinds.items():
            what = f"{before} → {after}" if before != after \
                else f"{before} on both, observed otherwise"
            out.append(f"    {' '.join(maps) + ': ' if maps else ''}{what}")
            sources: dict[tuple[str, ...], list[str]] = {}
            for source, source_targets in by_source.items():
                sources.setdefault(tuple(source_targets), []).append(source)
            for targets, names in sources.items():
                out.append(f"      {_kinds(names, found.sources[bid], 'source')} → "
                           f"{_kinds(list(targets), found.targets[bid], 'target')}")
    return out


def _kinds(kinds: list[str], every: list[str], what: str) -> str:
    return f"every {what}" if kinds == every else ", ".join(kinds)
