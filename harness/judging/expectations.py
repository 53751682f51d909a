"""Expectations as data: for each behaviour, what each kernel version should do, and why.

cases/expectations.toml holds one table per behaviour id (the ids of shared/spec/behaviours.md).
Each behaviour lists outcomes with version bounds; exactly one must apply to a kernel. The outcome
that applies to the newest kernels is the documented one; an older outcome that applies is an
*expected difference* and is asserted just the same (it is not a skip).

Version bounds follow stable-kernel practice: "6.7" means every kernel from 6.7 on; "6.1.72" means
6.1.72 and later 6.1.y only (a backport). A list means any of them.

A release candidate is judged as the release it precedes, before it: 7.3-rc7 (package
7.3~rc7-1~exp1, uname 7.3-rc7-amd64 or 7.3.0-rc7-amd64) comes after every 7.2.y and before 7.3,
so since = "7.3" does not apply to it and until = "7.3" does. A bound may name a release
candidate itself, since = "7.3-rc7", for a change that landed during the merge window's rcs.
"""
from __future__ import annotations

import datetime
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KconformError
from ..paths import REPO_ROOT
from ..versions import UpstreamVersion, as_upstream, bound_version, dotted, in_window
from . import support_table
from .verdicts import Verdict

DEFAULT_FILE = REPO_ROOT / "cases" / "expectations.toml"


class ExpectationsError(KconformError, ValueError):
    """A bad expectations file, or bounds that leave a kernel with no outcome or with several."""


BEHAVIOUR_FIELDS = ("title", "section", "outcomes", "support_table")
SUPPORT_TABLE_FIELDS = ("file", "program", "direction")
OUTCOME_FIELDS = ("expect", "source", "since", "until", "reason", "differs_from_doc", "regression")


def _versions(value: str | list[str] | None) -> list[tuple[int, ...]]:
    if value is None:
        return []
    return [bound_version(v) for v in ([value] if isinstance(value, str) else value)]


@dataclass(frozen=True)
class Outcome:
    expect: dict[str, object]        # observations, or per-variant tables of them
    source: str
    since: tuple[tuple[int, ...], ...] = ()
    until: tuple[tuple[int, ...], ...] = ()
    reason: str = ""
    differs_from_doc: bool = False
    # A known bug of some stable releases (since/until name that window): where it applies it
    # overrides the outcome the other bounds give, so those need not carve the window out.
    regression: bool = False

    def applies(self, version: tuple[int, ...]) -> bool:
        return in_window(version, self.since, self.until)

    @property
    def documented(self) -> bool:
        """The doc's behaviour: the newest outcome, unless the kernel is known to disagree with
        the doc's text (then it is an expected difference on every kernel it applies to)."""
        return not self.until and not self.differs_from_doc and not self.regression


@dataclass(frozen=True)
class Matrix:
    """A behaviour whose outcomes come from a support table: one program and direction of it,
    each variant a combination ("sockhash-udp6-unix_dgram")."""
    table: support_table.SupportTable
    program: str
    direction: str

    def combinations(self) -> list[support_table.Combination]:
        return self.table.combinations(self.program, self.direction)

    def outcome(self, version: tuple[int, ...], variant: str) -> Outcome:
        combo = self.table.combination(self.program, self.direction, variant)
        expected = self.table.expected(combo, version)
        rule = expected.rule
        return Outcome(expect=expected.observations, source=f"rule {rule.id}: {expected.source}",
                       since=rule.since, until=rule.until,
                       reason=rule.reason, differs_from_doc=not expected.documented)

    def cell(self, version: tuple[int, ...], variant: str,
             observed: dict[str, object]) -> dict[str, object]:
        """What the reports' support table shows of one judged combination."""
        combo = self.table.combination(self.program, self.direction, variant)
        rule = self.table.rule_for(combo, version)
        return {"map": combo.map, "program": combo.program, "direction": combo.direction,
                "source": combo.source, "target": combo.target,
                "outcome": support_table.observed_outcome(observed, self.program,
                                                          self.direction),
                "expected": rule.outcome, "rule": rule.id}

    def check(self) -> None:
        """Every combination has an outcome at every kernel where a rule changes."""
        points = {(0, 0, 0, 0)}
        for bounds in [(*r.since, *r.until) for r in self.table.rules] + \
                [(*o.since, *o.until) for o in self.table.oob_rules]:
            for bound in map(as_upstream, bounds):
                points |= {bound, (bound[0], bound[1] + 1, 0, 1)}
        for version in points:
            for combo in self.combinations():
                self.table.expected(combo, version)


