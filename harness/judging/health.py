"""Kernel health per test: splats in the kernel log and new taint bits, judged from data.

The agent reports the kernel log records and /proc/sys/kernel/tainted around every call; this
module decides whether what it saw is a splat (data/splats.toml) that no unexpired allow-list entry
excuses.
"""
from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

DEFAULT_RULES = Path(__file__).parent / "data" / "splats.toml"
DEFAULT_KNOWN_CRASHES = Path(__file__).parent / "data" / "known_crashes.toml"

# /proc/sys/kernel/tainted bits (Documentation/admin-guide/tainted-kernels.rst)
TAINT_FLAGS = {0: "P proprietary module", 1: "F forced module load", 2: "S unsafe SMP",
               3: "R forced rmmod", 4: "M machine check", 5: "B bad page", 6: "U user request",
               7: "D died (oops or BUG)", 8: "A ACPI table overridden", 9: "W warning",
               10: "C staging driver", 11: "I firmware workaround", 12: "O out-of-tree module",
               13: "E unsigned module", 14: "L soft lockup", 15: "K live patched",
               16: "X auxiliary", 17: "T randstruct", 18: "N test module"}
# Loading Debian's modules unsigned into a guest taints with E; that is the setup, not the test.
IGNORED_TAINT = (1 << 13) | (1 << 12)


class CallHealth(TypedDict):
    """What the agent saw around one call (the machine side's parse_health gives every field)."""
    log_during: list[str]
    taint_before: int
    taint_after: int


@dataclass(frozen=True)
class Finding:
    kind: str
    line: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.line}"


class HealthRules:
    def __init__(self, path: Path = DEFAULT_RULES, today: datetime.date | None = None):
        data = tomllib.loads(Path(path).read_text())
        self.patterns = [(p["name"], re.compile(p["regex"])) for p in data["patterns"]]
        today = today or datetime.date.today()
        self.allow: list[tuple[re.Pattern[str], str]] = []
        self.expired: list[tuple[re.Pattern[str], str]] = []
        for entry in data.get("allow", []):
            if not entry.get("reason") or not entry.get("expires"):
                raise ValueError(f"{path}: allow entry {entry.get('regex')!r} needs a reason and "
                                 "an expiry date")
            expires = datetime.date.fromisoformat(str(entry["expires"]))
            (self.allow if expires >= today else self.expired).append(
                (re.compile(entry["regex"]), entry["reason"]))

    def check_lines(self, lines: list[str]) -> list[Finding]:
        findings = []
        for line in lines:
            for name, regex in self.patterns:
                if regex.search(line):
                    if not any(a.search(line) for a, _ in self.allow):
                        findings.append(Finding(name, line))
                    break
        return findings

    def first_splat(self, lines: list[str]) -> int | None:
        """Index of the first line that matches a splat pattern (allowed or not): evidence
        starts there."""
        for i, line in enumerate(lines):
            if any(regex.search(line) for _, regex in self.patterns):
                return i
        return None

    def check(self, health: CallHealth) -> list[Finding]:
        """health: a call's report as harness.machines.session.parse_health gives it (the
        guest's dict, its types checked where it was received; no lines and 0 taint when the
        guest sent none)."""
        findings = self.check_lines(health.get("log_during", []))
        before, after = health.get("taint_before", 0), health.get("taint_after", 0)
        new = after & ~before & ~IGNORED_TAINT if before >= 0 and after >= 0 else 0
        for bit, label in TAINT_FLAGS.items():
            if new & (1 << bit):
                findings.append(Finding("taint", f"kernel became tainted: {label} "
                                                 f"(tainted {before} -> {after})"))
        return findings


@dataclass(frozen=True)
class KnownCrash:
    fingerprint: str
    reason: str
    link: str = ""

    def __str__(self) -> str:
        return f"known crash: {self.reason}" + (f" ({self.link})" if self.link else "")


class KnownCrashes:
    """Known crashes, from a data file like data/known_crashes.toml. An entry matches a crash
    whose fingerprint starts with the entry's frames, so an entry may list fewer frames than a
    fingerprint has."""

    def __init__(self, path: Path = DEFAULT_KNOWN_CRASHES):
        self.entries: list[KnownCrash] = []
        for entry in tomllib.loads(Path(path).read_text()).get("crash", []):
            if not entry.get("fingerprint") or not entry.get("reason"):
                raise ValueError(f"{path}: crash entry {entry!r} needs a fingerprint and a reason")
            self.entries.append(KnownCrash(entry["fingerprint"], entry["reason"],
                                           entry.get("link", "")))

    def match(self, fingerprint: str | None) -> KnownCrash | None:
        frames = fingerprint.split("|") if fingerprint else []
        for known in self.entries:
            want = known.fingerprint.split("|")
            if frames[:len(want)] == want:
                return known
        return None
