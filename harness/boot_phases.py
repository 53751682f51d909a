"""Where one boot's time goes, by the guest's own clock (issue #17): the phases between the lines
the kernel, virtme-ng's initramfs and virtme-ng's init print on the console, and the agent's
start up to its hello.

The guest clock is the kernel's printk stamp ("[    2.394329] Run /init as init process"),
which starts near zero when the kernel starts: what runs before it (QEMU's start, the firmware,
the kernel's decompression) is not on it, so these phases never show it; a boot's wall time less
`to_hello` bounds it, together with the host's share.

Phases, each from one console line to the next (contiguous: they add up to `to_hello`):
  to_init     kernel start -> "Run /init as init process" (early set-up and the initcalls)
  initramfs   -> "virtme initramfs: done; switching to real root" (virtme's initramfs loading
              its modules, the root mount)
  init_setup  -> "<init>: basic initialization done" (virtme-ng's init from its exec: its
              mounts, systemd-tmpfiles)
  udev        -> "<init>: udev is done" (udevd's start, the coldplug trigger, the settle)
  to_script   -> "<init>: starting script" (what init does after udev, before our command)
  agent       -> the agent's hello (the guest command, kconform's agent: Python starting it)
<init> is virtme-ng-init (the Rust init, on the host's architecture) or virtme-init (the shell
script, for a guest of another architecture). A direct boot (machines/direct.py) has no init
set-up, udev or script phase: its initramfs ("kconform-init") runs from /init to the agent.
The end of initramfs is its "switching to real root", not init's first line: between the two,
the kernel execs init and init mounts the kernel's filesystems before it prints (2.5 s of bash
on an arm64 guest), which is init's time.

The console is the guest's to write: a line that does not parse is no time, a phase whose line is
missing or whose end comes before its start is None, never an exception.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

# A printk stamp: bounded digits, so a stamp is always a finite number ("[ 1.2.3]" is none)
_STAMP = r"\[\s*(\d{1,9}\.\d{1,9})\] "
_INIT = r"(virtme-ng-init|virtme-init|kconform-init): "
# A direct boot's initramfs (machines/initramfs.py) starts the agent itself: its last line ends
# both the initramfs and the way to the script.
_DIRECT_AGENT = r"kconform-init: starting the agent"
# The milestones, each found as its first stamped occurrence in the boot.
MILESTONES: dict[str, str] = {
    "run_init": r"Run \S+ as init process",
    "root_switched": r"(?:virtme initramfs: done; switching to real root|" + _DIRECT_AGENT + ")",
    "init_started": _INIT,  # init's first line ("Setting hostname to ...")
    "tmpfiles": _INIT + r"running systemd-tmpfiles",
    "basic_done": _INIT + r"basic initialization done",
    # virtme-init says "starting udevd"; virtme-ng-init only relays udevd's own greeting
    "udevd_started": _INIT + r"(?:starting udevd|(?:udev: )?Starting systemd-udevd)",
    "coldplug": _INIT + r"triggering udev coldplug",
    "settle": _INIT + r"waiting for udev to settle",
    "udev_done": _INIT + r"udev is done",
    "script": r"(?:(?:virtme-ng-init|virtme-init): starting script|" + _DIRECT_AGENT + ")",
}
_PATTERNS = {name: re.compile(_STAMP + pattern) for name, pattern in MILESTONES.items()}
# Where the guest command (the agent) starts, stamp in group 1: what the agent's start is timed
# from (machines/session.py), whichever way the guest booted.
SCRIPT_STARTED = _PATTERNS["script"]
# The kernel's banner, first on every boot's console: a second one is a second boot.
_BANNER = re.compile(_STAMP + r"Linux version ")

KERNEL_START = "kernel_start"  # the guest clock's zero
HELLO = "hello"                # the agent's hello, by its uptime
# (phase, its start, its end, the column heading ./kconform bench prints)
PHASES: tuple[tuple[str, str, str, str], ...] = (
    ("to_init", KERNEL_START, "run_init", "to /init"),
    ("initramfs", "run_init", "root_switched", "initramfs"),
    ("init_setup", "root_switched", "basic_done", "init set-up"),
    ("udev", "basic_done", "udev_done", "udev"),
    ("to_script", "udev_done", "script", "to script"),
    ("agent", "script", HELLO, "agent"),
)


@dataclass(frozen=True)
class Phase:
    name: str              # "udev"
    start: str             # the milestone it starts at ("basic_done")
    end: str               # and ends at ("udev_done")
    seconds: float | None  # None: a bound is missing from the console, or out of order


@dataclass(frozen=True)
class BootPhases:
    """One boot's phases by the guest clock; `to_hello` is the clock at the agent's hello."""
    init: str | None                 # "virtme-ng-init", "virtme-init", None if neither spoke
    phases: tuple[Phase, ...]
    milestones: dict[str, float]     # the milestones found, guest seconds (coldplug, settle...)
    to_hello: float | None

    def seconds(self, name: str) -> float | None:
        return next(p.seconds for p in self.phases if p.name == name)

    def as_json(self) -> dict[str, float | None]:
        """{"to_init": 2.39, ..., "agent": 3.11, "to_hello": 11.56}, to the millisecond."""
        return {p.name: _rounded(p.seconds) for p in self.phases} | {
            "to_hello": _rounded(self.to_hello)}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _one_boot(lines: Iterable[str]) -> list[str]:
    """The lines of the console's first boot: a saved console may hold a reboot after it."""
    boot: list[str] = []
    banners = 0
    for line in lines:
        if _BANNER.search(line):
            banners += 1
            if banners > 1:
                break
        boot.append(line)
    return boot


def boot_phases(lines: Iterable[str], *, hello_uptime: float | None = None,
                agent_start: float | None = None) -> BootPhases:
    """The phases of the first boot on a console. The agent's phase needs one of: the hello's
    uptime (the guest clock when the agent said hello), or agent_start, the seconds from
    "starting script" to the hello as a result records them (agent_start_seconds)."""
    if hello_uptime is not None and agent_start is not None:
        raise ValueError("give the hello's uptime or the agent's start, not both")
    found: dict[str, float] = {}
    init: str | None = None
    for line in _one_boot(lines):
        for name, pattern in _PATTERNS.items():
            if name in found:
                continue
            m = pattern.search(line)
            if m:
                found[name] = float(m.group(1))
                if name == "init_started":
                    init = m.group(2)
    milestones = dict(found)
    found[KERNEL_START] = 0.0
    if hello_uptime is not None and math.isfinite(hello_uptime) and hello_uptime >= 0:
        found[HELLO] = hello_uptime
    elif (agent_start is not None and math.isfinite(agent_start) and agent_start >= 0
          and "script" in found):
        found[HELLO] = found["script"] + agent_start
    if HELLO in found and found[HELLO] < max(milestones.values(), default=0.0):
        del found[HELLO]  # a hello before the lines that precede it: a junk uptime or stamp
    phases = []
    for name, start, end, _ in PHASES:
        seconds = found[end] - found[start] if start in found and end in found else None
        phases.append(Phase(name, start, end,
                            seconds if seconds is not None and seconds >= 0 else None))
    return BootPhases(init, tuple(phases), milestones, found.get(HELLO))