@dataclass(frozen=True)
class Behaviour:
    id: str
    title: str
    section: str
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)
    matrix: Matrix | None = None

    @property
    def may_lose_the_guest(self) -> bool:
        """Some kernel is expected to hang or crash on it ({"guest": "hang"} in an outcome)."""
        def lost(expect: dict[str, object]) -> bool:
            return "guest" in expect or any(isinstance(v, dict) and lost(v)
                                            for v in expect.values())
        return any(lost(o.expect) for o in self.outcomes)

    @property
    def floor(self) -> UpstreamVersion:
        """The oldest kernel any outcome covers."""
        oldest = (0, 0, 0, 0)
        return min(((min(map(as_upstream, o.since)) if o.since else oldest)
                    for o in self.outcomes), default=oldest)

    def outcome_for(self, version: tuple[int, ...], variant: str | None = None) -> Outcome:
        if self.matrix is not None:
            if variant is None:
                raise ExpectationsError(f"{self.id}: a support-table behaviour is judged per "
                                        "combination; give the variant (MAP-SOURCE-TARGET)")
            return self.matrix.outcome(version, variant)
        version = as_upstream(version)
        matches = [o for o in self.outcomes if o.applies(version)]
        if len(matches) > 1 and sum(o.regression for o in matches) == 1:
            return next(o for o in matches if o.regression)
        floor = self.floor
        if not matches and version < floor:
            raise ExpectationsError(
                f"{self.id}: 0 outcomes apply to {dotted(version)}: the expectations "
                f"start at {dotted(floor)} (the oldest since =); add an outcome for "
                "older kernels, or run a newer kernel")
        if len(matches) != 1:
            raise ExpectationsError(f"{self.id}: {len(matches)} outcomes apply to "
                                    f"{dotted(version)}; the bounds must not overlap "
                                    "or leave gaps")
        return matches[0]

    def check_bounds(self) -> None:
        """Exactly one outcome applies to every kernel from the oldest any outcome covers on.
        Which outcomes apply changes only at a bound (and, for a stable bound such as 6.1.72,
        where its series ends: at the next series' first rc, which a mainline bound such as 6.2
        does not cover), so checking those versions checks them all."""
        floor = self.floor
        points = {floor}  # older kernels are not covered, which outcome_for says as such
        for outcome in self.outcomes:
            for bound in map(as_upstream, (*outcome.since, *outcome.until)):
                points.add(bound)
                if bound[2] != 0:
                    points.add((bound[0], bound[1] + 1, 0, 1))
        for version in sorted(p for p in points if p >= floor):
            self.outcome_for(version)


def _problem(path: Path, where: str, what: str) -> ExpectationsError:
    return ExpectationsError(f"{path}: {where}: {what}")


def _bounds(path: Path, where: str, name: str, value: object) -> tuple[tuple[int, ...], ...]:
    if value is None:
        return ()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise _problem(path, where, f"{name} = {value!r} is a number; quote it, "
                       f"{name} = \"{value}\" (as a number 5.10 would read as 5.1)")
    if not (isinstance(value, str) or (isinstance(value, list) and value
                                       and all(isinstance(v, str) for v in value))):
        raise _problem(path, where, f"{name} = {value!r} is not a version or a list of versions; "
                       f"write {name} = \"6.1\" or {name} = [\"6.7\", \"6.1.72\"]")
    try:
        return tuple(_versions(value))
    except ValueError as exc:
        raise _problem(path, where, f"{name}: {exc}; write {name} = \"6.1\" (mainline on), "
                       "\"6.1.72\" (that stable series on) or \"7.3-rc7\" (from that rc on)"
                       ) from None


