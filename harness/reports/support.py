"""The redirect support tables: per kernel, program and direction, what a redirect from each
source kind to each target kind did, and the combinations whose outcome changed between kernels.

Every redirect-matrix case records its cell of the table (CaseResult.matrix: map, program,
direction, source, target, the outcome observed and the one its rule expects, the rule's id), so
the tables come from a results document alone, like the grid. A table has a row per source kind
and a column per target kind; a cell shows the outcome observed for sockmap and for sockhash (one
symbol when they agree, both when they differ) and the worst verdict of its cases. A fail or a
crash is what a reader must see; an expected difference is the normal verdict of every outcome
other than delivered (the doc promises delivery only), so only a delivered one is marked.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache

from ..judging import support_table
from ..judging.expectations import DEFAULT_FILE
from ..judging.verdicts import Verdict, worst
from .results import BehaviourRecord, CaseResult, KernelRecord, Results

# The suite's support table: its kinds give the tables' row and column order. Results written
# with another table (or none at hand) keep the order their cases came in for kinds it lacks.
SUPPORT_TABLE = DEFAULT_FILE.parent / "redirect_support.toml"

# What a cell can show: the support table's outcomes, then the two only an observation gives
# (support_table.observed_outcome: the bytes went where no rule predicts, or the guest was lost).
OUTCOME_LABELS = {
    "delivered": "delivered",
    "refused": "refused at insert",
    "dropped": "dropped",
    "peer": "to the original peer",
    "unavailable": "unavailable",
    "elsewhere": "delivered elsewhere",
    "lost": "lost (the guest hung or crashed)",
}
SYMBOLS = {"delivered": "✓", "refused": "⊘", "dropped": "✗", "peer": "↩", "unavailable": "—",
           "elsewhere": "↗", "lost": "‼"}
NOT_OBSERVED = "not observed"  # a case that failed before observing, or was skipped
NOT_OBSERVED_SYMBOL = "·"
UNKNOWN_SYMBOL = "?"           # an outcome word this version of kconform does not know


def symbol(outcome: str | None) -> str:
    if outcome is None:
        return NOT_OBSERVED_SYMBOL
    return SYMBOLS.get(outcome, UNKNOWN_SYMBOL)


def label(outcome: str | None) -> str:
    if outcome is None:
        return NOT_OBSERVED
    return OUTCOME_LABELS.get(outcome, outcome)


@dataclass(frozen=True)
class Entry:
    """One map's part of a cell: one case."""
    map: str
    outcome: str | None          # observed; None when the case recorded no cell
    expected: str | None         # the rule's outcome
    rule: str | None
    case: CaseResult

    @property
    def judged(self) -> str:
        """'dropped (rule skb-to-tcp-only): expected difference', or 'delivered (rule
        skb-to-tcp-only expects dropped): fail' where the observation differs from the rule."""
        rule = f"rule {self.rule or '?'}"
        if self.expected != self.outcome:
            rule += f" expects {label(self.expected)}"
        return f"{label(self.outcome)} ({rule}): {self.case.verdict.label}"


@dataclass
class Cell:
    source: str
    target: str
    entries: list[Entry] = field(default_factory=list)   # in map order

    @property
    def outcomes(self) -> list[str | None]:
        """The outcomes its maps observed, each once, in map order."""
        seen: list[str | None] = []
        for entry in self.entries:
            if entry.outcome not in seen:
                seen.append(entry.outcome)
        return seen

    @property
    def agree(self) -> bool:
        return len(self.outcomes) == 1

    @property
    def outcome(self) -> str | None:
        """The one outcome of its maps, for the cell's colour; None when they differ too."""
        return self.outcomes[0] if self.agree else None

    @property
    def symbol(self) -> str:
        """'✓' when the maps agree, else each map's in map order: '✓/✗' (sockmap/sockhash)."""
        if self.agree:
            return symbol(self.outcome)
        return "/".join(symbol(entry.outcome) for entry in self.entries)

    @property
    def style(self) -> str:
        """The outcome the cell is coloured as: its maps' one known outcome, "mixed" when they
        differ, "none" when not observed (or an outcome word this version does not know)."""
        if not self.agree:
            return "mixed"
        outcome = self.outcome
        return outcome if outcome in SYMBOLS else "none"

    @property
    def outcome_names(self) -> str:
        """'dropped', or 'delivered/dropped' (sockmap/sockhash): what the cell shows, in words."""
        return "/".join(entry.outcome or "none" for entry in self.entries) if not self.agree \
            else self.outcome or "none"

    @property
    def verdict(self) -> Verdict:
        return worst(entry.case.verdict for entry in self.entries)

    @property
    def bad_cases(self) -> list[CaseResult]:
        return [entry.case for entry in self.entries if entry.case.verdict.failed_an_attempt]

    @property
    def marked(self) -> Verdict | None:
        """The verdict a reader must see: a fail, crash or flaky case (with its failed runs), or an
        expected difference where a map delivered (an older kernel's documented change, not the
        usual refusal or drop)."""
        if self.verdict.failed_an_attempt:
            return self.verdict
        if any(e.case.verdict == Verdict.EXPECTED_DIFFERENCE and e.outcome == "delivered"
               for e in self.entries):
            return Verdict.EXPECTED_DIFFERENCE
        return None

    @property
    def description(self) -> str:
        """The hover of a cell: what each map did, by which rule, its verdict, and the ids of
        its failed cases (not of every case: they tripled the page)."""
        judged = [entry.judged for entry in self.entries]
        if len(set(judged)) == 1:
            lines = [f"{self.source} → {self.target}: {judged[0]}"]
        else:
            lines = [f"{self.source} → {self.target}",
                     *(f"{entry.map}: {entry.judged}" for entry in self.entries)]
        return "\n".join(lines + [case.case for case in self.bad_cases])


