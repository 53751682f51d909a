"""WIP #12: the redirect support table as rules (cases/redirect_support.toml), and the class of an
observation, so a combination's expected outcome comes from a few cited rules, not 576 entries."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.judging.expectations import has_change
from harness.versions import bound_version

RULES_FILE = Path(__file__).with_name("redirect_support.toml")


@dataclass(frozen=True)
class Rule:
    id: str
    outcome: str
    source: str
    program: str | None = None
    direction: str | None = None
    source_kinds: tuple[str, ...] = ()
    target_kinds: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()      # either end of this kind
    since: tuple[tuple[int, ...], ...] = ()
    until: tuple[tuple[int, ...], ...] = ()

    def matches(self, program, direction, source, target, version) -> bool:
        if self.program and self.program != program:
            return False
        if self.direction and self.direction != direction:
            return False
        if self.source_kinds and source not in self.source_kinds:
            return False
        if self.target_kinds and target not in self.target_kinds:
            return False
        if self.kinds and source.removesuffix("_oob") not in self.kinds \
                and target not in self.kinds:
            return False
        if self.since and not has_change(version, list(self.since)):
            return False
        return not (self.until and has_change(version, list(self.until)))


def _bounds(value) -> tuple[tuple[int, ...], ...]:
    if value is None:
        return ()
    return tuple(bound_version(v) for v in ([value] if isinstance(value, str) else value))


def load_rules(path: Path = RULES_FILE) -> list[Rule]:
    data = tomllib.loads(path.read_text())
    return [Rule(id=r["id"], outcome=r["outcome"], source=r["source"],
                 program=r.get("program"), direction=r.get("direction"),
                 source_kinds=tuple(r.get("source_kinds", ())),
                 target_kinds=tuple(r.get("target_kinds", ())), kinds=tuple(r.get("kinds", ())),
                 since=_bounds(r.get("since")), until=_bounds(r.get("until")))
            for r in data["rule"]]


def expected(rules, program, direction, source, target, version) -> Rule:
    return next(r for r in rules if r.matches(program, direction, source, target, version))


def observed_class(obs: dict, direction: str) -> str:
    if "attach" in obs:
        return "attach_refused"
    if "sockets" in obs:
        return "unavailable"
    if obs.get("target_insert") != "OK" or obs.get("source_insert") != "OK":
        return "refused"
    got = obs["received_by"]
    if not got:
        return "dropped"
    if got == ["target" if direction == "ingress" else "target_peer"]:
        return "delivered"
    if got in (["source"], ["source_peer"]):
        return "peer"
    return "elsewhere:" + ",".join(got)
