"""Expectations as data: for each behaviour, what each kernel version should do, and why.

cases/expectations.toml holds one table per behaviour id (the ids of shared/spec/behaviours.md).
Each behaviour lists outcomes with version bounds; exactly one must apply to a kernel. The outcome
that applies to the newest kernels is the documented one; an older outcome that applies is an
*expected difference* and is asserted just the same (it is not a skip).

Version bounds follow stable-kernel practice: "6.7" means every kernel from 6.7 on; "6.1.72" means
6.1.72 and later 6.1.y only (a backport). A list means any of them.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .kernels import parse_upstream_version
from .paths import REPO_ROOT

DEFAULT_FILE = REPO_ROOT / "cases" / "expectations.toml"

PASS = "pass"
EXPECTED_DIFFERENCE = "expected-difference"
FAIL = "fail"
CRASHED = "crashed"
SKIPPED = "skipped"


def _versions(value) -> list[tuple[int, ...]]:
    if value is None:
        return []
    return [parse_upstream_version(v) for v in ([value] if isinstance(value, str) else value)]


def has_change(version: tuple[int, ...], bounds: list[tuple[int, ...]]) -> bool:
    """True if a kernel at `version` contains a change that landed at any of `bounds`."""
    for bound in bounds:
        mainline = len(bound) < 3 or bound[2] == 0
        if mainline and version >= bound:
            return True
        if not mainline and version[:2] == bound[:2] and version >= bound:
            return True
    return False


@dataclass(frozen=True)
class Outcome:
    expect: dict
    source: str
    since: tuple = ()
    until: tuple = ()
    reason: str = ""
    differs_from_doc: bool = False
    # A known bug of some stable releases (since/until name that window): where it applies it
    # overrides the outcome the other bounds give, so those need not carve the window out.
    regression: bool = False

    def applies(self, version: tuple[int, ...]) -> bool:
        if self.since and not has_change(version, list(self.since)):
            return False
        if self.until and has_change(version, list(self.until)):
            return False
        return True

    @property
    def documented(self) -> bool:
        """The doc's behaviour: the newest outcome, unless the kernel is known to disagree with
        the doc's text (then it is an expected difference on every kernel it applies to)."""
        return not self.until and not self.differs_from_doc and not self.regression


@dataclass(frozen=True)
class Behaviour:
    id: str
    title: str
    section: str
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)

    @property
    def may_lose_the_guest(self) -> bool:
        """Some kernel is expected to hang or crash on it ({"guest": "hang"} in an outcome)."""
        def lost(expect) -> bool:
            return "guest" in expect or any(isinstance(v, dict) and lost(v)
                                            for v in expect.values())
        return any(lost(o.expect) for o in self.outcomes)

    def outcome_for(self, version: tuple[int, ...]) -> Outcome:
        matches = [o for o in self.outcomes if o.applies(version)]
        if len(matches) > 1 and sum(o.regression for o in matches) == 1:
            return next(o for o in matches if o.regression)
        if len(matches) != 1:
            raise ValueError(f"{self.id}: {len(matches)} outcomes apply to "
                             f"{'.'.join(map(str, version))}; the bounds must not overlap or leave gaps")
        return matches[0]


def load(path: Path = DEFAULT_FILE) -> dict[str, Behaviour]:
    data = tomllib.loads(Path(path).read_text())
    behaviours = {}
    for bid, table in data.items():
        outcomes = []
        for o in table["outcomes"]:
            if not o.get("source"):
                raise ValueError(f"{path}: {bid}: every outcome needs a source")
            outcomes.append(Outcome(expect=o["expect"], source=o["source"],
                                    since=tuple(_versions(o.get("since"))),
                                    until=tuple(_versions(o.get("until"))),
                                    reason=o.get("reason", ""),
                                    differs_from_doc=bool(o.get("differs_from_doc", False)),
                                    regression=bool(o.get("regression", False))))
            last = outcomes[-1]
            if last.regression and not last.since:
                raise ValueError(f"{path}: {bid}: a regression outcome needs since = (its window)")
            if (last.until or last.differs_from_doc or last.regression) and not last.reason:
                raise ValueError(f"{path}: {bid}: an outcome that differs from the doc "
                                 "(until = or differs_from_doc =) needs a reason")
        behaviours[bid] = Behaviour(id=bid, title=table["title"], section=table["section"],
                                    outcomes=tuple(outcomes))
    return behaviours


@dataclass
class Verdict:
    behaviour: Behaviour
    variant: str | None
    expected: dict
    observed: dict
    outcome: Outcome
    verdict: str
    mismatches: dict

    def message(self, kernel: str, version: str) -> str:
        lines = [f"{self.behaviour.id} {self.behaviour.title}"
                 + (f" [{self.variant}]" if self.variant else ""),
                 f"  kernel:   {kernel} ({version})",
                 f"  expected: {self.expected}", f"  observed: {self.observed}",
                 f"  source:   {self.outcome.source}",
                 f"  doc:      map_sockmap.rst, {self.behaviour.section}"]
        for key, (want, got) in self.mismatches.items():
            lines.append(f"  mismatch: {key}: expected {want!r}, observed {got!r}")
        return "\n".join(lines)


def judge(behaviour: Behaviour, version: tuple[int, ...], observed: dict,
          variant: str | None = None) -> Verdict:
    outcome = behaviour.outcome_for(version)
    expected = outcome.expect
    if variant is not None and isinstance(expected.get(variant), dict):
        expected = expected[variant]  # per-variant table, e.g. sockmap vs sockhash
    mismatches = {k: (v, observed.get(k, "<missing>")) for k, v in expected.items()
                  if observed.get(k, "<missing>") != v}
    if mismatches:
        verdict = FAIL
    elif outcome.documented or any(o.documented and o.expect == outcome.expect
                                   for o in behaviour.outcomes):
        # An older outcome that predicts what the doc says (e.g. a check that was dropped and
        # later restored) is no difference from the doc's point of view.
        verdict = PASS
    else:
        verdict = EXPECTED_DIFFERENCE
    return Verdict(behaviour, variant, expected, observed, outcome, verdict, mismatches)