@dataclass
class Table:
    """One program and direction on one kernel: a behaviour of the matrix (R7-R10)."""
    behaviour: str
    title: str
    program: str
    direction: str
    sources: list[str]
    targets: list[str]
    cells: dict[tuple[str, str], Cell]

    @property
    def name(self) -> str:
        """'R7 sk_skb ingress'."""
        return f"{self.behaviour} {self.program} {self.direction}"

    def cell(self, source: str, target: str) -> Cell | None:
        return self.cells.get((source, target))

    @property
    def maps(self) -> list[str]:
        return _ordered((e.map for c in self.cells.values() for e in c.entries),
                        support_table.MAPS)

    @property
    def bad(self) -> int:
        """How many of its cells failed or crashed."""
        return sum(1 for c in self.cells.values() if c.verdict.bad)


@dataclass
class KernelSupport:
    kernel: str
    info: KernelRecord
    tables: list[Table]

    @property
    def by_program(self) -> list[list[Table]]:
        """Its tables a program to a list (ingress and egress side by side), in table order."""
        programs: dict[str, list[Table]] = {}
        for table in self.tables:
            programs.setdefault(table.program, []).append(table)
        return list(programs.values())


@cache
def _table_kinds() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(sources, targets) in the suite's support table's order; none when the file cannot be
    read, so a results file's reports never fail for it (its kinds then keep their own order)."""
    try:
        table = support_table.load(SUPPORT_TABLE)
    except support_table.SupportTableError:
        return (), ()
    return table.sources, table.kinds


def _ordered(seen: Iterable[str], order: Iterable[str]) -> list[str]:
    """The distinct values of `seen`: those in `order` in its order, then the rest as seen."""
    values = list(dict.fromkeys(seen))
    known = [v for v in order if v in values]
    return known + [v for v in values if v not in known]


@dataclass(frozen=True)
class _Placed:
    """A case where the tables put it."""
    kernel: str
    behaviour: str
    program: str
    direction: str
    entry: Entry
    source: str
    target: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """The combination, less its map and kernel."""
        return (self.behaviour, self.program, self.direction, self.source, self.target)


def _text(cell: dict[str, object], name: str) -> str | None:
    value = cell.get(name)
    return value if isinstance(value, str) else None


def _place(case: CaseResult) -> _Placed | None:
    """Where the cell a case recorded puts it; None for a case that recorded none."""
    cell = case.matrix
    if cell is None or not case.behaviour:
        return None
    where = [_text(cell, name) for name in ("program", "direction", "map", "source", "target")]
    program, direction, map_name, source, target = (w or "" for w in where)
    if not all(where):
        return None
    entry = Entry(map_name, _text(cell, "outcome"), _text(cell, "expected"), _text(cell, "rule"),
                  case)
    return _Placed(case.kernel, case.behaviour, program, direction, entry, source, target)


def observed_cell(case: CaseResult) -> bool:
    """Whether the case recorded a cell with the outcome it observed: the combinations that
    changes() compares."""
    place = _place(case)
    return place is not None and place.entry.outcome is not None


def _placed(results: Results) -> list[_Placed]:
    """Every matrix case with its place. A case that recorded no cell (it failed or crashed
    before the judge, or was skipped) goes where its variant (MAP-SOURCE-TARGET) says, in the
    table of its behaviour's program and direction as other cases recorded them."""
    places: list[_Placed] = []
    behaviour_of: dict[str, tuple[str, str]] = {}
    unplaced: list[CaseResult] = []
    for case in results.sorted_cases():
        place = _place(case)
        if place is None:
            unplaced.append(case)
            continue
        places.append(place)
        behaviour_of.setdefault(place.behaviour, (place.program, place.direction))
    for case in unplaced:
        parts = (case.variant or "").split("-")
        if case.behaviour not in behaviour_of or len(parts) != 3:
            continue
        program, direction = behaviour_of[case.behaviour]
        places.append(_Placed(case.kernel, case.behaviour, program, direction,
                              Entry(parts[0], None, None, None, case), parts[1], parts[2]))
    return places