def _plain_data(value: object) -> bool:
    """TOML values a guest's JSON observation can equal (no dates or times)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_data(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_data(v) for v in value)
    return not isinstance(value, (datetime.date, datetime.time))


def _outcome(path: Path, where: str, data: object) -> Outcome:
    if not isinstance(data, dict):
        raise _problem(path, where, "is not a table; write it as [[ID.outcomes]] with expect = "
                       "{ ... } and source = \"...\"")
    unknown = sorted(set(data) - set(OUTCOME_FIELDS))
    if unknown:
        raise _problem(path, where, f"unknown field {unknown[0]!r}; an outcome has "
                       f"{', '.join(OUTCOME_FIELDS)}")
    expect = data.get("expect")
    if not isinstance(expect, dict) or not _plain_data(expect):
        raise _problem(path, where, f"expect = {expect!r} is not a table of observations; write "
                       "expect = { update = \"OK\" } (no dates or times)")
    # An empty table asks nothing of the kernel: every observation would pass it.
    if not expect:
        raise _problem(path, where, "expect = {} checks nothing, so every kernel would pass; "
                       "write the observations, e.g. expect = { update = \"OK\" }")
    empty = sorted(k for k, v in expect.items() if isinstance(v, dict) and not v)
    if empty:
        raise _problem(path, where, f"expect.{empty[0]} = {{}} checks nothing, so that variant "
                       f"would always pass; write its observations, e.g. {empty[0]} = "
                       "{ update = \"OK\" }")
    source = data.get("source")
    if not isinstance(source, str) or not source.strip():
        raise _problem(path, where, "every outcome needs a source: add source = \"...\" saying "
                       "who says the kernel does this (the doc, a commit, behaviours.md)")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise _problem(path, where, f"reason = {reason!r} is not a string; write reason = \"...\"")
    flags: dict[str, bool] = {}
    for name in ("differs_from_doc", "regression"):
        flag = data.get(name, False)
        if not isinstance(flag, bool):
            raise _problem(path, where, f"{name} = {flag!r} is not true or false")
        flags[name] = flag
    outcome = Outcome(expect=expect, source=source, since=_bounds(path, where, "since",
                                                                  data.get("since")),
                      until=_bounds(path, where, "until", data.get("until")), reason=reason,
                      differs_from_doc=flags["differs_from_doc"], regression=flags["regression"])
    if outcome.regression and not outcome.since:
        raise _problem(path, where, "a regression outcome needs since = (its window)")
    if (outcome.until or outcome.differs_from_doc or outcome.regression) and not reason.strip():
        raise _problem(path, where, "an outcome that differs from the doc (until = or "
                       "differs_from_doc =) needs a reason")
    return outcome


def _matrix(path: Path, bid: str, table: dict[str, object],
            tables: dict[Path, support_table.SupportTable]) -> Matrix:
    spec = table["support_table"]
    if "outcomes" in table:
        raise _problem(path, bid, "has both outcomes and support_table; a behaviour takes its "
                       "outcomes from one of them")
    if not isinstance(spec, dict) or sorted(spec) != sorted(SUPPORT_TABLE_FIELDS):
        raise _problem(path, bid, "support_table = { file = \"redirect_support.toml\", program "
                       "= \"sk_skb\", direction = \"ingress\" } (a file beside this one)")
    program, direction, name = spec["program"], spec["direction"], spec["file"]
    if program not in support_table.PROGRAMS or direction not in support_table.DIRECTIONS:
        raise _problem(path, bid, f"support_table: program is one of "
                       f"{', '.join(support_table.PROGRAMS)} and direction one of "
                       f"{', '.join(support_table.DIRECTIONS)}")
    file = path.parent / str(name)
    if not file.exists() and (DEFAULT_FILE.parent / str(name)).exists():
        file = DEFAULT_FILE.parent / str(name)  # a copy of the expectations keeps the suite's
    try:
        if file not in tables:
            tables[file] = support_table.load(file)
        matrix = Matrix(tables[file], str(program), str(direction))
        matrix.check()
    except support_table.SupportTableError as exc:
        raise _problem(path, bid, str(exc)) from None
    return matrix


def _behaviour(path: Path, bid: str, table: object,
               tables: dict[Path, support_table.SupportTable]) -> Behaviour:
    if not isinstance(table, dict):
        raise _problem(path, bid, "is not a table; write [ID] with title, section and "
                       "[[ID.outcomes]]")
    unknown = sorted(set(table) - set(BEHAVIOUR_FIELDS))
    if unknown:
        raise _problem(path, bid, f"unknown field {unknown[0]!r}; a behaviour has "
                       f"{', '.join(BEHAVIOUR_FIELDS)}")
    for name in ("title", "section"):
        value = table.get(name)
        if not isinstance(value, str) or not value.strip():
            raise _problem(path, bid, f"needs a {name}: add {name} = \"...\" "
                           + ("(what the kernel does)" if name == "title"
                              else "(the map_sockmap.rst section it documents)"))
    if "support_table" in table:
        return Behaviour(id=bid, title=table["title"], section=table["section"],
                         matrix=_matrix(path, bid, table, tables))
    outcomes = table.get("outcomes")
    if not isinstance(outcomes, list) or not outcomes:
        raise _problem(path, bid, "has no outcomes: add at least one [[" + bid + ".outcomes]] "
                       "table with expect and source")
    behaviour = Behaviour(id=bid, title=table["title"], section=table["section"],
                          outcomes=tuple(_outcome(path, f"{bid} outcome {i + 1}", o)
                                         for i, o in enumerate(outcomes)))
    try:
        behaviour.check_bounds()
    except ExpectationsError as exc:
        raise ExpectationsError(f"{path}: {exc}: make each version fall in exactly one outcome's "
                                "since/until window (or mark one regression = true)") from None
    return behaviour


def load(path: Path = DEFAULT_FILE) -> dict[str, Behaviour]:
    """Read and check an expectations file: every problem is an ExpectationsError naming the
    file, the behaviour and the field, found before any kernel boots."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExpectationsError(f"{path}: no such expectations file; give --expectations an "
                                f"existing file (the suite's own is {DEFAULT_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExpectationsError(f"{path}: cannot read the expectations ({exc}); make it a "
                                "readable UTF-8 TOML file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExpectationsError(f"{path}: not valid TOML ({exc}); fix the file") from None
    if not data:
        raise ExpectationsError(f"{path}: holds no behaviours; each is a table [ID] with title, "
                                "section and [[ID.outcomes]]")
    tables: dict[Path, support_table.SupportTable] = {}  # one file serves several behaviours
    return {bid: _behaviour(path, bid, table, tables) for bid, table in data.items()}


