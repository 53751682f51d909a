"""kconform's command-line options, declared once with their help text."""
from __future__ import annotations

import argparse
import math

import pytest

from ..machines.factory import GUEST_BOOTS


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above zero (0, negative, nan and inf are refused:
    each made every case fail as crashed, or silently meant the default)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above zero; "
                                         "give e.g. 30 or 2.5")
    return value


def rounds(text: str) -> int:
    """An argparse type: how many times --rerun-failed may run a failed case again (0: never)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rounds; give a whole "
                                         "number, e.g. 2 (0 runs no case again)")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kconform", "kconform: documented kernel behaviour on real kernels")
    group.addoption("--kernel", action="append", default=[], metavar="NAME",
                    help="kernel to run on: a name from kernels/*.toml, 'all', 'default', 'host', "
                         "or a path to a bzImage or built kernel tree. Repeatable; comma lists "
                         "allowed. Default: the set in kernels/default.txt.")
    group.addoption("--arch", default=None, metavar="ARCH[,ARCH]",
                    help="run each named kernel (and 'default', 'all', versions) once per "
                         "architecture, e.g. amd64,arm64: debian-6.12 becomes debian-6.12 and "
                         "debian-6.12-arm64. Default: kernels as named, and 'all' is every amd64 "
                         "kernel. An arm64 guest runs emulated, on an arm64 pinned root.")
    group.addoption("--build", action="store_true",
                    help="a --kernel path that is a kernel source tree is configured (virtme-ng's "
                         "minimal config, or its own .config, plus the options ./kconform config "
                         "prints) and built first; an unchanged tree is not built again")
    group.addoption("--behaviour", action="append", default=[], metavar="ID[,ID...]",
                    help="run only the cases that check these behaviours (the [ID] tables of "
                         "cases/expectations.toml, e.g. U10,E1); the others are deselected, as "
                         "-k deselects. Repeatable; comma lists allowed.")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="QEMU accelerator. auto (default) uses KVM only if a probe boot works.")
    group.addoption("--boot-timeout", type=positive_seconds, default=None, metavar="S",
                    help="seconds from starting a guest to its agent answering "
                         "(default 180 under TCG, 60 under KVM)")
    group.addoption("--case-timeout", type=positive_seconds, default=30.0, metavar="S",
                    help="seconds one guest-side call may take before the test fails (default 30)")
    group.addoption("--rerun-failed", type=rounds, default=0, metavar="N",
                    help="run each case that failed again after the rest of its kernel's cases, "
                         "on one fresh guest per round, up to N rounds: one that then passes is "
                         "reported as flaky (never as a pass), one that fails every round stays "
                         "fail with every run's evidence. A crashed case (its guest died or hung, "
                         "or the kernel reported a splat or a taint) is never run again. "
                         "Default 0: no reruns.")
    group.addoption("--refresh-kernels", action="store_true",
                    help="ask the archive for the newest package of each kernel now, instead of "
                         "trusting a resolution made in the last 12 hours")
    group.addoption("--results-dir", default="results", metavar="DIR",
                    help="where console logs and reports go (default: results/)")
    group.addoption("--expectations", default=None, metavar="FILE",
                    help="expectations file to judge with (default: cases/expectations.toml)")
    group.addoption("--known-crashes", default=None, metavar="FILE",
                    help="crash fingerprints to report as known (default: "
                         "harness/judging/data/known_crashes.toml)")
    group.addoption("--guest-memory", default="1G", help="memory per guest (default 1G)")
    group.addoption("--guest-boot", choices=GUEST_BOOTS, default="auto",
                    help="how a guest boots: 'direct' is kconform's own QEMU command line and "
                         "initramfs, straight to the agent (no udev, no virtme-ng init: about "
                         "half the boot under TCG); 'snapshot' boots directly on disk images of "
                         "what the agent runs (not the host's root), saves the booted guest once "
                         "per kernel in the cache and restores it for every later guest, after a "
                         "crash or a hang too; 'virtme-ng' is vng, as before; 'auto' (default) "
                         "boots directly where it can (a kernel of the host's architecture on the "
                         "host's root) and through virtme-ng otherwise")
    group.addoption("--rootfs", default="host", metavar="NAME",
                    help="guest root filesystem: 'host' (default: the host's own root, read-only, "
                         "as virtme-ng does) or a pinned root built from images/NAME.toml, e.g. "
                         "debian-bookworm. An arm64 kernel always runs on an arm64 build of the "
                         "recipe (of debian-bookworm for 'host').")
    group.addoption("--target", action="append", default=[], metavar="ssh://USER@HOST[:PORT]",
                    help="also run on an already-running machine over SSH; its kernel is named "
                         "by its `uname -r`. Repeatable. Without --kernel, only the targets run.")
    group.addoption("--ssh-key", default=None, metavar="FILE",
                    help="private key for --target (default: ssh-agent and ~/.ssh/id_*)")
    group.addoption("--ssh-known-hosts", default=None, metavar="FILE",
                    help="known_hosts file with the targets' host keys, besides ~/.ssh/known_hosts")
    group.addoption("--ssh-accept-any-host-key", action="store_true",
                    help="do not check --target host keys: only for throwaway VMs on a trusted "
                         "network")