def build(results: Results) -> list[KernelSupport]:
    """The support tables of each kernel that ran matrix cases, oldest kernel first, tables in
    the expectations' order of their behaviours."""
    places = _placed(results)
    if not places:
        return []
    sources, targets = _table_kinds()
    source_order = _ordered((p.source for p in places), sources)
    target_order = _ordered((p.target for p in places), targets)
    map_order = _ordered((p.entry.map for p in places), support_table.MAPS)

    def behaviour_order(bid: str) -> tuple[int, str]:
        info = results.behaviours.get(bid)
        return (info.order if info else 10**6, bid)

    out = []
    for kernel in results.kernel_order():
        mine = [p for p in places if p.kernel == kernel]
        if not mine:
            continue
        tables = []
        for bid in sorted({p.behaviour for p in mine}, key=behaviour_order):
            rows = [p for p in mine if p.behaviour == bid]
            cells: dict[tuple[str, str], Cell] = {}
            for place in sorted(rows, key=lambda p: map_order.index(p.entry.map)):
                cells.setdefault((place.source, place.target),
                                 Cell(place.source, place.target)).entries.append(place.entry)
            info = results.behaviours.get(bid)
            title = (info.title if info else None) or rows[0].entry.case.title or ""
            tables.append(Table(
                bid, title, rows[0].program, rows[0].direction,
                [s for s in source_order if any(p.source == s for p in rows)],
                [t for t in target_order if any(p.target == t for p in rows)], cells))
        out.append(KernelSupport(kernel, results.kernels[kernel], tables))
    return out


def legend() -> list[tuple[str, str, str]]:
    """(outcome, symbol, label) of every symbol a table may show."""
    return [*((o, SYMBOLS[o], OUTCOME_LABELS[o]) for o in OUTCOME_LABELS),
            ("none", NOT_OBSERVED_SYMBOL, NOT_OBSERVED)]


# ---------------------------------------------------------------------- between two kernels

@dataclass(frozen=True)
class Change:
    """One combination of a table whose observation differs between two kernels, for the maps
    in `maps` (every map of it when `every_map`): its outcome went from `before` to `after`, or
    stayed and the observation under it changed (a refusal by the other socket, say)."""
    behaviour: str
    program: str
    direction: str
    source: str
    target: str
    before: str
    after: str
    maps: tuple[str, ...]
    every_map: bool


@dataclass
class Changes:
    compared: int                # combinations (each map its own) observed on both kernels
    changes: list[Change]
    sources: dict[str, list[str]]  # behaviour -> the source kinds compared, in table order
    targets: dict[str, list[str]]  # behaviour -> the target kinds compared, in table order

    @property
    def changed(self) -> int:
        return sum(len(c.maps) for c in self.changes)


def changes(pairs: Iterable[tuple[CaseResult, CaseResult]],
            behaviours: Mapping[str, BehaviourRecord]) -> Changes:
    """The matrix combinations among `pairs` (one case on a base and a new kernel each, matched
    by compare) whose observation differs; the maps of one combination that changed alike are
    one Change. A case with no outcome on either side (it failed before observing) is no
    combination: compare lists it as a case."""
    placed: dict[tuple[str, str, str, str, str], dict[str, tuple[str, str, bool]]] = {}
    for base, new in pairs:
        old_place, new_place = _place(base), _place(new)
        if old_place is None or new_place is None or old_place.entry.outcome is None \
                or new_place.entry.outcome is None or old_place.key != new_place.key:
            continue
        before, after = old_place.entry.outcome, new_place.entry.outcome
        placed.setdefault(old_place.key, {})[old_place.entry.map] = (
            before, after, before != after or base.observed != new.observed)
    sources, targets = _table_kinds()
    source_order = _ordered(sorted(k[3] for k in placed), sources)
    target_order = _ordered(sorted(k[4] for k in placed), targets)

    def order(key: tuple[str, str, str, str, str]) -> tuple[int, str, int, int]:
        info = behaviours.get(key[0])
        return (info.order if info else 10**6, key[0], source_order.index(key[3]),
                target_order.index(key[4]))

    found = []
    for key in sorted(placed, key=order):
        maps = placed[key]
        alike: dict[tuple[str, str], list[str]] = {}
        for map_name in _ordered(maps, support_table.MAPS):
            before, after, differs = maps[map_name]
            if differs:
                alike.setdefault((before, after), []).append(map_name)
        for (before, after), names in alike.items():
            found.append(Change(*key, before, after, tuple(names), len(names) == len(maps)))
    behaviour_ids = list(dict.fromkeys(k[0] for k in sorted(placed, key=order)))
    sources_of = {bid: [s for s in source_order if (bid, s) in {(k[0], k[3]) for k in placed}]
                  for bid in behaviour_ids}
    targets_of = {bid: [t for t in target_order if (bid, t) in {(k[0], k[4]) for k in placed}]
                  for bid in behaviour_ids}
    return Changes(sum(len(m) for m in placed.values()), found, sources_of, targets_of)