@dataclass
class Judgement:
    """One observation held against the outcome that applies to the kernel."""
    behaviour: Behaviour
    variant: str | None
    expected: dict[str, object]
    observed: dict[str, object]
    outcome: Outcome
    verdict: Verdict
    mismatches: dict[str, tuple[object, object]]  # observation -> (expected, observed)

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


def judge(behaviour: Behaviour, version: tuple[int, ...], observed: dict[str, object],
          variant: str | None = None) -> Judgement:
    outcome = behaviour.outcome_for(version, variant if behaviour.matrix else None)
    expected = outcome.expect
    per_variant = expected.get(variant) if variant is not None else None
    if behaviour.matrix is None and isinstance(per_variant, dict):
        expected = per_variant  # per-variant table, e.g. sockmap vs sockhash
    mismatches = {k: (v, observed.get(k, "<missing>")) for k, v in expected.items()
                  if observed.get(k, "<missing>") != v}
    if mismatches:
        verdict = Verdict.FAIL
    elif outcome.documented or any(o.documented and o.expect == outcome.expect
                                   for o in behaviour.outcomes):
        # An older outcome that predicts what the doc says (e.g. a check that was dropped and
        # later restored) is no difference from the doc's point of view.
        verdict = Verdict.PASS
    else:
        verdict = Verdict.EXPECTED_DIFFERENCE
    return Judgement(behaviour, variant, expected, observed, outcome, verdict, mismatches)
