"""A support table: what each redirect between two socket kinds does, as a few cited rules.

The redirect matrix (cases/test_redirect_matrix.py) has 576 combinations per kernel: map type x
program x direction x source kind x target kind. Writing an expected outcome for each would hide
the handful of kernel facts that decide them, so cases/redirect_support.toml states those facts
as rules over kinds, each with version bounds and the source it was read from, and the first rule
that matches a combination on a kernel gives its outcome. An outcome is one of a small vocabulary
(OUTCOMES); this module turns it into the observations a case must make, and classifies what a
case did observe in the same vocabulary for the reports.

Only `delivered` is what the doc's text promises for every kind ("Both ingress and egress
interfaces can be used for redirection"); any other outcome is an expected difference, never a
silent pass.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import KconformError
from ..versions import bound_version, dotted, in_window

# What became of the bytes of one combination.
OUTCOMES = {
    "delivered": "redirected: the target reads them (ingress) or its peer does (egress)",
    "dropped": "the verdict ran and the bytes reached nobody",
    "peer": "not redirected: the verdict never ran and the original peer got the bytes",
    "refused": "a map refused one of the sockets at insert",
    "unavailable": "the guest cannot make a socket of that kind",
}
PROGRAMS = ("sk_skb", "sk_msg")
DIRECTIONS = ("ingress", "egress")
MAPS = ("sockmap", "sockhash")
RULE_FIELDS = ("id", "outcome", "source", "reason", "program", "direction", "source_kinds",
               "target_kinds", "kinds", "since", "until", "errno")
OOB_FIELDS = ("program", "fate", "source", "since", "until")
OOB_SUFFIX = "_oob"  # a source kind that also sends one byte with MSG_OOB


class SupportTableError(KconformError, ValueError):
    """A support-table file that cannot be read, or a rule that makes no sense."""


Bounds = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Combination:
    """One cell of the matrix: from a source kind to a target kind."""
    map: str
    program: str
    direction: str
    source: str     # a kind, or a kind + "_oob" for the sender that also sends MSG_OOB
    target: str

    @property
    def variant(self) -> str:
        """Its name within its behaviour (whose program and direction are fixed)."""
        return f"{self.map}-{self.source}-{self.target}"

    @property
    def source_kind(self) -> str:
        return self.source.removesuffix(OOB_SUFFIX)

    @property
    def oob(self) -> bool:
        return self.source.endswith(OOB_SUFFIX)


@dataclass(frozen=True)
class Rule:
    id: str
    outcome: str
    source: str
    reason: str = ""
    program: str | None = None
    direction: str | None = None
    source_kinds: tuple[str, ...] = ()
    target_kinds: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()      # either end of this kind
    since: Bounds = ()
    until: Bounds = ()
    errno: str | None = None        # what `refused` or `unavailable` fails with

    def applies(self, version: tuple[int, ...]) -> bool:
        return in_window(version, self.since, self.until)

    def ends(self, combo: Combination) -> tuple[bool, bool]:
        """Whether the rule names the source end, the target end."""
        source = combo.source_kind in self.source_kinds or combo.source_kind in self.kinds
        target = combo.target in self.target_kinds or combo.target in self.kinds
        return source, target

    def covers(self, combo: Combination, version: tuple[int, ...]) -> bool:
        """The rule's program, direction and versions include the combination's (its kinds
        aside)."""
        return (not self.program or self.program == combo.program) \
            and (not self.direction or self.direction == combo.direction) \
            and self.applies(version)

    def matches(self, combo: Combination, version: tuple[int, ...]) -> bool:
        """Each list of kinds the rule gives holds: the source's, the target's, either end's."""
        if self.source_kinds and combo.source_kind not in self.source_kinds:
            return False
        if self.target_kinds and combo.target not in self.target_kinds:
            return False
        if self.kinds and combo.source_kind not in self.kinds and combo.target not in self.kinds:
            return False
        return self.covers(combo, version)


@dataclass(frozen=True)
class OobRule:
    """What becomes of the MSG_OOB byte of a source that sends one."""
    program: str
    fate: str | None                # the socket that reads it with MSG_OOB, None for nobody
    source: str
    since: Bounds = ()
    until: Bounds = ()

    def applies(self, version: tuple[int, ...]) -> bool:
        return in_window(version, self.since, self.until)


@dataclass(frozen=True)
class Expected:
    """The outcome a kernel should give one combination, and the observations that show it."""
    rule: Rule
    observations: dict[str, object]
    source: str                     # the rule's source, and the OOB rule's when it applies

    @property
    def documented(self) -> bool:
        """What the doc's text promises: delivered, on every kernel from the rule's bounds on."""
        return self.rule.outcome == "delivered" and not self.rule.until


@dataclass(frozen=True)
class SupportTable:
    path: Path
    kinds: tuple[str, ...]          # target kinds; source kinds are these plus `oob_sources`
    oob_sources: tuple[str, ...]
    rules: tuple[Rule, ...]
    oob_rules: tuple[OobRule, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return (*self.kinds, *self.oob_sources)

    def combinations(self, program: str, direction: str) -> list[Combination]:
        return [Combination(m, program, direction, s, t)
                for m in MAPS for s in self.sources for t in self.kinds]

    def combination(self, program: str, direction: str, variant: str) -> Combination:
        """The combination a variant ("sockhash-udp6-unix_dgram") names."""
        parts = variant.split("-")
        if len(parts) != 3 or parts[0] not in MAPS or parts[1] not in self.sources \
                or parts[2] not in self.kinds:
            raise SupportTableError(
                f"{self.path}: {variant!r} names no combination; a variant is "
                f"MAP-SOURCE-TARGET with MAP one of {', '.join(MAPS)}, SOURCE one of "
                f"{', '.join(self.sources)} and TARGET one of {', '.join(self.kinds)}")
        return Combination(parts[0], program, direction, parts[1], parts[2])

    def rule_for(self, combo: Combination, version: tuple[int, ...]) -> Rule:
        for rule in self.rules:
            if rule.matches(combo, version):
                return rule
        raise SupportTableError(f"{self.path}: no rule matches {combo.program} "
                                f"{combo.direction} {combo.variant} on {dotted(version)}; end "
                                "the rules with one that matches everything")

    def expected(self, combo: Combination, version: tuple[int, ...]) -> Expected:
        rule = self.rule_for(combo, version)
        observations = self._observations(rule, combo, version)
        source = rule.source
        if combo.oob and rule.outcome in ("delivered", "dropped", "peer"):
            oob = next((o for o in self.oob_rules
                        if o.program == combo.program and o.applies(version)), None)
            if oob is None:
                raise SupportTableError(f"{self.path}: no [[oob]] rule says what becomes of "
                                        f"{combo.program}'s MSG_OOB byte on {dotted(version)}")
            observations |= {"send_oob": "OK", "oob": oob.fate}
            source = f"{source}; out-of-band byte: {oob.source}"
        return Expected(rule, observations, source)

    def _observations(self, rule: Rule, combo: Combination,
                      version: tuple[int, ...]) -> dict[str, object]:
        if rule.outcome == "unavailable":
            return {"sockets": rule.errno}
        if rule.outcome == "refused":
            # A map refuses a socket for its kind, whatever the other end is, and both inserts are
            # made: each end is refused, with that rule's errno, by the first refusing rule of
            # this program, direction and kernel that names its kind there.
            inserts = {"source_insert": "OK", "target_insert": "OK"}
            for other in self.rules:
                if other.outcome == "refused" and other.covers(combo, version):
                    for end, named in zip(inserts, other.ends(combo), strict=True):
                        if named and inserts[end] == "OK":
                            inserts[end] = str(other.errno)
            return dict(inserts)
        inserted: dict[str, object] = {"source_insert": "OK", "target_insert": "OK"}
        if rule.outcome == "delivered":
            receiver = "target" if combo.direction == "ingress" else "target_peer"
            return inserted | {"send": "OK", "verdict_ran": True, "helper_returned": "SK_PASS",
                               "received_by": [receiver], "intact": True}
        if rule.outcome == "dropped":
            # an sk_msg verdict runs inside sendmsg(), which fails with EACCES on SK_DROP
            send = "EACCES" if combo.program == "sk_msg" else "OK"
            return inserted | {"send": send, "verdict_ran": True, "helper_returned": "SK_DROP",
                               "received_by": []}
        # peer: the sender's own peer reads it; sk_msg sends from the source, sk_skb to it
        receiver = "source_peer" if combo.program == "sk_msg" else "source"
        return inserted | {"send": "OK", "verdict_ran": False, "received_by": [receiver],
                           "intact": True}


def observed_outcome(observed: Mapping[str, object], program: str, direction: str) -> str:
    """The outcome an observation shows, in the vocabulary of OUTCOMES, or `elsewhere` (the bytes
    went somewhere no rule predicts) or `lost` (the guest hung or crashed)."""
    if "guest" in observed:
        return "lost"
    if "sockets" in observed:
        return "unavailable"
    if observed.get("source_insert") != "OK" or observed.get("target_insert") != "OK":
        return "refused"
    got = observed.get("received_by")
    if got == []:
        return "dropped"
    if got == ["target" if direction == "ingress" else "target_peer"]:
        return "delivered"
    if got == ["source_peer" if program == "sk_msg" else "source"]:
        return "peer"
    return "elsewhere"


def _strings(path: Path, where: str, name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SupportTableError(f"{path}: {where}: {name} = {value!r} is not a list of kinds")
    return tuple(value)


def _bounds(path: Path, where: str, name: str, value: object) -> Bounds:
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SupportTableError(f"{path}: {where}: {name} = {value!r} is not a version or a "
                                f"list of versions; write {name} = \"6.1\"")
    try:
        return tuple(bound_version(v) for v in values)
    except ValueError as exc:
        raise SupportTableError(f"{path}: {where}: {name}: {exc}") from None


def _one_of(path: Path, where: str, name: str, value: object,
            allowed: tuple[str, ...] | list[str]) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise SupportTableError(f"{path}: {where}: {name} = {value!r} is not one of "
                                f"{', '.join(allowed)}")
    return str(value)


def _text(path: Path, where: str, name: str, value: object, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise SupportTableError(f"{path}: {where}: needs {name} = \"...\"")
    return value


def _table(path: Path, where: str, data: object, kind: str,
           fields: tuple[str, ...]) -> dict[str, object]:
    """A [[rule]] or [[oob]] table with only the fields it may have."""
    if not isinstance(data, dict):
        raise SupportTableError(f"{path}: {where} is not a table; write [[{kind}]]")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SupportTableError(f"{path}: {where}: unknown field {unknown[0]!r}; a [[{kind}]] "
                                f"table has {', '.join(fields)}")
    return data


def _rule(path: Path, index: int, data: object, kinds: tuple[str, ...]) -> Rule:
    where = f"rule {index + 1}"
    data = _table(path, where, data, "rule", RULE_FIELDS)
    rule_id = _text(path, where, "id", data.get("id"))
    where = f"rule {rule_id}"
    lists = {name: _strings(path, where, name, data.get(name))
             for name in ("source_kinds", "target_kinds", "kinds")}
    for name, listed in lists.items():
        bad = [k for k in listed if k not in kinds]
        if bad:
            # an OOB source is its kind sending MSG_OOB: rules name the kind (unix_stream)
            raise SupportTableError(f"{path}: {where}: {name} names {bad[0]!r}, not one of "
                                    f"the table's kinds ({', '.join(kinds)}); a rule about an "
                                    "OOB source names its kind")
    outcome = _one_of(path, where, "outcome", data.get("outcome"), list(OUTCOMES))
    if outcome is None:
        raise SupportTableError(f"{path}: {where}: needs outcome = one of {', '.join(OUTCOMES)}")
    errno = data.get("errno")
    if (outcome in ("refused", "unavailable")) != isinstance(errno, str):
        raise SupportTableError(f"{path}: {where}: errno = \"...\" is what a refused or "
                                "unavailable outcome fails with, and only those have one")
    rule = Rule(id=rule_id, outcome=outcome, source=_text(path, where, "source",
                                                              data.get("source")),
                reason=_text(path, where, "reason", data.get("reason"), required=False),
                program=_one_of(path, where, "program", data.get("program"), PROGRAMS),
                direction=_one_of(path, where, "direction", data.get("direction"), DIRECTIONS),
                source_kinds=lists["source_kinds"], target_kinds=lists["target_kinds"],
                kinds=lists["kinds"], since=_bounds(path, where, "since", data.get("since")),
                until=_bounds(path, where, "until", data.get("until")),
                errno=errno if isinstance(errno, str) else None)
    if outcome != "delivered" and not rule.reason:
        raise SupportTableError(f"{path}: {where}: an outcome other than delivered differs "
                                "from the doc's 'Both ingress and egress interfaces can be used "
                                "for redirection'; say why in reason = \"...\"")
    return rule


def _oob_rule(path: Path, index: int, data: object, kinds: tuple[str, ...]) -> OobRule:
    where = f"oob rule {index + 1}"
    data = _table(path, where, data, "oob", OOB_FIELDS)
    program = _one_of(path, where, "program", data.get("program"), PROGRAMS)
    if program is None:
        raise SupportTableError(f"{path}: {where}: needs program = one of {', '.join(PROGRAMS)}")
    fate = data.get("fate")
    sockets = ("target", "target_peer", "source", "source_peer")
    if fate != "nobody" and fate not in sockets:
        raise SupportTableError(f"{path}: {where}: fate = {fate!r} is not \"nobody\" or one "
                                f"of {', '.join(sockets)}")
    return OobRule(program=program, fate=None if fate == "nobody" else str(fate),
                   source=_text(path, where, "source", data.get("source")),
                   since=_bounds(path, where, "since", data.get("since")),
                   until=_bounds(path, where, "until", data.get("until")))


def load(path: Path) -> SupportTable:
    """Read and check a support-table file; every problem is a SupportTableError naming it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SupportTableError(f"{path}: no such support table; name a file next to the "
                                "expectations") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SupportTableError(f"{path}: cannot read the support table ({exc})") from None
    kinds = _strings(path, "top level", "kinds", data.get("kinds"))
    oob_sources = _strings(path, "top level", "oob_sources", data.get("oob_sources"))
    if not kinds:
        raise SupportTableError(f"{path}: needs kinds = [...], the socket kinds of the matrix")
    bad = [s for s in oob_sources if not (s.endswith(OOB_SUFFIX)
                                          and s.removesuffix(OOB_SUFFIX) in kinds)]
    if bad:
        raise SupportTableError(f"{path}: oob_sources names {bad[0]!r}: write a kind of "
                                f"`kinds` followed by {OOB_SUFFIX}")
    rules = data.get("rule")
    if not isinstance(rules, list) or not rules:
        raise SupportTableError(f"{path}: holds no [[rule]] tables")
    table = SupportTable(path=path, kinds=kinds, oob_sources=oob_sources,
                         rules=tuple(_rule(path, i, r, kinds) for i, r in enumerate(rules)),
                         oob_rules=tuple(_oob_rule(path, i, r, kinds)
                                         for i, r in enumerate(data.get("oob", []))))
    last = table.rules[-1]
    if (last.program or last.direction or last.source_kinds or last.target_kinds or last.kinds
            or last.since or last.until):
        raise SupportTableError(f"{path}: the last rule ({last.id}) must match every "
                                "combination on every kernel, so none is left without an outcome")
    return table
